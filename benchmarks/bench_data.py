"""Data at scale: time to the first training step, preprocessing rows/s and peak RSS, Python rows vs Arrow.

    python benchmarks/bench_data.py                                  # 10k, 100k, 1M, 5M rows
    python benchmarks/bench_data.py --sizes 10000 100000 --quick     # a smoke run

Corpora: SST-2 train repeated, each text with its row number appended (so every row differs), as JSONL. Each
size is fine-tuned with `recipes/finetune.py` (MiniLM, --max_seq_length 128, batch 32) until its 5th optimizer
step, in a fresh process (`_first_step.py`), by three systems in one run:

- `python rows`: the data path before Arrow (the package at --old_ref, a git worktree; rows as Python objects),
  up to --old_max_rows (1M needed 6 GB here; 5M would need more memory than this machine has);
- `arrow, cold cache`: this checkout with an empty `datasets` cache: read, check and tokenize;
- `arrow, warm cache`: the same again: everything memory-mapped from the cache.

Targets (issue 25): peak RSS at 5M rows <= 1.5x the peak at 10k; a warm start prepares its data in <= 10% of a
cold start's time; preprocessing >= 20k rows/s. Writes benchmarks/results/data.json and data.png.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from _common import DATA, ROOT, benchmark_parser, markdown_table, results_path, write_results

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
OLD_REF = "2d022a2"  # main before the Arrow data path
SYSTEMS = ("python rows", "arrow, cold cache", "arrow, warm cache")
TARGETS = {"rss_ratio_max": 1.5, "warm_fraction_max": 0.10, "rows_per_s_min": 20_000}


def build_corpus(rows: int, path: Path) -> Path:
    """SST-2 train cycled to `rows` rows, each text ending in its row number."""
    if path.is_file():
        return path
    source = [json.loads(line) for line in (DATA / "sst2" / "train.jsonl").open()]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for i, row in zip(range(rows), itertools.cycle(source)):
            out.write(json.dumps({"text": f"{row['text'].strip()} {i}", "label": row["label"]}) + "\n")
    tmp.rename(path)
    return path


def old_checkout(workdir: Path, ref: str) -> Path:
    """A worktree of the package at `ref` (made once)."""
    folder = workdir / f"old-{ref}"
    if not folder.is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), ref], check=True)
    return folder


def run(tree: Path, corpus: Path, cache: Path, out: Path, steps: int, num_proc: int | None) -> dict:
    """One fine-tuning start in a fresh process with the package of `tree`; its `_first_step.py` report."""
    shutil.rmtree(out, ignore_errors=True)
    args = [
        "--model_name_or_path",
        MODEL,
        "--train_file",
        str(corpus),
        "--max_seq_length",
        "128",
        "--per_device_train_batch_size",
        "32",
        "--max_steps",
        str(steps),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
    ]
    if num_proc and tree == ROOT:
        args += ["--preprocessing_num_workers", str(num_proc)]
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "_first_step.py"),
        str(steps),
        str(tree / "recipes" / "finetune.py"),
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    line = next((line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("BENCH_RESULT "))


def summarize(rows: list[dict]) -> dict:
    """The three targets, measured."""
    arrow = [r for r in rows if r["system"].startswith("arrow")]
    by_size = {}
    for r in arrow:
        by_size.setdefault(r["rows"], []).append(r)
    smallest, largest = min(by_size), max(by_size)
    peak = {n: max(r["peak_rss_mib"] for r in runs) for n, runs in by_size.items()}
    cold = {r["rows"]: r for r in arrow if r["system"] == "arrow, cold cache"}
    warm = {r["rows"]: r for r in arrow if r["system"] == "arrow, warm cache"}
    fractions = {n: warm[n]["prep_s"] / cold[n]["prep_s"] for n in cold if n in warm}
    speeds = {n: cold[n]["rows_per_s"] for n in cold}
    summary = {
        "rss_ratio": {"rows": [smallest, largest], "value": peak[largest] / peak[smallest]},
        "warm_fraction": fractions,
        "cold_rows_per_s": speeds,
    }
    summary["met"] = {
        "rss": summary["rss_ratio"]["value"] <= TARGETS["rss_ratio_max"],
        "warm": all(f <= TARGETS["warm_fraction_max"] for f in fractions.values()),
        "speed": all(s >= TARGETS["rows_per_s_min"] for s in speeds.values()),
    }
    return summary


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, time) = plt.subplots(1, 2, figsize=(11, 4))
    for i, system in enumerate(SYSTEMS):
        runs = sorted((r for r in rows if r["system"] == system), key=lambda r: r["rows"])
        if not runs:
            continue
        sizes = [r["rows"] for r in runs]
        memory.plot(sizes, [r["peak_rss_mib"] for r in runs], "o-", color=f"C{i}", label=system)
        time.plot(sizes, [r["first_step_s"] for r in runs], "o-", color=f"C{i}", label=system)
    for axis, label in ((memory, "peak RSS of the training process (MiB)"), (time, "time to the first step (s)")):
        axis.set_xscale("log")
        axis.set_xlabel("training rows")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    memory.set_title("memory: MiniLM fine-tuning, SST-2 repeated")
    time.set_title("start-up: read + check + tokenize + model")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="sizes 10k and 100k only (unless --sizes), old path included",
        workdir="corpora, caches and the old checkout (default /tmp/nlptransfer_bench_data)",
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=None)
    parser.add_argument("--old_ref", default=OLD_REF, help="git ref of the data path before Arrow")
    parser.add_argument("--old_max_rows", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--num_proc", type=int, default=None, help="--preprocessing_num_workers of the Arrow runs")
    args = parser.parse_args()
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000, 5_000_000])
    workdir = Path(args.workdir or "/tmp/nlptransfer_bench_data")
    workdir.mkdir(parents=True, exist_ok=True)
    old = old_checkout(workdir, args.old_ref)

    rows = []
    for n in sizes:
        corpus = build_corpus(n, workdir / f"sst2_{n}.jsonl")
        cache = workdir / f"cache_{n}"
        shutil.rmtree(cache, ignore_errors=True)
        plan = [("arrow, cold cache", ROOT), ("arrow, warm cache", ROOT)]
        if n <= args.old_max_rows:
            plan.insert(0, ("python rows", old))
        for system, tree in plan:
            result = run(tree, corpus, cache, workdir / "out", args.steps, args.num_proc)
            result.update(system=system, rows=n, rows_per_s=n / result["prep_s"])
            rows.append(result)
            print(
                f"{n:>9,} rows  {system:<18} prep {result['prep_s']:7.1f} s  first step {result['first_step_s']:7.1f} s"
                f"  peak RSS {result['peak_rss_mib']:7.0f} MiB",
                flush=True,
            )
        shutil.rmtree(cache, ignore_errors=True)

    summary = summarize(rows)
    table = markdown_table(
        [
            "rows",
            "system",
            "prep (s)",
            "rows/s",
            "first step (s)",
            "peak RSS prep (MiB)",
            "peak RSS (MiB)",
            "of it own / file-backed (MiB)",
            "Arrow pages resident (MiB)",
        ],
        [
            [
                f"{r['rows']:,}",
                r["system"],
                f"{r['prep_s']:.1f}",
                f"{r['rows_per_s']:,.0f}",
                f"{r['first_step_s']:.1f}",
                f"{r['peak_rss_prep_mib']:.0f}",
                f"{r['peak_rss_mib']:.0f}",
                f"{r['peak_rss_anon_mib']:.0f} / {r['peak_rss_file_mib']:.0f}",
                f"{r['arrow_resident_mib']:.0f}" if "arrow_resident_mib" in r else "-",
            ]
            for r in rows
        ],
    )
    print(table)
    print(json.dumps(summary, indent=2))
    path = results_path(args, "data")
    write_results(path, {"targets": TARGETS, "rows": rows, "summary": summary})
    plot(rows, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
