"""What every benchmark shares: where the data is, the TREC / CoNLL task flags, the common command-line flags
(`benchmark_parser`), writing a results JSON with the command that made it and the machine it ran on
(`write_results`), markdown tables (`markdown_table`), running one recipe in its own process (through
`_run.py`, so peak memory is per system), and summing runs up over seeds.

Imports nothing heavy at module level: `report.py` and the tests import it too."""

import argparse
import functools
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
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


def free_port() -> int:
    """A free local port for `accelerate launch --main_process_port` (runs and tests side by side need their own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def paired_points(runs: list[dict], baseline: dict, key: str = "score") -> tuple[float, float] | None:
    """Mean and std over seeds of each run's `key` minus the baseline's of the same seed (`baseline`: seed ->
    value), in points; None where no seed pairs."""
    deltas = [100 * (r[key] - baseline[r["seed"]]) for r in runs if r["seed"] in baseline]
    return mean_std(deltas) if deltas else None


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


def benchmark_parser(
    doc: str,
    *,
    quick: str | None = None,
    tasks: list[str] | None = None,
    seeds: list[int] | None = None,
    seeds_help: str | None = None,
    seed: int | None = None,
    workdir: str | None = None,
    cpu_threads: str | None = None,
    output: str | None = "results JSON (default: benchmarks/results/<benchmark>[_quick].json)",
) -> argparse.ArgumentParser:
    """An argument parser described by the first line of `doc` (a script's docstring), with the flags benchmarks
    share, each added only when its argument is given: `--quick` (its help), `--tasks` (the choices, all by
    default), `--seeds` (the default list), `--seed` (the default), `--workdir` and `--cpu_threads` (their help)
    and `--output` (its help; default None, see `results_path`)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    if tasks is not None:
        parser.add_argument("--tasks", nargs="+", default=list(tasks), choices=list(tasks))
    if seeds is not None:
        parser.add_argument("--seeds", nargs="+", type=int, default=seeds, help=seeds_help)
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed)
    if workdir is not None:
        parser.add_argument("--workdir", default=None, help=workdir)
    if cpu_threads is not None:
        parser.add_argument("--cpu_threads", type=int, default=None, help=cpu_threads)
    if output is not None:
        parser.add_argument("--output", default=None, help=output)
    return parser


def results_path(args: argparse.Namespace, name: str) -> Path:
    """`--output`, or benchmarks/results/<name>.json (<name>_quick.json with --quick); its folder made."""
    quick = "_quick" if getattr(args, "quick", False) else ""
    path = Path(args.output or RESULTS / f"{name}{quick}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def command_line(argv: list[str] | None = None) -> str:
    """This process's command line as one would type it from the repository root (`python benchmarks/...`)."""
    script, *args = sys.argv if argv is None else argv
    path = Path(script).resolve()
    if path.is_relative_to(ROOT):
        script = str(path.relative_to(ROOT))
    return shlex.join(["python", script, *args])


@functools.cache
def machine() -> dict:
    """Where the numbers were measured: CPU model, usable cores and the CPU flags fast paths depend on (AVX-512,
    AMX), the GPU if any, and the library versions."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
    flags = set(fields.get("flags", "").split())
    info = {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": [flag for flag in wanted if flag in flags],
        "gpu": None,
        "python": platform.python_version(),
    }
    for package in ("torch", "transformers", "peft", "accelerate"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    try:
        import torch
    except ImportError:
        return info
    if torch.cuda.is_available():  # the recipes a benchmark starts see the same devices
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(path: Path, payload: dict) -> None:
    """Write `payload` to `path` as indented JSON, with `command` (the command line that made it) first and
    `machine` (see `machine`) last."""
    document = {"command": command_line(), **payload, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def once(path: Path, run, *args, flags: list[str] | None = None) -> dict:
    """The row an earlier invocation saved at `path`, or `run(*args)`'s, saved there with the machine it ran on:
    a long benchmark given a kept folder resumes run by run. With `flags`, a kept row must have been run with
    them (`same_flags`)."""
    if path.exists():
        print(f"  (kept from {path})", flush=True)
        row = json.loads(path.read_text())
        return row if flags is None else same_flags(row, flags, path)
    row = {**run(*args), "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2) + "\n")
    return row


def same_flags(row: dict, flags: list[str], path: Path) -> dict:
    """`row` (kept at `path`) if it was run with `flags`; else stop: runs with other settings never mix silently."""
    if row["args"] != flags:
        raise SystemExit(
            f"{path} was run with `{' '.join(row['args'])}`, not `{' '.join(flags)}`: use another --workdir"
        )
    return row


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table (no trailing newline); cells are str()-ed, None becomes an empty cell."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
