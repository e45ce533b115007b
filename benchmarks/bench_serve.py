"""Serving throughput and latency of `nlptransfer serve` on loopback, against the server a user would write first.

    python benchmarks/bench_serve.py                 # (a) and (b) below, 3 interleaved rounds: serve.json
    python benchmarks/bench_serve.py --sweep         # instead tune --max_wait_ms, --max_batch_size, --cpu_threads:
                                                     # serve_sweep.json
    python benchmarks/bench_serve.py --quick         # smoke run

A bounded load test against 127.0.0.1 only: `--requests` requests at each concurrency (1, 8, 32 by default),
each carrying one real text (a typical online client), from an asyncio aiohttp client that keeps each worker's
connection open. Reports requests (queries) per second and p50/p99 latency.

(a) The TREC-6 single-task MiniLM run behind `nlptransfer serve` (`/predict`, TEI's format) against
    `naive_server.py`: FastAPI + uvicorn calling a transformers `pipeline` per request, no batching, at torch's
    default threads and at one thread, and with bf16 weights (a careful user would try them; the fastest at the
    top concurrency is the baseline).
(b) Three-task queries (TREC-6, SST-2, CoNLL-2003 answers for one text): the multi-task run (`--run`) answers
    each with one `/predict/tasks` request; three single-task servers answer it with three concurrent requests,
    the query taking as long as the slowest.
The single-task runs are MiniLM fine-tuned for `--train_steps` steps (trained into `--workdir` when missing):
throughput does not depend on accuracy, which is recorded anyway. Every server runs the same encoder at the same
`--max_length`; all servers are started first and idle while another is measured; systems take turns over
`--rounds` rounds and the best round of each counts (background load hits all alike). The client shares the
machine's cores with the servers, as a sidecar would.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from nlptransfer.serving import ServeConfig

from _common import DATA, ROOT, TASKS, benchmark_parser, markdown_table, results_path, run_recipe, write_results

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SINGLE_TASKS = {
    "trec": TASKS["trec"]["args"],
    "sst2": ["--train_file", str(DATA / "sst2/train.jsonl"), "--test_file", str(DATA / "sst2/validation.jsonl")],
    "conll2003": [*TASKS["conll2003"]["args"], "--max_eval_samples", "500", "--max_test_samples", "1000"],
}
TARGET_SPEEDUP = 3.0


def texts_of(task: str, limit: int = 1000) -> list[str]:
    """Real test sentences: TREC-6 test questions, SST-2 validation sentences, CoNLL-2003 test sentences."""
    path = {"trec": "trec/test.jsonl", "sst2": "sst2/validation.jsonl", "conll2003": "conll2003/test.jsonl"}[task]
    rows = [json.loads(line) for line in (DATA / path).read_text().splitlines()[:limit]]
    return [row["text"].strip() if "text" in row else " ".join(row["tokens"]) for row in rows]


def train_single_task_runs(workdir: Path, steps: int) -> dict[str, dict]:
    """{task: {"path", test score}}: MiniLM fine-tuned for `steps` steps per task, trained when missing."""
    runs = {}
    for task, args in SINGLE_TASKS.items():
        out = workdir / task
        if not (out / "all_results.json").is_file():
            flags = ["--model_name_or_path", MODEL, *args, "--max_steps", str(steps), "--max_train_samples", "3000"]
            print(f"training {task} ({steps} steps) into {out}", flush=True)
            run_recipe("finetune.py", [*flags, "--overwrite_output_dir", "true"], out)
        results = json.loads((out / "all_results.json").read_text())
        score = {k: v for k, v in results.items() if k in ("test_accuracy", "test_f1")}
        runs[task] = {"path": str(out), **score}
    return runs


class Server:
    """A server process started with `--port 0`; `url` once it prints `... on http://HOST:PORT (listening)`."""

    def __init__(self, command: list[str], timeout: float = 300):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.output.append(line)
                if "(listening)" in line:
                    self.url = line.split(" on ", 1)[1].split()[0]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not hasattr(self, "url"):
            self.close()
            raise RuntimeError(f"{' '.join(command)} did not start:\n{''.join(self.output)[-3000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def ours(run: str, args, max_batch_size: int, max_wait_ms: float, cpu_threads: int | None) -> list[str]:
    command = [sys.executable, "-m", "nlptransfer.cli", "serve", run, "--port", "0", "--log_level", "warning"]
    command += ["--max_batch_size", str(max_batch_size), "--max_wait_ms", str(max_wait_ms)]
    command += ["--max_length", str(args.max_length), "--precision", args.precision]
    return command + (["--cpu_threads", str(cpu_threads)] if cpu_threads else [])


def naive(run: str, variant: str) -> list[str]:
    """The naive server at a variant THREADS:DTYPE (threads 0: torch's default)."""
    threads, dtype = variant.split(":")
    command = [sys.executable, str(ROOT / "benchmarks" / "naive_server.py"), run, "--port", "0", "--dtype", dtype]
    return command + (["--cpu_threads", threads] if int(threads) else [])


def naive_label(variant: str) -> str:
    threads, dtype = variant.split(":")
    return f"naive: pipeline per request, {'default' if threads == '0' else threads} thread(s), {dtype}"


def bf16_agreement(run: str, texts: dict[str, list[str]], max_length: int) -> dict:
    """How often the multi-task run answers the same with bf16 weights (`--precision bf16`/`auto`) as in float32:
    the label of a classification task, every (entity, start, end) span of NER, over each task's test texts."""
    from nlptransfer.serving.precision import load_served_predictor

    exact, bf16 = (load_served_predictor(run, "torch", "cpu", max_length, p) for p in ("fp32", "bf16"))
    agreement = {}
    for task in exact.task_names:
        sample, same = texts.get(task, []), 0
        for start in range(0, len(sample), 64):
            batch = sample[start : start + 64]
            for a, b in zip(exact.predict(batch, tasks=[task]), bf16.predict(batch, tasks=[task])):
                if isinstance(a[task], list):
                    a, b = ([(e["entity"], e["start"], e["end"]) for e in x[task]] for x in (a, b))
                    same += a == b
                else:
                    same += a[task].get("label") == b[task].get("label")
        agreement[task] = {"texts": len(sample), "same": same}
    return agreement


# ---- the load generator -----------------------------------------------------------------------------------------
async def load(targets: list[tuple[str, str]], bodies: list[dict], requests: int, concurrency: int) -> dict:
    """`requests` queries from `concurrency` workers; a query posts `bodies[i]` to every (url, path) of `targets`
    at once and lasts until the last answer. Any non-200 answer fails the benchmark. The client is aiohttp's
    (installed with `datasets`): it shares the cores with the servers and costs less CPU per request than httpx."""
    import aiohttp

    latencies: list[float] = []
    indices = iter(range(requests))
    payloads = [json.dumps(body).encode() for body in bodies]
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def post(url: str, payload: bytes) -> None:
            async with session.post(url, data=payload, headers=headers) as response:
                text = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: {response.status} {text[:300]!r}")

        async def worker() -> None:
            for i in indices:
                payload = payloads[i % len(payloads)]
                start = time.perf_counter()
                await asyncio.gather(*(post(base + path, payload) for base, path in targets))
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return {"per_s": requests / wall, "p50_ms": float(p50), "p99_ms": float(p99), "requests": requests}


def measure(targets, bodies, requests: int, concurrency: int) -> dict:
    return asyncio.run(load(targets, bodies, requests, concurrency))


def warm(targets, bodies) -> None:
    measure(targets, bodies, 16, 4)


def best_of(rounds: list[dict]) -> dict:
    best = max(rounds, key=lambda r: r["per_s"])
    return {**best, "rounds_per_s": [round(r["per_s"], 2) for r in rounds]}


# ---- the benchmark ---------------------------------------------------------------------------------------------
def compare(systems: dict, args, comparison: str, unit: str) -> list[dict]:
    """Each system at each concurrency, systems taking turns over the rounds; the best round per cell."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for round_index in range(args.rounds):
        for name, (targets, bodies) in systems.items():
            for concurrency in args.concurrency:
                result = measure(targets, bodies, args.requests, concurrency)
                cells.setdefault((name, concurrency), []).append(result)
                print(
                    f"round {round_index + 1} {name:45} c={concurrency:<3} {result['per_s']:7.1f} {unit}/s "
                    f"p50 {result['p50_ms']:7.1f} ms p99 {result['p99_ms']:7.1f} ms",
                    flush=True,
                )
    return [
        {"comparison": comparison, "system": name, "concurrency": c, "unit": unit, **best_of(results)}
        for (name, c), results in cells.items()
    ]


def sweep(run: str, args, bodies: list[dict]) -> list[dict]:
    """Our server on the TREC-6 run over a grid of (max_wait_ms, max_batch_size), then at other --cpu_threads with
    the default batching: how the defaults were chosen. Fewer requests at low concurrency (50 per client)."""
    defaults = ServeConfig()
    grid = [(wait, size, None) for size in args.sweep_batch_sizes for wait in args.sweep_waits]
    grid += [(defaults.max_wait_ms, defaults.max_batch_size, threads) for threads in args.sweep_threads]
    rows = []
    for wait, size, threads in grid:
        server = Server(ours(run, args, size, wait, threads))
        try:
            targets = [(server.url, "/predict")]
            warm(targets, bodies)
            for concurrency in args.concurrency:
                requests = min(args.sweep_requests, 50 * concurrency)
                results = [measure(targets, bodies, requests, concurrency) for _ in range(2)]
                row = {"max_wait_ms": wait, "max_batch_size": size, "cpu_threads": threads or 0}
                rows.append({**row, "concurrency": concurrency, **best_of(results)})
                print(f"sweep {rows[-1]}", flush=True)
        finally:
            server.close()
    return rows


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="40 requests per level, concurrency 1 and 8, one round",
        workdir="where the single-task runs are (trained when missing; default runs/bench_serve)",
    )
    parser.add_argument("--run", default=str(ROOT.parent / "main_job" / "runs" / "mtl"), help="multi-task run")
    parser.add_argument("--requests", type=int, default=400, help="requests (queries) per system and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_batch_size", type=int, default=None, help="our servers' (default: serve's default)")
    parser.add_argument("--max_wait_ms", type=float, default=None, help="our servers' (default: serve's default)")
    parser.add_argument("--cpu_threads", type=int, default=None, help="our servers' (default: serve's default)")
    parser.add_argument(
        "--naive_variants",
        nargs="+",
        default=["0:float32", "1:float32", "1:bfloat16"],
        help="the naive server as THREADS:DTYPE (threads 0: torch's default); the fastest is the baseline",
    )
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--precision", default="auto", help="our servers' --precision")
    parser.add_argument("--train_steps", type=int, default=30)
    parser.add_argument(
        "--sweep", action="store_true", help="instead: our server over a grid of batching settings (serve_sweep.json)"
    )
    parser.add_argument("--sweep_waits", type=float, nargs="+", default=[0, 2, 5, 10])
    parser.add_argument("--sweep_batch_sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--sweep_threads", type=int, nargs="+", default=[2], help="--cpu_threads to try")
    parser.add_argument("--sweep_requests", type=int, default=300)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.rounds, args.sweep_requests = 40, [1, 8], 1, 40
    defaults = ServeConfig()
    args.max_batch_size = args.max_batch_size or defaults.max_batch_size
    args.max_wait_ms = defaults.max_wait_ms if args.max_wait_ms is None else args.max_wait_ms
    output = results_path(args, "serve_sweep" if args.sweep else "serve")
    workdir = Path(args.workdir or ROOT / "runs" / "bench_serve")
    single = train_single_task_runs(workdir, args.train_steps)
    texts = {task: texts_of(task) for task in SINGLE_TASKS}
    trec_bodies = [{"inputs": text} for text in texts["trec"]]
    mixed = [text for group in zip(*texts.values()) for text in group]  # one text per query, tasks' texts in turn
    query_bodies = [{"inputs": text} for text in mixed]
    settings = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "cpu_threads": args.cpu_threads,
        "precision": args.precision,
        "max_length": args.max_length,
        "train_steps": args.train_steps,
        "multitask_run": args.run,
        "quick": args.quick,
    }
    if args.sweep:
        rows = sweep(single["trec"]["path"], args, trec_bodies)
        write_results(output, {"settings": {**settings, "sweep_requests": args.sweep_requests}, "sweep": rows})
        print(f"written to {output}")
        return

    with ExitStack() as stack:

        def start(command: list[str]) -> str:
            server = Server(command)
            stack.callback(server.close)
            return server.url

        ours_single = {
            task: start(ours(run["path"], args, args.max_batch_size, args.max_wait_ms, args.cpu_threads))
            for task, run in single.items()
        }
        multi = start(ours(args.run, args, args.max_batch_size, args.max_wait_ms, args.cpu_threads))
        systems_a = {"nlptransfer serve": ([(ours_single["trec"], "/predict")], trec_bodies)}
        for variant in args.naive_variants:
            url = start(naive(single["trec"]["path"], variant))
            systems_a[naive_label(variant)] = ([(url, "/predict")], trec_bodies)
        systems_b = {
            "multi-task: 1 server, 1 request per query": ([(multi, "/predict/tasks")], query_bodies),
            "single-task: 3 servers, 3 requests per query": (
                [(url, "/predict") for url in ours_single.values()],
                query_bodies,
            ),
        }
        for targets, bodies in [*systems_a.values(), *systems_b.values()]:
            warm(targets, bodies)
        rows = compare(systems_a, args, "vs naive", "requests")
        rows += compare(systems_b, args, "multi-task vs single-task", "queries")

    top = max(args.concurrency)
    at_top = {r["system"]: r for r in rows if r["concurrency"] == top}
    baseline = max((r for name, r in at_top.items() if name.startswith("naive")), key=lambda r: r["per_s"])
    mine = at_top["nlptransfer serve"]
    speedup = mine["per_s"] / baseline["per_s"]
    multi_row = at_top["multi-task: 1 server, 1 request per query"]
    single_row = at_top["single-task: 3 servers, 3 requests per query"]
    summary = {
        "concurrency": top,
        "naive_baseline": baseline["system"],
        "speedup_vs_naive": speedup,
        "p99_ms": mine["p99_ms"],
        "naive_p99_ms": baseline["p99_ms"],
        "multitask_speedup_vs_single_task_servers": multi_row["per_s"] / single_row["per_s"],
        "targets": {
            f"≥ {TARGET_SPEEDUP:g}x the naive server's requests/s at concurrency {top}": speedup >= TARGET_SPEEDUP,
            f"p99 at concurrency {top} no worse than the naive server's": mine["p99_ms"] <= baseline["p99_ms"],
        },
    }
    agreement = bf16_agreement(args.run, texts, args.max_length)
    payload = {"settings": settings, "single_task_runs": single, "rows": rows, "summary": summary}
    payload["bf16_agreement"] = agreement
    write_results(output, payload)
    table = [
        [r["comparison"], r["system"], r["concurrency"], f"{r['per_s']:.1f} {r['unit']}/s"]
        + [f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"]
        for r in rows
    ]
    print("\n" + markdown_table(["comparison", "system", "concurrency", "throughput", "p50 ms", "p99 ms"], table))
    print(
        f"\nat concurrency {top}: {speedup:.2f}x the naive server ({baseline['system']}), p99 {mine['p99_ms']:.0f} ms"
    )
    print(f"vs {baseline['p99_ms']:.0f} ms; targets: {summary['targets']}")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
