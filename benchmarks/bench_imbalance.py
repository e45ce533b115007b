"""Class imbalance: SST-2 with positive reviews cut to 10% of training, with and without --class_weights balanced.

    python benchmarks/bench_imbalance.py             # 3 seeds, 2 epochs (about 25 min on 2 CPU cores)
    python benchmarks/bench_imbalance.py --quick     # one seed, 2,000 training sentences, 1 epoch

Training keeps the first --train_rows sentences of SST-2 train with every negative and one positive in ten
(so positives are 10% of what remains, seeded); the validation split that selects the best epoch is carved
from that (seeded 10%), so it is imbalanced as a user's own data would be. Test is SST-2 validation (872
sentences, about half positive). Both systems run `recipes/finetune.py` with its defaults and the same seeds.
Writes benchmarks/results/imbalance[_quick].json and prints a markdown table.
"""

import json
import random
import tempfile
from pathlib import Path

from _common import DATA, benchmark_parser, markdown_table, mean_std, once, results_path, run_recipe, write_results

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def imbalanced_train(folder: Path, rows: int, positive_share: float, seed: int) -> tuple[str, dict]:
    source = [json.loads(line) for _, line in zip(range(rows), (DATA / "sst2" / "train.jsonl").open())]
    rng = random.Random(seed)
    negatives = [r for r in source if r["label"] == 0]
    positives = [r for r in source if r["label"] == 1]
    keep = round(len(negatives) * positive_share / (1 - positive_share))
    kept = negatives + rng.sample(positives, min(keep, len(positives)))
    rng.shuffle(kept)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return str(path), {"negative": len(negatives), "positive": min(keep, len(positives))}


def run(system: str, seed: int, options: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_imbalance_run_") as output:
        results = run_recipe("finetune.py", options, Path(output) / "run")
    return {
        "system": system,
        "seed": seed,
        "test_macro_f1": results["test_f1"],
        "test_accuracy": results["test_accuracy"],
        "eval_macro_f1": results["eval_f1"],
        "train_runtime_s": results["train_runtime"],
    }


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="one seed, 2,000 training sentences, 1 epoch",
        seeds=[42, 43, 44],
        workdir="keep each run's row here and skip the runs whose row is there (default: a temporary folder)",
    )
    parser.add_argument("--train_rows", type=int, default=20000)
    parser.add_argument("--positive_share", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=2)
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    systems = {"unweighted": [], "--class_weights balanced": ["--class_weights", "balanced"]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_imbalance_") as scratch:
        train, counts = imbalanced_train(Path(scratch), 2000 if args.quick else args.train_rows, args.positive_share, 0)
        data = ["--train_file", train, "--test_file", str(DATA / "sst2" / "validation.jsonl")]
        data += ["--validation_split_percentage", "10"]
        for seed in seeds:
            for system, options in systems.items():
                print(f"seed {seed} / {system} ...", flush=True)
                common = ["--model_name_or_path", MODEL, "--seed", str(seed)]
                common += ["--num_train_epochs", "1" if args.quick else str(args.epochs)]
                size = 2000 if args.quick else args.train_rows
                name = (
                    f"{size}rows-{args.positive_share}-{common[-1]}ep-{seed}-{'balanced' if options else 'unweighted'}"
                )
                rows.append(
                    once(Path(args.workdir or scratch) / f"{name}.json", run, system, seed, [*common, *data, *options])
                )
    summary = []
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        f1, f1_std = mean_std(r["test_macro_f1"] for r in mine)
        accuracy, _ = mean_std(r["test_accuracy"] for r in mine)
        summary.append({"system": system, "seeds": len(mine), "test_macro_f1": f1, "std": f1_std, "accuracy": accuracy})
    table = markdown_table(
        ["system", "seeds", "test macro F1", "test accuracy"],
        [
            [s["system"], s["seeds"], f"{s['test_macro_f1']:.4f} ± {s['std']:.4f}", f"{s['accuracy']:.4f}"]
            for s in summary
        ],
    )
    print(f"training: {counts}")
    print(table)
    write_results(
        results_path(args, "imbalance"), {"train_counts": counts, "summary": summary, "runs": rows, "table": table}
    )


if __name__ == "__main__":
    main()
