"""Multi-label classification on GoEmotions (28 labels): nlptransfer's defaults against a plain Trainer, one run.

    python benchmarks/bench_multilabel.py                 # 3 seeds each, 5 epochs (2.5-6 h on 2 CPU cores)
    python benchmarks/bench_multilabel.py --seeds 42      # one seed each
    python benchmarks/bench_multilabel.py --quick         # 2,000 training texts, 1 epoch: a smoke run
    python benchmarks/bench_multilabel.py --workdir benchmarks/results/multilabel_runs   # resumable, run by run

nlptransfer runs `recipes/finetune.py --task_type multilabel` with its defaults and `--num_train_epochs 5`.
The Trainer (`benchmarks/trainer_multilabel.py`) gets the same budget: the same learning rate, warm-up,
epochs, batch size, bf16 where this CPU has fast bf16, the best epoch on validation, and the same threshold
choice on validation (the same function). Test labels choose nothing. Published BERT-base figures (110M
parameters) are listed for reference with their sources. Writes benchmarks/results/multilabel[_quick].json.
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
    benchmark_parser,
    markdown_table,
    mean_std,
    once,
    results_path,
    run_recipe,
    write_results,
)

PUBLISHED = [  # (system, parameters, test macro F1, source)
    ("BERT-base, GoEmotions paper", 110_000_000, 0.46, "Demszky et al. 2020, Table 4"),
    ("BERT-base, GoEmotions-pytorch", 110_000_000, 0.503, "github.com/monologg/GoEmotions-pytorch README"),
]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def data_args() -> list[str]:
    folder = DATA / "goemotions"
    return [
        "--task_type",
        "multilabel",
        "--label_column_name",
        "labels",
        *(
            arg
            for split in ("train", "validation", "test")
            for arg in (f"--{split}_file", str(folder / f"{split}.jsonl"))
        ),
    ]


def run_trainer(options: list[str], output: Path) -> dict:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "trainer_multilabel.py"),
        *options,
        "--output_json",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(output.read_text())


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="2,000 training texts, 1 epoch",
        seeds=[42, 43, 44],
        workdir="keep each run's result here and skip the runs already there, so a long run can resume "
        "(default: a temporary folder)",
    )
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument(
        "--first_setup", action="store_true", help="also the Trainer as first set up: lr 5e-5, 3 epochs, 0.5"
    )
    args = parser.parse_args()
    from nlptransfer.config import TrainArguments
    from nlptransfer.training import fast_bf16

    defaults = TrainArguments(output_dir="unused")
    epochs = 1 if args.quick else args.epochs
    limit = ["--max_train_samples", "2000"] if args.quick else []
    bf16 = fast_bf16()
    trainer_budget = [
        "--learning_rate",
        str(defaults.learning_rate),
        "--warmup_steps_ratio",
        str(defaults.warmup_ratio),
        "--batch_size",
        str(defaults.per_device_train_batch_size),
        "--epochs",
        str(epochs),
        *(["--bf16"] if bf16 else []),
        *limit,
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_multilabel_") as scratch:
        done = Path(args.workdir or scratch) / ("quick" if args.quick else "")
        done.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            print(f"seed {seed}: nlptransfer ...", flush=True)
            rows.append(once(done / f"ours-{seed}.json", ours_row, seed, epochs, limit, done))
            print(f"seed {seed}: Trainer, same budget ...", flush=True)
            rows.append(once(done / f"trainer-{seed}.json", budget_row, seed, trainer_budget, Path(scratch)))
        if args.first_setup:
            first = [
                "--learning_rate",
                "5e-5",
                "--epochs",
                "1" if args.quick else "3",
                "--threshold_tuning",
                "fixed",
                *limit,
            ]
            base = run_trainer([*first, "--seed", str(args.seeds[0])], Path(scratch) / "trainer-first.json")
            rows.append(trainer_row("Trainer as first set up (lr 5e-5, 3 epochs, threshold 0.5)", args.seeds[0], base))

    summary = []
    for system in dict.fromkeys(row["system"] for row in rows):
        mine = [row for row in rows if row["system"] == system]
        f1, f1_std = mean_std(row["test_macro_f1"] for row in mine)
        micro, _ = mean_std(row["test_micro_f1"] for row in mine)
        time_s, _ = mean_std(row["train_runtime_s"] for row in mine)
        summary.append(
            {
                "system": system,
                "seeds": len(mine),
                "parameters": mine[0]["parameters"],
                "test_macro_f1": f1,
                "test_macro_f1_std": f1_std,
                "test_micro_f1": micro,
                "train_runtime_s": time_s,
                "peak_rss_mib": max(row["peak_rss_mib"] for row in mine),
            }
        )
    table = markdown_table(
        ["system", "params", "seeds", "test macro F1", "test micro F1", "train s", "peak RSS MiB"],
        [
            [
                s["system"],
                f"{s['parameters'] / 1e6:.1f}M",
                s["seeds"],
                f"{s['test_macro_f1']:.4f} ± {s['test_macro_f1_std']:.4f}",
                f"{s['test_micro_f1']:.4f}",
                f"{s['train_runtime_s']:.0f}",
                f"{s['peak_rss_mib']:.0f}",
            ]
            for s in summary
        ]
        + [
            [name, f"{params / 1e6:.0f}M", "", f"{f1:.3f} (published)", "", "", ""] for name, params, f1, _ in PUBLISHED
        ],
    )
    print(table)
    write_results(
        results_path(args, "multilabel"),
        {"epochs": epochs, "bf16": bf16, "summary": summary, "runs": rows, "published": PUBLISHED, "table": table},
    )


def ours_row(seed: int, epochs: float, limit: list[str], folder: Path) -> dict:
    """nlptransfer with its defaults and `epochs`, one seed, trained into `folder`/ours-<seed> (the run folder
    `threshold_choice.py` reads): the row of the table."""
    output = folder / f"ours-{seed}"
    ours = run_recipe(
        "finetune.py",
        [
            "--model_name_or_path",
            MODEL,
            *data_args(),
            "--num_train_epochs",
            str(epochs),
            "--seed",
            str(seed),
            *limit,
        ],
        output,
    )
    return {
        "system": "nlptransfer (defaults)",
        "seed": seed,
        "test_macro_f1": ours["test_f1"],
        "test_micro_f1": ours["test_micro_f1"],
        "test_subset_accuracy": ours["test_subset_accuracy"],
        "eval_macro_f1": ours["eval_f1"],
        "train_runtime_s": ours["train_runtime"],
        "peak_rss_mib": ours["peak_rss_mib"],
        "parameters": ours["total_parameters"],
        "thresholds": json.loads((output / "nlptransfer_task.json").read_text())["thresholds"],
        "per_label_test_f1": {
            k[5:-3]: v
            for k, v in ours.items()
            if k.startswith("test_") and k.endswith("_f1") and k not in ("test_f1", "test_micro_f1")
        },
    }


def budget_row(seed: int, budget: list[str], scratch: Path) -> dict:
    """The Trainer given nlptransfer's budget, one seed: the row of the table."""
    base = run_trainer([*budget, "--seed", str(seed)], scratch / f"trainer-{seed}.json")
    return trainer_row("Trainer (same lr, epochs, warm-up, thresholds)", seed, base)


def trainer_row(system: str, seed: int, base: dict) -> dict:
    metrics = base["test_metrics"]
    return {
        "system": system,
        "seed": seed,
        "test_macro_f1": metrics["f1"],
        "test_micro_f1": metrics["micro_f1"],
        "test_subset_accuracy": metrics["subset_accuracy"],
        "test_macro_f1_at_0.5": base["test_f1_at_0.5"],
        "eval_macro_f1": max((log["eval_f1"] for log in base["validation_history"]), default=None),
        "train_runtime_s": base["train_runtime"],
        "peak_rss_mib": base["peak_rss_mib"],
        "parameters": base["parameters"],
        "thresholds": base["thresholds"],
    }


if __name__ == "__main__":
    main()
