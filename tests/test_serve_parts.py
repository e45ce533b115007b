"""The serving parts without a server: TEI's `inputs` grammar and the limits (`requests`), the micro-batcher
on a fake predictor, answer formats and run names."""

import asyncio

import numpy as np
import pytest

from nlptransfer.errors import ConfigError
from nlptransfer.serving.batcher import MicroBatcher
from nlptransfer.serving.outputs import ModelPass, all_label_scores, regression_value
from nlptransfer.serving.requests import Limits, RequestError, parse_inputs, parse_predict
from nlptransfer.serving.server import named_runs
from nlptransfer.tasks import TaskSpec

LIMITS = Limits(max_texts=4, max_chars=20)


def test_inputs_follow_tei_grammar():
    assert parse_inputs("a text", LIMITS, pair_model=False) == (["a text"], False)
    assert parse_inputs(["a", "b"], LIMITS, pair_model=True) == ([("a", "b")], False)  # one pair
    assert parse_inputs([["a", "b"], ["c", "d"]], LIMITS, pair_model=True) == ([("a", "b"), ("c", "d")], True)
    assert parse_inputs([["a"], ["b"]], LIMITS, pair_model=False) == (["a", "b"], True)
    assert parse_inputs(["a", "b", "c"], LIMITS, pair_model=False) == (["a", "b", "c"], True)  # no pairs here


@pytest.mark.parametrize(
    "inputs, pair_model, status, words",
    [
        (None, False, 422, 'no "inputs"'),
        ({"text": "a"}, False, 422, "a string or a list"),
        ([], False, 422, "empty list"),
        (["a"] * 5, False, 413, "limit is 4"),
        ("x" * 21, False, 413, "21 characters"),
        ([["a", "b"]], False, 422, "single texts"),
        ("a", True, 422, "sentence pairs"),
        (["a", "b", "c"], True, 422, "one pair"),
        ([["a"], 3], False, 422, "[text] or [first, second]"),
        ([" "], False, 422, "is empty"),
    ],
)
def test_bad_inputs_name_the_problem(inputs, pair_model, status, words):
    with pytest.raises(RequestError, match=None) as caught:
        parse_inputs(inputs, LIMITS, pair_model)
    assert caught.value.status == status and words in caught.value.message


def test_request_fields():
    parsed = parse_predict({"inputs": "a", "tasks": ["x", "x"], "truncate": False}, LIMITS, False, ["x", "y"])
    assert parsed.tasks == ["x"] and parsed.truncate is False and parsed.raw_scores is False
    assert parse_predict({"inputs": "a", "task": "y"}, LIMITS, False, ["x", "y"]).tasks == ["y"]
    for body in ({"inputs": "a", "task": "z"}, {"inputs": "a", "truncation_direction": "Left"}):
        with pytest.raises(RequestError):
            parse_predict(body, LIMITS, False, ["x", "y"])


class FakePredictor:
    """Logits = the text's length, so answers can be checked; records each pass's size."""

    name = "fake"

    def __init__(self):
        self.passes: list[int] = []

    def logits(self, texts):
        self.passes.append(len(texts))
        return list(texts), None, {"t": np.array([[float(len(t))] for t in texts])}


def length_answer(out: ModelPass, row: int) -> float:
    return float(out.logits["t"][row][0])


def test_batcher_merges_requests_splits_big_ones_and_isolates_failures():
    predictor = FakePredictor()
    batcher = MicroBatcher(predictor, max_batch_size=4, max_wait_ms=200)

    def refuse() -> None:
        raise RequestError(413, "too long")

    async def main():
        small = [batcher.submit(["a" * n], length_answer) for n in (1, 2, 3)]
        failing = batcher.submit(["zz"], length_answer, check=refuse)
        results = await asyncio.gather(*small, failing, return_exceptions=True)
        big = await batcher.submit(["b" * n for n in range(1, 11)], length_answer)
        return results, big

    batcher.start()
    try:
        results, big = asyncio.run(main())
    finally:
        batcher.stop()
    assert results[:3] == [[1.0], [2.0], [3.0]] and isinstance(results[3], RequestError)
    assert predictor.passes == [3, 4, 4, 2]  # three requests in one pass; ten texts in passes of four
    assert big == [float(n) for n in range(1, 11)]
    assert not batcher.alive


def test_answer_formats():
    spec = TaskSpec(name="t", kind="classification", labels=["a", "b", "c"])
    out = ModelPass(["x"], None, {"t": np.array([[0.0, 2.0, 1.0]], dtype=np.float32)})
    scores = all_label_scores(spec, out, 0)
    assert [s["label"] for s in scores] == ["b", "c", "a"] and sum(s["score"] for s in scores) == pytest.approx(1)
    assert [s["score"] for s in all_label_scores(spec, out, 0, raw_scores=True)] == [2.0, 1.0, 0.0]
    value = ModelPass(["x"], None, {"r": np.array([[0.25]], dtype=np.float32)})
    assert regression_value(TaskSpec(name="r", kind="regression"), value, 0) == [{"label": "score", "score": 0.25}]


def test_run_names(tmp_path):
    assert named_runs(["a=runs/x", str(tmp_path)]) == {"a": "runs/x", tmp_path.name: str(tmp_path)}
    with pytest.raises(ConfigError, match="two runs are named"):
        named_runs(["runs/x", "other/x"])
