"""LoRA vs full fine-tuning of MiniLM on TREC-6 and CoNLL-2003, side by side in one run.

    python benchmarks/bench_lora.py --workdir benchmarks/results/lora_runs   # 3 seeds (about 3 h on 2 CPU cores)
    python benchmarks/bench_lora.py --quick    # 500 training examples, 1 epoch, 1 seed: a smoke run

Each system runs `recipes/finetune.py` in its own process (peak memory per system) with the same
seeds, batch size and epoch budget (6: LoRA's, chosen with its learning rate on CoNLL-2003 validation,
eng.testa; adapters learn slower); full fine-tuning at its own learning rate. Both keep the epoch with the
best validation score (the recipe's selection), so the longer budget cannot hurt full fine-tuning; the
recipe's default for it is 3 epochs. --workdir keeps each run's row (`<task>-<system>-<seed>.json`,
committed) and a second invocation resumes.
Writes benchmarks/results/lora[_quick].json and prints a markdown table.
"""

import tempfile
from pathlib import Path

from _common import (
    TASKS,
    benchmark_parser,
    group_rows,
    mean_std,
    once,
    paired_points,
    results_path,
    run_recipe,
    write_results,
)
from report import render_lora

FULL = "full fine-tuning"


def run_system(task: str, task_args: list[str], system: str, system_args: list[str], output_dir: Path) -> dict:
    results = run_recipe("finetune.py", [*task_args, *system_args], output_dir)
    weights = output_dir / (
        "adapter_model.safetensors" if (output_dir / "adapter_model.safetensors").exists() else "model.safetensors"
    )
    metric = TASKS[task]["metric"]
    return {
        "task": task,
        "system": system,
        "metric": metric,
        "score": results[f"test_{metric}"],
        "validation_score": results.get(f"eval_{metric}"),
        "trainable_parameters": results["trainable_parameters"],
        "total_parameters": results["total_parameters"],
        "trainable_percent": 100 * results["trainable_parameters"] / results["total_parameters"],
        "saved_weights_mib": weights.stat().st_size / 2**20,
        "train_runtime_s": results["train_runtime"],
        "peak_rss_mib": results["peak_rss_mib"],
        "args": system_args,
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Per task and system: mean and spread over seeds, and the score difference from full fine-tuning paired
    by seed."""
    summary = []
    for (task, system), runs in group_rows(rows, "task", "system").items():
        entry = {key: runs[0][key] for key in ("task", "system", "metric", "trainable_parameters", "trainable_percent")}
        entry |= {"seeds": [r["seed"] for r in runs], "saved_weights_mib": runs[0]["saved_weights_mib"]}
        for key in ("score", "validation_score", "train_runtime_s", "peak_rss_mib"):
            values = [r[key] for r in runs if r[key] is not None]
            entry[key], entry[f"{key}_std"] = mean_std(values) if values else (None, None)
        full = {r["seed"]: r["score"] for r in rows if (r["task"], r["system"]) == (task, FULL)}
        if system != FULL and (delta := paired_points(runs, full)):
            entry["delta_vs_full_points"], entry["delta_vs_full_points_std"] = delta
        summary.append(entry)
    return summary


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="500 training examples, 1 epoch, 1 seed",
        tasks=list(TASKS),
        seeds=[42, 43, 44],
        workdir="keep every run's row here; a finished run is not trained again",
    )
    parser.add_argument("--epochs", type=float, default=6, help="both systems' epoch budget (LoRA's)")
    parser.add_argument("--full_lr", type=float, default=1e-4)
    parser.add_argument("--lora_lr", type=float, default=2e-3)
    parser.add_argument("--lora_r", type=int, default=4)
    parser.add_argument("--lora_target_modules", nargs="*", default=[], help="default: per architecture")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    common = ["--num_train_epochs", "1" if args.quick else str(args.epochs)]
    if args.quick:
        common += ["--max_train_samples", "500", "--max_eval_samples", "500", "--max_test_samples", "500"]
    lora = f"LoRA r={args.lora_r}"
    systems = {
        FULL: ["--learning_rate", str(args.full_lr)],
        lora: ["--peft", "lora", "--lora_r", str(args.lora_r), "--learning_rate", str(args.lora_lr)]
        + (["--lora_target_modules", *args.lora_target_modules] if args.lora_target_modules else []),
    }
    output = results_path(args, "lora")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as scratch:
        folder = Path(args.workdir or scratch)
        for seed in seeds:  # seed by seed: a run cut short holds whole pairs
            for task in args.tasks:
                for system, system_args in systems.items():
                    print(f"{task} / {system} / seed {seed} ...", flush=True)
                    flags = [*common, "--seed", str(seed), *system_args]
                    name = f"{task}-{system.replace(' ', '_').replace('=', '')}-{seed}"
                    path, out = folder / f"{name}.json", folder / name
                    row = once(path, run_system, task, TASKS[task]["args"], system, flags, out, flags=flags)
                    rows.append({**row, "seed": seed})
                    write_results(output, {"quick": args.quick, "partial": True, "rows": rows})
    payload = {"quick": args.quick, "epochs": float(common[1]), "summary": summarise(rows), "rows": rows}
    write_results(output, payload)
    print("\n" + render_lora(output.name, payload))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
