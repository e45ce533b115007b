"""The README's main job, timed: TREC-6 + SST-2 + CoNLL-2003 on one MiniLM encoder, as a new user runs it.

    python benchmarks/bench_main_job.py     # after the README's install; about 13 min on 2 CPU cores

Runs the launch half of the README's first set-up command word for word (`HF_HUB_OFFLINE=1 accelerate launch
recipes/mtl.py --config recipes/configs/trec_sst2_conll.yaml --overwrite_output_dir true`) from the repository
root, so the run goes to the config's `runs/mtl`. Records the wall time of that command, the training time and
every task's test score from the run's all_results.json, and the machine.
Writes benchmarks/results/main_job.json and prints a markdown table.
"""

import json
import os
import subprocess
import time

from _common import ROOT, benchmark_parser, markdown_table, results_path, write_results

CONFIG = "recipes/configs/trec_sst2_conll.yaml"
LAUNCH = ["accelerate", "launch", "recipes/mtl.py", "--config", CONFIG, "--overwrite_output_dir", "true"]
OUTPUT_DIR = ROOT / "runs" / "mtl"  # the config's output_dir
MAIN_METRICS = {"trec": "accuracy", "sst2": "accuracy", "conll2003": "f1"}


def main() -> None:
    args = benchmark_parser(__doc__).parse_args()
    start = time.perf_counter()
    subprocess.run(LAUNCH, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    wall = time.perf_counter() - start
    results = json.loads((OUTPUT_DIR / "all_results.json").read_text())
    scores = {task: results[f"test_{task}_{metric}"] for task, metric in MAIN_METRICS.items()}
    payload = {
        "launch": "HF_HUB_OFFLINE=1 " + " ".join(LAUNCH),
        "wall_seconds": wall,
        "train_runtime": results["train_runtime"],
        "train_mixed_precision": results["train_mixed_precision"],
        "metrics": MAIN_METRICS,
        "test_scores": scores,
        "eval_average": results["eval_average"],
        "test_average": results["test_average"],
    }
    write_results(results_path(args, "main_job"), payload)
    rows = [[task, MAIN_METRICS[task], f"{score:.4f}"] for task, score in scores.items()]
    print(markdown_table(["task", "metric", "test"], rows))
    print(f"wall time {wall:.0f} s (training {results['train_runtime']:.0f} s, {results['train_mixed_precision']})")


if __name__ == "__main__":
    main()
