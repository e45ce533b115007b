"""What every benchmark shares: where the data is, the TREC / CoNLL task flags, running one recipe in
its own process (through `_run.py`, so peak memory is per system), and summing runs up over seeds."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NLPTRANSFER_DATA", ROOT.parent / "shared" / "data"))
TASKS = {
    "trec": {
        "metric": "accuracy",
        "args": ["--train_file", str(DATA / "trec/train.jsonl"), "--test_file", str(DATA / "trec/test.jsonl")],
    },
    "conll2003": {
        "metric": "f1",
        "args": [
            "--task_type",
            "ner",
            "--train_file",
            str(DATA / "conll2003/eng.train"),
            "--validation_file",
            str(DATA / "conll2003/eng.testa"),
            "--test_file",
            str(DATA / "conll2003/eng.testb"),
        ],
    },
}


def run_recipe(recipe: str, args: list[str], output_dir: Path) -> dict:
    """Run `recipes/<recipe>` with `args` into `output_dir` in a fresh process; its all_results.json
    plus wall time and peak RSS. A failed run raises with the end of its stderr."""
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "_run.py"),
        str(ROOT / "recipes" / recipe),
        *args,
        "--output_dir",
        str(output_dir),
        "--disable_tqdm",
        "true",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT "))
    return json.loads(line.removeprefix("BENCH_RESULT "))


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (std 0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def group_rows(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """`rows` grouped by their values of `keys`, groups in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    return groups


def status_mib(field: str) -> float:
    """A memory field of this process from /proc/self/status (VmRSS: resident now, VmHWM: its peak), in MiB."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(f"{field}:")).split()[1]) / 1024
