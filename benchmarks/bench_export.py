"""Serving a run in PyTorch vs ONNX Runtime (fp32) vs ONNX Runtime with int8 dynamic quantization: speed and scores.

    python benchmarks/bench_export.py --run /work/main_job/runs/mtl    # the README's multi-task MiniLM
    python benchmarks/bench_export.py --run runs/mtl --quick            # fewer texts, one round: a smoke run

The run is exported once (`nlptransfer.export.export_onnx(..., quantize="int8")`: model.onnx and
model_int8.onnx), then each runtime is one `Predictor` (`inference.load_predictor`, backend torch or onnx) in
this process, all on the same `--cpu_threads`; PyTorch also under bf16 autocast where the CPU has bf16 matmuls.
Latency: one TREC-6 test question at a time (batch 1, tokenizing included, decoding not), median and 90th
percentile. Throughput: the TREC-6 test questions in batches of 32, texts/s. The runtimes take turns in each of
`--rounds` rounds after an untimed warm-up, so background load hits all alike; the best round counts. Scores:
every task of the run that has a test set here (TREC-6 test, SST-2 validation, CoNLL-2003 eng.testb), tokenized
and scored by the task kind's own code (`TaskKind.encode` / `TaskKind.score`: CoNLL-2003 is entity F1 over
words, as the recipes score it), next to the run's own test figures (`all_results.json`).
Writes benchmarks/results/export[_quick].json and prints its table (`report.render_export`).
"""

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nlptransfer.encoders import cpu_cores
from nlptransfer.export import export_onnx
from nlptransfer.inference import load_predictor
from nlptransfer.readers import read_file
from nlptransfer.runs import RESULTS_FILE, read_json
from nlptransfer.tasks import TASK_KINDS, Encoded

from _common import DATA, benchmark_parser, machine, results_path, write_results
from report import render_export

TEST_FILES = {  # task name in the run -> its test set here (the files the shipped config trains and tests on)
    "trec": DATA / "trec" / "test.jsonl",
    "sst2": DATA / "sst2" / "validation.jsonl",
    "conll2003": DATA / "conll2003" / "eng.testb",
}
MAX_LENGTH = 128  # the recipes' --max_seq_length default, which the run was trained and tested with
SCORE_BATCH = 64  # the run's per_device_eval_batch_size
THROUGHPUT_BATCH = 32


def runtimes(run: Path, export: Path) -> dict[str, tuple[str, Path]]:
    """Runtime name -> (backend, what it loads). PyTorch also in bf16 where the CPU has bf16 matmuls (AMX or
    AVX-512 BF16): what a careful PyTorch user would serve with there."""
    names = {"PyTorch fp32": ("torch", run)}
    if {"amx_bf16", "avx512_bf16"} & set(machine()["cpu_flags"]):
        names["PyTorch bf16 (autocast)"] = ("torch", run)
    names["ONNX Runtime fp32"] = ("onnx", export / "model.onnx")
    names["ONNX Runtime int8 (dynamic)"] = ("onnx", export / "model_int8.onnx")
    return names


def load(name: str, backend: str, path: Path):
    predictor = load_predictor(path, backend=backend)
    if "bf16" in name:
        forward = predictor.backend

        def autocast(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return forward(inputs)

        predictor.backend = autocast
    return predictor


def padded(features: list[dict], names: list[str], pad_id: int) -> dict[str, np.ndarray]:
    width = max(len(f["input_ids"]) for f in features)
    pads = {"input_ids": pad_id}
    return {
        name: np.array([f[name] + [pads.get(name, 0)] * (width - len(f[name])) for f in features], dtype=np.int64)
        for name in names
        if name in features[0]
    }


def scores(predictor, tests: dict[str, tuple]) -> dict[str, dict]:
    """Each task's test metrics from this predictor's logits, scored as the recipes score them."""
    out = {}
    for name, (encoded, spec) in tests.items():
        logits = []
        for start in range(0, len(encoded.features), SCORE_BATCH):
            batch = encoded.features.select(range(start, min(start + SCORE_BATCH, len(encoded.features)))).to_list()
            inputs = padded(batch, predictor.input_names, predictor.tokenizer.pad_token_id)
            logits += list(predictor.backend(inputs)[name])
        kind = TASK_KINDS[spec.kind]
        out[name] = {"metric": kind.default_metric, **kind.score(encoded, logits, spec)}
    return out


def encoded_tests(predictor) -> dict[str, tuple]:
    """Each task of the run with a test file here: (its encoded test set, its spec)."""
    tests = {}
    for name, spec in predictor.specs.items():
        if name in TEST_FILES:
            records = read_file(str(TEST_FILES[name]))
            kind = TASK_KINDS[spec.kind]
            labels = kind.check(records, spec)
            tests[name] = (kind.encode(records, labels, predictor.tokenizer, spec, MAX_LENGTH), spec)
    return tests


def time_latency(predictor, texts: list[str]) -> list[float]:
    """Seconds of each one-text `logits` call."""
    seconds = []
    for text in texts:
        start = time.perf_counter()
        predictor.logits([text])
        seconds.append(time.perf_counter() - start)
    return seconds


def time_throughput(predictor, texts: list[str]) -> float:
    """Texts per second over `texts` in batches of THROUGHPUT_BATCH."""
    start = time.perf_counter()
    for first in range(0, len(texts), THROUGHPUT_BATCH):
        predictor.logits(texts[first : first + THROUGHPUT_BATCH])
    return len(texts) / (time.perf_counter() - start)


def file_mib(path: Path) -> float | None:
    """The size of a weights file (None where the run keeps its weights otherwise: an adapter)."""
    return path.stat().st_size / 2**20 if path.is_file() else None


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="64 latency texts, one timed round, the first 200 examples of each test set: a smoke run",
        workdir="keep the export here (default: a temporary folder, removed after)",
        cpu_threads="threads for both runtimes (default: every usable core)",
    )
    parser.add_argument("--run", required=True, help="a run folder (e.g. the multi-task MiniLM of recipes/mtl.py)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each times every runtime)")
    parser.add_argument("--latency_texts", type=int, default=200, help="TREC-6 test questions timed one by one")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    threads = args.cpu_threads or cpu_cores()
    torch.set_num_threads(threads)  # the onnx backend gives ONNX Runtime as many intra-op threads
    run = Path(args.run)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_export_"))
    export = workdir / "onnx"
    try:
        export_seconds = None  # a --workdir export made before is reused
        if not (export / "model_int8.onnx").is_file():
            started = time.perf_counter()
            export_onnx(run, export, quantize="int8")
            export_seconds = time.perf_counter() - started
        manifest = read_json(export / "nlptransfer_onnx.json")
        predictors = {name: load(name, *where) for name, where in runtimes(run, export).items()}
        tests = encoded_tests(next(iter(predictors.values())))
        if args.quick:
            tests = {name: (_first(encoded, 200), spec) for name, (encoded, spec) in tests.items()}
        questions = [row["text"] for row in read_file(str(TEST_FILES["trec"])).rows]
        latency_texts = questions[: 64 if args.quick else args.latency_texts]
        timings = {name: {"latency": [], "throughput": []} for name in predictors}
        for predictor in predictors.values():  # warm-up, untimed
            time_latency(predictor, latency_texts[:8])
            time_throughput(predictor, questions[:64])
        for _ in range(rounds):
            for name, predictor in predictors.items():
                timings[name]["latency"].append(time_latency(predictor, latency_texts))
                timings[name]["throughput"].append(time_throughput(predictor, questions))
        recorded = read_json(run / RESULTS_FILE, {})
        rows = []
        for name, predictor in predictors.items():
            best = min(timings[name]["latency"], key=statistics.median)  # the best round counts
            backend, path = runtimes(run, export)[name]
            rows.append(
                {
                    "runtime": name,
                    "backend": backend,
                    "file": path.name if backend == "onnx" else None,
                    "size_mib": file_mib(path) if backend == "onnx" else file_mib(run / "model.safetensors"),
                    "latency_ms_p50": 1000 * statistics.median(best),
                    "latency_ms_p90": 1000 * float(np.percentile(best, 90)),
                    "throughput_texts_per_s": max(timings[name]["throughput"]),
                    "rounds_latency_ms_p50": [1000 * statistics.median(r) for r in timings[name]["latency"]],
                    "rounds_throughput_texts_per_s": timings[name]["throughput"],
                    "scores": scores(predictor, tests),
                }
            )
        summary = {
            name: {
                "metric": metric,
                "recorded": recorded.get(f"test_{name}_{metric}"),
                **{row["runtime"]: row["scores"][name][metric] for row in rows},
            }
            for name, metric in ((name, rows[0]["scores"][name]["metric"]) for name in tests)
        }
        payload = {
            "quick": args.quick,
            "run": str(run),
            "settings": {
                "threads": threads,
                "rounds": rounds,
                "latency_texts": len(latency_texts),
                "throughput_texts": len(questions),
                "throughput_batch": THROUGHPUT_BATCH,
                "max_length": MAX_LENGTH,
                "test_files": {name: str(TEST_FILES[name].relative_to(DATA)) for name in tests},
            },
            "export": {
                "seconds": export_seconds,
                "opset": manifest["opset"],
                "max_abs_difference_to_torch": manifest["max_abs_difference_to_torch"],
                "quantization": manifest["quantization"],
                "versions": manifest["versions"],
            },
            "rows": rows,
            "scores": summary,
        }
        path = results_path(args, "export")
        write_results(path, payload)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render_export(path.name, payload))
    print(f"\nwritten to {path}")


def _first(encoded, n: int):
    """The features of the first `n` rows of an encoded split (a NER row may have several windows)."""
    keep = [i for i, row in enumerate(encoded.row_of_feature.tolist()) if row < n]
    rows = range(min(n, len(encoded.records)))
    return Encoded(encoded.table.select(keep), encoded.records.select(rows), encoded.labels.select(rows))


if __name__ == "__main__":
    main()
