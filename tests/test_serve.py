"""`nlptransfer serve` as a real process on loopback, spoken to with httpx: every run kind answers as the
run's `Predictor` does, bad requests get 4xx without hurting the server, concurrent requests share model
passes, and SIGTERM/SIGINT let an accepted request finish before the process exits 0.

One server process (all four tiny runs) serves the module; the shutdown tests start their own."""

import asyncio
import json
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from nlptransfer.errors import ConfigError
from nlptransfer.inference import load_predictor
from nlptransfer.serving.precision import load_served_predictor

from conftest import make_classification_rows, make_ner_rows

CLI = [sys.executable, "-m", "nlptransfer.cli", "serve"]


class ServerProcess:
    """`nlptransfer serve ARGS --port 0` in a subprocess; `url` once its `listening` line is printed."""

    def __init__(self, *args: str, timeout: float = 120):
        command = [*CLI, *args, "--port", "0", "--log_level", "warning"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the server did not start:\n" + "".join(self.output))
            if "(listening)" in line:
                self.url = line.split(" on ", 1)[1].split()[0]
                return

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


@pytest.fixture(scope="module")
def server(trained_runs):
    runs = [f"{name}={trained_runs[kind]}" for name, kind in SERVED.items()]
    limits = ["--max_texts_per_request", "16", "--max_chars_per_text", "300", "--max_body_bytes", "20000"]
    exact = ["--precision", "fp32"]  # answers compared with the float32 predictors' to 1e-4
    proc = ServerProcess(*runs, *limits, *exact, "--max_wait_ms", "20", "--max_batch_size", "16")
    with httpx.Client(base_url=proc.url, timeout=60) as client:
        yield client
    assert proc.stop() == 0, "".join(proc.output)


SERVED = {"cls": "classification", "ner": "ner", "lora": "lora", "mtl": "multitask"}
TEXTS = [row["text"] for row in make_classification_rows(6, seed=21)]
SENTENCES = [" ".join(row["tokens"]) for row in make_ner_rows(4, seed=22)]


@pytest.fixture(scope="module")
def predictors(trained_runs):
    return {name: load_predictor(trained_runs[kind]) for name, kind in SERVED.items()}


def close(got, want) -> bool:
    """JSON `got` equals `want`, floats to 1e-4 (the server's softmax is float64, the predictor's float32)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(close(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(close, got, want))
    if isinstance(want, float):
        return abs(got - want) < 1e-4
    return got == want


def test_predict_speaks_tei_for_the_first_model(server, predictors):
    expected = predictors["cls"].label_scores(TEXTS)
    one = server.post("/predict", json={"inputs": TEXTS[0]})
    assert one.status_code == 200 and close(one.json(), expected[0])
    assert [x["score"] for x in one.json()] == sorted((x["score"] for x in one.json()), reverse=True)
    batch = server.post("/predict", json={"inputs": [[t] for t in TEXTS]}).json()  # TEI's batch
    assert all(close(got, want) for got, want in zip(batch, expected)) and len(batch) == len(TEXTS)
    flat = server.post("/models/cls/predict", json={"inputs": TEXTS[:2]}).json()  # single-text model: a batch
    assert len(flat) == 2 and close(flat[1], expected[1])
    raw = server.post("/predict", json={"inputs": TEXTS[0], "raw_scores": True}).json()
    logits = predictors["cls"].logits(TEXTS[:1])[2]["classification"][0]
    assert [x["score"] for x in raw] == pytest.approx(sorted(logits.tolist(), reverse=True), abs=1e-4)


def test_ner_lora_and_multitask_runs_answer_as_their_predictors(server, predictors):
    spans = server.post("/models/ner/predict", json={"inputs": [[s] for s in SENTENCES]}).json()
    assert close(spans, [p["ner"] for p in predictors["ner"].predict(SENTENCES)])
    assert any(spans) and {"entity", "word", "start", "end", "score"} <= set(next(s for s in spans if s)[0])
    lora = server.post("/models/lora/predict", json={"inputs": TEXTS[1]}).json()
    assert close(lora, predictors["lora"].label_scores(TEXTS[1:2])[0])
    every = server.post("/models/mtl/predict/tasks", json={"inputs": TEXTS[:3]}).json()
    assert close(every, predictors["mtl"].predict(TEXTS[:3]))
    one = server.post("/predict/tasks", json={"inputs": TEXTS[0], "model": "mtl", "tasks": ["people"]}).json()
    assert list(one) == ["people"]
    topic = server.post("/models/mtl/predict", json={"inputs": TEXTS[0], "task": "topic"}).json()
    assert topic[0]["label"] == every[0]["topic"]["label"]


def test_bad_requests_get_4xx_and_the_server_keeps_answering(server, predictors):
    bad = [
        ("/predict", b"{not json", 400),
        ("/predict", b"[1, 2]", 422),
        ("/predict", b'{"text": "no inputs field"}', 422),
        ("/predict", b'{"inputs": 42}', 422),
        ("/predict", b'{"inputs": []}', 422),
        ("/predict", b'{"inputs": [["a", "b", "c"]]}', 422),
        ("/predict", b'{"inputs": ["ok", 7]}', 422),
        ("/predict", b'{"inputs": "   "}', 422),
        ("/predict", b'{"inputs": "x", "raw_scores": "yes"}', 422),
        ("/predict/tasks", b'{"inputs": "x", "model": "mtl", "tasks": ["nope"]}', 422),
        ("/predict/tasks", b'{"inputs": "x", "model": "mtl", "tasks": []}', 422),
        ("/models/cls/predict", b'{"inputs": "x", "model": "ner"}', 422),
        ("/models/nope/predict", b'{"inputs": "x"}', 404),
        ("/predict", json.dumps({"inputs": ["x"] * 17}).encode(), 413),  # texts per request
        ("/predict", json.dumps({"inputs": "word " * 100}).encode(), 413),  # characters per text
        ("/predict", b'{"inputs": "' + b"a" * 30000 + b'"}', 413),  # body size
        ("/predict", json.dumps({"inputs": " ".join(["x"] * 140), "truncate": False}).encode(), 413),
        ("/nowhere", b"{}", 404),
    ]
    for path, body, status in bad:
        response = server.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, (path, body[:60], response.text)
        assert response.json()["error"] and "\n" not in response.json()["error"]
    assert server.get("/predict").status_code == 405
    good = server.post("/predict", json={"inputs": TEXTS[2]})
    assert good.status_code == 200 and close(good.json(), predictors["cls"].label_scores(TEXTS[2:3])[0])
    assert server.get("/health").json()["status"] == "ok"


def test_concurrent_requests_share_model_passes(server, predictors):
    def passes() -> float:
        text = server.get("/metrics").text
        line = next(x for x in text.splitlines() if x.startswith('nlptransfer_batch_size_count{model="cls"}'))
        return float(line.split()[-1])

    async def burst() -> list:
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=60) as client:
            requests = [client.post("/models/cls/predict", json={"inputs": text}) for text in TEXTS * 4]
            return await asyncio.gather(*requests)

    before = passes()
    responses = asyncio.run(burst())
    expected = predictors["cls"].label_scores(TEXTS)
    assert all(r.status_code == 200 for r in responses)
    assert all(close(r.json(), expected[i % len(TEXTS)]) for i, r in enumerate(responses))
    assert passes() - before < len(responses)  # some passes answered several requests


def test_info_health_and_metrics(server):
    info = server.get("/info").json()
    assert [m["name"] for m in info["models"]] == list(SERVED) and info["default_model"] == "cls"
    kinds = {m["name"]: (m["kind"], [t["name"] for t in m["tasks"]]) for m in info["models"]}
    assert kinds["mtl"] == ("multitask", ["topic", "people"]) and kinds["lora"][0] == "adapter"
    assert info["limits"]["max_texts_per_request"] == 16 and info["batching"]["max_wait_ms"] == 20
    assert sorted(info["models"][0]["model_type"]["classifier"]["label2id"]) == ["food", "sport", "tech"]
    assert server.get("/models/ner/info").json()["tasks"][0]["kind"] == "ner"
    # its own requests: the counters must not depend on which tests ran before on this server
    assert server.post("/predict", json={"inputs": TEXTS[0]}).status_code == 200
    assert server.post("/models/nope/predict", json={"inputs": "x"}).status_code == 404
    metrics = server.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'nlptransfer_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'route="/models/{name}/predict",status="404"' in text  # templates, never raw paths
    assert "nlptransfer_request_duration_seconds_bucket" in text and "nlptransfer_batch_size_bucket" in text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_answers_accepted_requests_then_exits_0(trained_runs, sig):
    proc = ServerProcess(str(trained_runs["classification"]), "--max_wait_ms", "1500")
    result: dict = {}

    def slow_request() -> None:  # waits 1.5 s for company before its pass runs
        result["response"] = httpx.post(f"{proc.url}/predict", json={"inputs": [[t] for t in TEXTS]}, timeout=60)

    client = threading.Thread(target=slow_request)
    client.start()
    deadline = time.monotonic() + 30
    while "nlptransfer_requests_in_flight 2.0" not in httpx.get(f"{proc.url}/metrics").text:
        assert time.monotonic() < deadline, "the slow request never arrived"  # (the other: this /metrics)
        time.sleep(0.05)
    assert proc.stop(sig) == 0, "".join(proc.output)
    client.join(30)
    response = result["response"]
    assert response.status_code == 200 and len(response.json()) == len(TEXTS)
    assert all(len(scores) == 3 for scores in response.json())
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{proc.url}/health")


def test_bf16_weights_give_the_float32_labels(trained_runs, predictors):
    bf16 = load_served_predictor(str(trained_runs["classification"]), "torch", "cpu", 128, "bf16")
    assert (
        bf16.predict(TEXTS)[0]["classification"]["score"]
        != predictors["cls"].predict(TEXTS)[0]["classification"]["score"]
    )
    labels = [[x["label"] for x in scores] for scores in bf16.label_scores(TEXTS)]
    assert labels == [[x["label"] for x in scores] for scores in predictors["cls"].label_scores(TEXTS)]
    with pytest.raises(ConfigError, match="needs --backend torch"):
        load_served_predictor(str(trained_runs["classification"]), "onnx", "cpu", 128, "bf16")


def test_bad_command_lines_are_one_line_errors(tmp_path, capsys):
    from nlptransfer.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert main(["serve", str(tmp_path), "--max_batch_size", "0"]) == 2
    assert main(["serve", str(tmp_path), "--precision", "fp8"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "--max_batch_size must be at least 1" in errors[1] and "--precision 'fp8' is not known" in errors[2]
