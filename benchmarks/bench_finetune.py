"""Fine-tuning speed and quality: nlptransfer vs the plain transformers Trainer, side by side in one run.

    python benchmarks/bench_finetune.py --workdir runs/bench_finetune      # TREC-6 + CoNLL-2003, 3 seeds
    python benchmarks/bench_finetune.py --quick                            # 32 examples, 1 epoch: a smoke run

Systems (same data, model, seed, epochs, batch size and learning rate; each in its own process):
- `nlptransfer`: `recipes/finetune.py` with its defaults;
- `Trainer (examples)`: `trainer_baseline.py` as run_glue.py / run_ner.py set it up, padding every row
  to max_seq_length=128;
- `Trainer (tuned)` / `Trainer (tuned, bf16)`: the same with dynamic padding, length-grouped sampling, fused
  AdamW and nlptransfer's schedule (linear, 10% warm-up), in fp32 / with `bf16=True`. The faster of the two on the
  machine at hand is the **best-tuned Trainer**, the anchor of the time ratios (bf16 is the faster only where the
  CPU has AMX or AVX512-BF16).
`--systems` adds ablations of nlptransfer (`nlptransfer fp32`: bf16 autocast off; `nlptransfer system allocator`:
--cpu_allocator system; `nlptransfer frozen word emb. + eager`: --freeze word_embeddings --attn_implementation
eager; `nlptransfer freeze_layers K`: the embeddings and the bottom K of 6 layers frozen, so their backward pass is
skipped).

Per run: test score, training wall time (`train_runtime`: the training loop, evaluations on the
validation set included), train samples/s and real (non-padding) tokens/s, peak RSS of the process,
and model FLOP utilisation (MFU): the model FLOPs of the real tokens (6 x matmul parameters per token
plus attention) divided by the time of the training steps (train_runtime minus in-loop evaluations)
and by this machine's peak, measured here by timing large matmuls in fp32 and bf16 (the FLOPs of training every
layer, for the freeze_layers rows too: their MFU is an effective one).
With `--workdir`, runs already done (`<task>/<system>/seed_<n>/bench_row.json`) are reused.
Writes benchmarks/results/finetune[_quick].json after every run, prints a markdown table and draws
benchmarks/results/finetune[_quick].png (test score vs training time, one point per system and task).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import (
    DATA,
    ROOT,
    TASKS,
    benchmark_parser,
    group_rows,
    mean_std,
    results_path,
    run_recipe,
    write_results,
)
from report import render_finetune

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUICK = "32"  # examples per split in a --quick (smoke) run
MAX_SEQ_LENGTH = 128


def token_lengths(task: str, limit: int | None) -> list[int]:
    """Real tokens per training example, as MiniLM's tokenizer gives them (truncated like every system)."""
    from transformers import AutoTokenizer

    from nlptransfer import read_file, resolve_model

    path = TASKS[task]["args"][TASKS[task]["args"].index("--train_file") + 1]
    rows = read_file(path).rows[:limit]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    words = task == "conll2003"
    inputs = [row["tokens"] for row in rows] if words else [row["text"] for row in rows]
    encoded = tokenizer(inputs, is_split_into_words=words, truncation=True, max_length=MAX_SEQ_LENGTH)
    return [len(ids) for ids in encoded["input_ids"]]


def train_flops_per_epoch(lengths: list[int]) -> float:
    """MiniLM's model FLOPs of one training epoch over examples of `lengths` real tokens
    (`nlptransfer.profiling.train_flops`)."""
    from transformers import AutoConfig

    from nlptransfer import resolve_model
    from nlptransfer.profiling import train_flops

    return train_flops(lengths, AutoConfig.from_pretrained(resolve_model(MODEL)))


def nlptransfer_run(extra: list[str]):
    def run(task: str, common: list[str], folder: Path) -> dict:
        results = run_recipe("finetune.py", [*TASKS[task]["args"], *common, *extra], folder)
        metric = TASKS[task]["metric"]
        evaluations = results["train_runtime"] - results["train_step_runtime"]
        return {
            "score": results[f"test_{metric}"],
            "train_runtime_s": results["train_runtime"],
            "train_step_runtime_s": results["train_runtime"] - evaluations,
            "train_samples": results["train_samples_per_second"] * results["train_runtime"],
            "peak_rss_mib": results["peak_rss_mib"],
            "precision": {"no": "fp32"}.get(results["train_mixed_precision"], results["train_mixed_precision"]),
        }

    return run


def trainer_run(extra: list[str]):
    def run(task: str, common: list[str], folder: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / "trainer_result.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "trainer_baseline.py")]
        command += ["--task", "trec" if task == "trec" else "conll", "--output_json", str(output), *common, *extra]
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        result = json.loads(output.read_text())
        evaluations = sum(entry.get("eval_runtime", 0.0) for entry in result["validation_history"])
        return {
            "score": result["test_metrics"][TASKS[task]["metric"]],
            "train_runtime_s": result["train_runtime"],
            "train_step_runtime_s": result["train_runtime"] - evaluations,
            "train_samples": result["train_samples_per_second"] * result["train_runtime"],
            "peak_rss_mib": result["peak_rss_mib"],
            "precision": "bf16" if result["config"]["bf16"] else "fp32",
            "fed_tokens_per_epoch": result["fed_train_tokens_per_epoch"],
        }

    return run


# what a careful user sets on the Trainer: dynamic padding, length grouping, fused AdamW (the Trainer's default
# optimizer with torch >= 2.8, named here so the row says it), and nlptransfer's schedule
BF16_TRAINER = "Trainer (tuned, bf16)"
TUNED = ["--padding", "dynamic", "--group_by_length", "--optim", "adamw_torch_fused", "--warmup_ratio", "0.1"]

# name -> how to run it; the flags each system gets on top of the shared ones
SYSTEMS = {
    "nlptransfer": nlptransfer_run([]),
    "nlptransfer fp32": nlptransfer_run(["--mixed_precision", "no"]),
    # the C allocator's defaults: every large buffer mapped and page-faulted afresh at each step
    "nlptransfer system allocator": nlptransfer_run(["--cpu_allocator", "system"]),
    # what bench_step.py measured as the next levers: the same math (eager attention) and one change to
    # what is trained (the token embedding matrix stays as pretrained)
    "nlptransfer frozen word emb. + eager": nlptransfer_run(
        ["--freeze", "word_embeddings", "--attn_implementation", "eager"]
    ),
    # fewer FLOPs: the embeddings and the bottom k layers frozen need no backward pass at all
    "nlptransfer freeze_layers 2": nlptransfer_run(["--freeze_layers", "2"]),
    "nlptransfer freeze_layers 3": nlptransfer_run(["--freeze_layers", "3"]),
    "Trainer (examples)": trainer_run(["--padding", "max_length"]),
    "Trainer (tuned)": trainer_run(TUNED),
    BF16_TRAINER: trainer_run([*TUNED, "--bf16"]),
}
DEFAULT_SYSTEMS = ["nlptransfer", "Trainer (tuned)", BF16_TRAINER, "Trainer (examples)"]
TUNED_TRAINERS = ("Trainer (tuned)", BF16_TRAINER)
ANCHOR = "best-tuned Trainer"  # per task, the faster of TUNED_TRAINERS


def common_flags(system: str, args, seed: int) -> list[str]:
    """The settings every system shares, in each one's own flag names."""
    if system.startswith("nlptransfer"):
        flags = ["--seed", str(seed), "--num_train_epochs", str(args.epochs), "--learning_rate", str(args.lr)]
        flags += ["--per_device_train_batch_size", str(args.batch_size), "--max_seq_length", str(MAX_SEQ_LENGTH)]
        if args.quick:
            flags += ["--max_train_samples", QUICK, "--max_eval_samples", QUICK, "--max_test_samples", QUICK]
        return flags
    flags = ["--seed", str(seed), "--epochs", str(args.epochs), "--learning_rate", str(args.lr)]
    flags += ["--batch_size", str(args.batch_size), "--max_seq_length", str(MAX_SEQ_LENGTH)]
    flags += ["--data_dir", str(DATA)]
    if args.quick:
        flags += ["--max_train_samples", QUICK, "--max_eval_samples", QUICK]
    return flags


def summarise(rows: list[dict]) -> list[dict]:
    """Mean (and spread over seeds) per task and system, with time, score and memory ratios against each Trainer
    and against the best-tuned one (`ANCHOR`: per task, the faster of `TUNED_TRAINERS` that ran)."""
    summary = []
    for (task, system), runs in group_rows(rows, "task", "system").items():
        entry = {"task": task, "system": system, "seeds": [r["seed"] for r in runs], "precision": runs[0]["precision"]}
        for key in ("score", "train_runtime_s", "samples_per_second", "real_tokens_per_second", "peak_rss_mib", "mfu"):
            entry[key], entry[f"{key}_std"] = mean_std(r[key] for r in runs)
        summary.append(entry)
    for entry in summary:
        tuned = [s for s in summary if s["task"] == entry["task"] and s["system"] in TUNED_TRAINERS]
        best = min(tuned, key=lambda s: s["train_runtime_s"], default=None)
        entry["anchor"] = best and best["system"]
        for baseline in (*TUNED_TRAINERS, "Trainer (examples)", ANCHOR):
            name = entry["anchor"] if baseline == ANCHOR else baseline
            other = next((s for s in summary if s["task"] == entry["task"] and s["system"] == name), None)
            if other:
                entry[f"time_vs {baseline}"] = entry["train_runtime_s"] / other["train_runtime_s"]
                entry[f"score_delta_points_vs {baseline}"] = 100 * (entry["score"] - other["score"])
                entry[f"memory_vs {baseline}"] = entry["peak_rss_mib"] / other["peak_rss_mib"]
    return summary


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({s["task"] for s in summary}, key=list(TASKS).index)
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for entry in (s for s in summary if s["task"] == task):
            axis.errorbar(
                entry["train_runtime_s"],
                entry["score"],
                xerr=entry["train_runtime_s_std"],
                yerr=entry["score_std"],
                fmt="o",
                capsize=3,
                color=f"C{list(SYSTEMS).index(entry['system'])}",  # one colour per system in every panel
                label=f"{entry['system']} ({len(entry['seeds'])} seed{'s' if len(entry['seeds']) > 1 else ''})",
            )
        axis.set_xlabel("training time (s), lower is better")
        axis.set_ylabel(f"test {TASKS[task]['metric']}")
        axis.set_title(f"{task}: MiniLM, mean ± std over seeds")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick=f"{QUICK} training examples (and test examples), 1 epoch, 1 seed",
        tasks=list(TASKS),
        seeds=[42, 43, 44],
        workdir="keep every run here and reuse finished ones",
        output="JSON path (the PNG goes beside it)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        default=None,
        choices=list(SYSTEMS),
        help=f"default: {', '.join(DEFAULT_SYSTEMS)} (the bf16 Trainer only where the CPU has fast bf16)",
    )
    parser.add_argument(
        "--examples_seeds", nargs="+", type=int, default=None, help="seeds of Trainer (examples) (default: --seeds)"
    )
    parser.add_argument(
        "--report_only", action="store_true", help="only tabulate the runs already in --workdir (start none)"
    )
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4, help="nlptransfer's default, chosen on TREC validation")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds = 1, args.seeds[:1]
    from nlptransfer.profiling import peak_flops
    from nlptransfer.training import cpu_cores, fast_bf16

    threads = cpu_cores()
    output = results_path(args, "finetune")

    if args.report_only and output.exists():  # each row's MFU already uses the peak measured with it
        peak = json.loads(output.read_text())["peak_flops"]
    else:
        print(f"measuring peak matmul FLOP/s on {threads} threads ...", flush=True)
        smoke = dict(budget_s=0.5, rounds=1) if args.quick else {}  # a smoke run's MFU needs no precise peak
        peak = {name: peak_flops(name, threads, **smoke) for name in ("fp32", "bf16")}
    print(", ".join(f"{name} {value / 1e9:.0f} GFLOP/s" for name, value in peak.items()), flush=True)
    skipped, bf16_is_fast = {}, fast_bf16()
    if args.systems is None:
        args.systems = [s for s in DEFAULT_SYSTEMS if bf16_is_fast or s != BF16_TRAINER]
    if not bf16_is_fast and BF16_TRAINER not in args.systems:  # the slower by far: it is not the anchor
        skipped[BF16_TRAINER] = (
            f"this CPU has no AMX or AVX512-BF16: bf16 matmuls ran at {peak['bf16'] / 1e9:.1f} GFLOP/s against "
            f"{peak['fp32'] / 1e9:.0f} in fp32 (--systems runs it anyway)"
        )
        print(f"not run: {BF16_TRAINER}: {skipped[BF16_TRAINER]}", flush=True)

    rows = []

    def save() -> list[dict]:
        summary = summarise(rows)
        write_results(
            output, {"quick": args.quick, "peak_flops": peak, "skipped": skipped, "summary": summary, "rows": rows}
        )
        return summary

    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as scratch:
        for task in args.tasks:
            lengths = token_lengths(task, int(QUICK) if args.quick else None)
            real_tokens, flops = sum(lengths), train_flops_per_epoch(lengths)
            for seed in args.seeds:
                for system in args.systems:
                    if system == "Trainer (examples)" and seed not in (args.examples_seeds or args.seeds):
                        continue  # the slowest system: often run with fewer seeds
                    folder = Path(args.workdir or scratch) / task / system.replace(" ", "_") / f"seed_{seed}"
                    done = folder / "bench_row.json"
                    if done.exists():
                        print(f"{task} / {system} / seed {seed}: reused from {folder}", flush=True)
                        rows.append(json.loads(done.read_text()))
                        continue
                    if args.report_only:
                        print(f"{task} / {system} / seed {seed}: not run (--report_only)", flush=True)
                        continue
                    print(f"running {task} / {system} / seed {seed} ...", flush=True)
                    result = SYSTEMS[system](task, common_flags(system, args, seed), folder)
                    step_time = result["train_step_runtime_s"]
                    row = {
                        "task": task,
                        "system": system,
                        "seed": seed,
                        "metric": TASKS[task]["metric"],
                        **result,
                        "samples_per_second": result["train_samples"] / result["train_runtime_s"],
                        "real_tokens_per_second": real_tokens * args.epochs / result["train_runtime_s"],
                        "model_flops": flops * args.epochs,
                        "achieved_flops_per_second": flops * args.epochs / step_time,
                        "mfu": flops * args.epochs / step_time / peak[result["precision"]],
                        "peak_flops": peak[result["precision"]],  # measured at the start of this invocation
                        "real_tokens_per_epoch": real_tokens,
                    }
                    rows.append(row)
                    done.write_text(json.dumps(row, indent=2) + "\n")
                    print(
                        f"  {TASKS[task]['metric']} {row['score']:.4f}, train {row['train_runtime_s']:.0f} s, "
                        f"MFU {100 * row['mfu']:.1f}% ({row['precision']})",
                        flush=True,
                    )
                    save()  # after every run: a stopped benchmark keeps what finished

    summary = save()
    plot(summary, output.with_suffix(".png"))
    print(f"\npeak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s ({threads} threads)")
    print("\n" + render_finetune(output.name, json.loads(output.read_text())))
    print(f"\nwritten to {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
