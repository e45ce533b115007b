"""Transferability estimation vs fine-tuning: do LogME and H-score rank encoders as fine-tuning does?

    python benchmarks/bench_transferability.py            # scores on 2,000 examples, fine-tune on them, 2 epochs
    python benchmarks/bench_transferability.py --quick    # 300 examples, 1 epoch, 300 test: a smoke run

Candidates: all-MiniLM-L6-v2 cut to its bottom 2 and 4 layers and whole (6), all-mpnet-base-v2 (skipped
with a note when it cannot be loaded offline), and a randomly initialised MiniLM-shaped encoder.
For each task (TREC-6, CoNLL-2003), in this process: LogME and H-score of each candidate's frozen
features on the first N training examples (`nlptransfer.transferability`). Then each candidate is
saved to a temporary folder (cut or random, `save_pretrained`) and fine-tuned from it by
`recipes/finetune.py` in its own process, all with the same budget (seed, epochs, learning rate,
batch size, examples; no validation split, the final model is tested). Kendall's tau-b between each
score and the fine-tuned test score says how well the score ranks the candidates.
Writes benchmarks/results/transferability[_quick].json and prints markdown tables.
"""

import tempfile
import time
from pathlib import Path

import torch

from nlptransfer.config import DataArguments
from nlptransfer.transferability import Candidate, kendall_tau_b, score_candidates

from _common import DATA, benchmark_parser, markdown_table, results_path, run_recipe, write_results

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CANDIDATES = [
    f"{MINILM}:layers=2",
    f"{MINILM}:layers=4",
    MINILM,  # all 6 layers
    "sentence-transformers/all-mpnet-base-v2",
    f"{MINILM}:random",
]
TASKS = {
    "trec": {
        "metric": "accuracy",
        "task_type": "classification",
        "train": DATA / "trec/train.jsonl",
        "test": DATA / "trec/test.jsonl",
    },
    "conll2003": {
        "metric": "f1",
        "task_type": "ner",
        "train": DATA / "conll2003/eng.train",
        "test": DATA / "conll2003/eng.testb",
    },
}
SCORES = {"logme": "LogME", "hscore": "H-score"}


def available(candidates: list[str]) -> tuple[list[str], list[dict]]:
    """The candidates whose config loads offline; a note for each one that does not."""
    kept, skipped = [], []
    for name in candidates:
        try:
            Candidate.parse(name).config()
        except (OSError, ValueError) as err:
            print(f"note: skipping {name}: {str(err).splitlines()[0][:300]}", flush=True)
            skipped.append({"candidate": name, "reason": str(err).splitlines()[0]})
        else:
            kept.append(name)
    return kept, skipped


def fine_tune(folder: Path, task: dict, train_args: list[str], output_dir: Path) -> dict:
    args = ["--model_name_or_path", str(folder), "--task_type", task["task_type"], "--train_file", str(task["train"])]
    return run_recipe("finetune.py", [*args, "--test_file", str(task["test"]), *train_args], output_dir)


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="300 examples to score and train on, 1 epoch, 300 test",
        tasks=list(TASKS),
        cpu_threads="torch threads, scoring and fine-tuning",
    )
    parser.add_argument("--candidates", nargs="+", default=CANDIDATES, help="MODEL[:layers=K][,random][,seed=S]")
    parser.add_argument("--score_examples", type=int, default=2000, help="training examples the scores see")
    parser.add_argument("--max_train_samples", type=int, default=2000, help="fine-tuning examples (the budget)")
    parser.add_argument("--max_test_samples", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.quick:
        args.score_examples, args.max_train_samples, args.max_test_samples, args.epochs = 300, 300, 300, 1
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    train_args = ["--seed", str(args.seed), "--num_train_epochs", str(args.epochs)]
    train_args += ["--learning_rate", str(args.learning_rate)]
    for flag in ("max_train_samples", "max_test_samples", "cpu_threads"):
        if getattr(args, flag) is not None:
            train_args += [f"--{flag}", str(getattr(args, flag))]

    candidates, skipped = available(args.candidates)
    rows, correlations = [], []
    with tempfile.TemporaryDirectory(prefix="bench_transferability_") as scratch:
        folders = {}
        for index, name in enumerate(candidates):  # cut / random encoders as folders any recipe can start from
            folders[name] = Candidate.parse(name).save(Path(scratch) / f"candidate-{index}")
        for task_name in args.tasks:
            task = TASKS[task_name]
            print(f"scoring {task_name}: {len(candidates)} candidates on {args.score_examples} examples", flush=True)
            data_args = DataArguments(task_type=task["task_type"], train_file=str(task["train"]))
            scored = score_candidates(candidates, data_args, list(SCORES), max_examples=args.score_examples)
            for name, score_row in zip(candidates, scored):
                print(f"fine-tuning {task_name} / {name} ...", flush=True)
                start = time.perf_counter()
                results = fine_tune(folders[name], task, train_args, Path(scratch) / f"{task_name}-{len(rows)}")
                rows.append(
                    {
                        "task": task_name,
                        "candidate": name,
                        **{score: score_row[score] for score in SCORES},
                        "score_features": score_row["num_features"],
                        "feature_dim": score_row["feature_dim"],
                        "score_seconds": score_row["seconds"],
                        "metric": task["metric"],
                        "fine_tuned_test": results[f"test_{task['metric']}"],
                        "fine_tune_seconds": time.perf_counter() - start,
                        "train_runtime_s": results["train_runtime"],
                    }
                )
            task_rows = [r for r in rows if r["task"] == task_name]
            correlations.append(
                {
                    "task": task_name,
                    "candidates": len(task_rows),
                    **{
                        f"kendall_tau_b_{score}": kendall_tau_b(
                            [r[score] for r in task_rows], [r["fine_tuned_test"] for r in task_rows]
                        )
                        for score in SCORES
                    },
                }
            )

    settings = {**vars(args), "train_args": train_args}
    output = results_path(args, "transferability")
    report = {"quick": args.quick, "settings": settings, "skipped": skipped, "rows": rows, "correlations": correlations}
    write_results(output, report)

    table = [
        [r["task"], r["candidate"], f"{r['logme']:.4f}", f"{r['hscore']:.3f}", f"{r['score_seconds']:.1f} s"]
        + [f"{r['metric']} {r['fine_tuned_test']:.4f}", f"{r['fine_tune_seconds']:.0f} s"]
        for r in rows
    ]
    header = ["task", "candidate", "LogME", "H-score", "scoring time", "fine-tuned test", "fine-tuning time"]
    print("\n" + markdown_table(header, table))
    table = [
        [c["task"], c["candidates"], f"{c['kendall_tau_b_logme']:+.3f}", f"{c['kendall_tau_b_hscore']:+.3f}"]
        for c in correlations
    ]
    header = ["task", "candidates", "Kendall τ_b, LogME vs fine-tuned", "Kendall τ_b, H-score vs fine-tuned"]
    print("\n" + markdown_table(header, table))
    for s in skipped:
        print(f"\nskipped {s['candidate']}: {s['reason']}")
    print(f"\nscores on the first {args.score_examples} training examples; written to {output}")


if __name__ == "__main__":
    main()
