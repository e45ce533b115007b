"""Which multi-label threshold rule generalises: per-label vs one global threshold, judged on validation alone.

    python benchmarks/threshold_choice.py RUN [--data ../shared/data/goemotions/validation.jsonl]

RUN is a trained multi-label run folder. Its validation predictions are split in two halves (seeded, many
times); thresholds are tuned on one half by each rule and scored (macro F1) on the other. Test labels take no
part, so the rule this picks can be the recipe's default (`--threshold_tuning`). Writes
benchmarks/results/threshold_choice.json and prints a table.
"""

import json
from pathlib import Path

import numpy as np

from nlptransfer.inference import load_predictor
from nlptransfer.metrics import multilabel_metrics
from nlptransfer.tasks import tune_thresholds

from _common import DATA, benchmark_parser, markdown_table, mean_std, results_path, write_results


def main() -> None:
    parser = benchmark_parser(__doc__, seed=0)
    parser.add_argument("run")
    parser.add_argument("--data", default=str(DATA / "goemotions" / "validation.jsonl"))
    parser.add_argument("--splits", type=int, default=20)
    args = parser.parse_args()
    predictor = load_predictor(args.run)
    spec = next(iter(predictor.specs.values()))
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    index = {label: i for i, label in enumerate(spec.labels)}
    y_true = np.zeros((len(rows), len(spec.labels)), dtype=bool)
    for i, row in enumerate(rows):
        y_true[i, [index[label] for label in row["labels"]]] = True
    probs = []
    for start in range(0, len(rows), 64):
        _, _, logits = predictor.logits([row["text"] for row in rows[start : start + 64]])
        probs.append(1 / (1 + np.exp(-logits[spec.name].astype(np.float64))))
    probs = np.concatenate(probs)
    rng = np.random.default_rng(args.seed)
    scores = {"per_label": [], "global": [], "fixed 0.5": []}
    for _ in range(args.splits):
        order = rng.permutation(len(rows))
        for tune, held in ((order[::2], order[1::2]), (order[1::2], order[::2])):
            for rule in ("per_label", "global"):
                thresholds = tune_thresholds(y_true[tune], probs[tune], per_label=rule == "per_label")
                scores[rule].append(multilabel_metrics(y_true[held], probs[held] >= thresholds, spec.labels)["f1"])
            scores["fixed 0.5"].append(multilabel_metrics(y_true[held], probs[held] >= 0.5, spec.labels)["f1"])
    summary = {rule: mean_std(values) for rule, values in scores.items()}
    table = markdown_table(
        ["rule", "held-out half macro F1 (mean ± std)"],
        [[rule, f"{mean:.4f} ± {std:.4f}"] for rule, (mean, std) in summary.items()],
    )
    print(table)
    write_results(
        results_path(args, "threshold_choice"),
        {"run": args.run, "halves": 2 * args.splits, "summary": summary, "table": table},
    )


if __name__ == "__main__":
    main()
