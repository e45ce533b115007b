"""LoRA vs full fine-tuning of MiniLM on TREC-6 and CoNLL-2003, side by side in one run.

    python benchmarks/bench_lora.py            # full data: full FT 3 epochs, LoRA 6 (about 45 min on 2 CPU cores)
    python benchmarks/bench_lora.py --quick    # 500 training examples, 1 epoch: a smoke run

Each system runs `recipes/finetune.py` in its own process (peak memory per system) with the same
seed and batch size; LoRA (r=4 on every linear layer, the default) gets its own learning rate and
epochs (adapters want more of both), chosen on CoNLL-2003 validation (eng.testa).
Writes benchmarks/results/lora[_quick].json and prints a markdown table.
"""

import tempfile
from pathlib import Path

from _common import TASKS, benchmark_parser, markdown_table, results_path, run_recipe, write_results


def run_system(task_args: list[str], system_args: list[str], output_dir: Path) -> dict:
    results = run_recipe("finetune.py", [*task_args, *system_args], output_dir)
    weights = output_dir / (
        "adapter_model.safetensors" if (output_dir / "adapter_model.safetensors").exists() else "model.safetensors"
    )
    results["saved_weights_bytes"] = weights.stat().st_size
    return results


def main() -> None:
    parser = benchmark_parser(__doc__, quick="500 training examples, 1 epoch", tasks=list(TASKS), seed=42)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--full_lr", type=float, default=1e-4)
    parser.add_argument("--lora_lr", type=float, default=2e-3)
    parser.add_argument("--lora_r", type=int, default=4)
    parser.add_argument("--lora_target_modules", nargs="*", default=[], help="default: per architecture")
    parser.add_argument("--lora_epochs", type=float, default=6, help="LoRA epochs (adapters learn slower)")
    args = parser.parse_args()
    common = ["--seed", str(args.seed), "--num_train_epochs", "1" if args.quick else str(args.epochs)]
    if args.quick:
        common += ["--max_train_samples", "500", "--max_eval_samples", "500", "--max_test_samples", "500"]
    systems = {
        "full fine-tuning": ["--learning_rate", str(args.full_lr)],
        f"LoRA r={args.lora_r}": ["--peft", "lora", "--lora_r", str(args.lora_r), "--learning_rate", str(args.lora_lr)]
        + (["--lora_target_modules", *args.lora_target_modules] if args.lora_target_modules else [])
        + (["--num_train_epochs", str(args.lora_epochs)] if args.lora_epochs and not args.quick else []),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as scratch:
        for task, spec in ((t, TASKS[t]) for t in args.tasks):
            for system, system_args in systems.items():
                print(f"running {task} / {system} ...", flush=True)
                results = run_system(spec["args"], common + system_args, Path(scratch) / f"{task}-{len(rows)}")
                rows.append(
                    {
                        "task": task,
                        "system": system,
                        "metric": spec["metric"],
                        "score": results[f"test_{spec['metric']}"],
                        "validation_score": results.get(f"eval_{spec['metric']}"),
                        "trainable_parameters": results["trainable_parameters"],
                        "total_parameters": results["total_parameters"],
                        "trainable_percent": 100 * results["trainable_parameters"] / results["total_parameters"],
                        "saved_weights_mib": results["saved_weights_bytes"] / 2**20,
                        "train_runtime_s": results["train_runtime"],
                        "peak_rss_mib": results["peak_rss_mib"],
                        "args": common + system_args,
                    }
                )
    for task in args.tasks:
        full, lora = (r for r in rows if r["task"] == task)
        lora["delta_vs_full_points"] = 100 * (lora["score"] - full["score"])
    output = results_path(args, "lora")
    write_results(output, {"quick": args.quick, "rows": rows})
    header = ["task", "system", "test score", "Δ vs full (points)", "trainable", "saved weights", "train time"]
    table = [
        [
            r["task"],
            r["system"],
            f"{r['metric']} {r['score']:.4f}",
            f"{r['delta_vs_full_points']:+.2f}" if "delta_vs_full_points" in r else "-",
            f"{r['trainable_parameters']:,} ({r['trainable_percent']:.2f}%)",
            f"{r['saved_weights_mib']:.1f} MiB",
            f"{r['train_runtime_s']:.0f} s",
            f"{r['peak_rss_mib']:.0f} MiB",
        ]
        for r in rows
    ]
    print("\n" + markdown_table([*header, "peak RSS"], table))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
