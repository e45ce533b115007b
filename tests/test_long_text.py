"""`--long_text chunk`: texts longer than the window train as overlapping windows, scored and predicted per text
from their windows' pooled logits."""

import json
import random

import numpy as np
import pytest
from transformers import AutoTokenizer

from nlptransfer.config import DataArguments
from nlptransfer.data import encode_splits
from nlptransfer.errors import ConfigError
from nlptransfer.inference import Predictor, load_predictor
from nlptransfer.readers import read_file
from nlptransfer.tasks import TASK_KINDS, TaskSpec

from conftest import FILLERS, TOPICS, recipe_args, write_jsonl
from test_recipe import FAST, run_recipe


def long_rows(n: int, seed: int, fillers: int = 18) -> list[dict]:
    """The topic word comes after `fillers` filler words: past a 16-token window (two windows of 14)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(TOPICS))
        rows.append({"text": " ".join([*rng.choices(FILLERS, k=fillers), rng.choice(TOPICS[label])]), "label": label})
    return rows


def test_long_texts_become_overlapping_windows_with_the_texts_label(tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"text": "goal " + " ".join(["the"] * 30), "label": "sport"}, {"text": "code today", "label": "tech"}]
    records = {"train": read_file(str(write_jsonl(tmp_path / "train.jsonl", rows)))}
    spec = TaskSpec(labels=["sport", "tech"], long_text="chunk", doc_stride=4, max_seq_length=16)
    encoded = encode_splits(records, spec, tokenizer, 16)["train"]
    windows = [f["input_ids"] for f in encoded.features]
    # 31 words: windows of 14 tokens (16 minus [CLS], [SEP]) stepping by 10 -> 3 windows, then the short text
    assert encoded.row_of_feature.tolist() == [0, 0, 0, 1]
    assert all(len(ids) <= 16 for ids in windows) and len(windows[0]) == 16
    assert windows[0][1:-1][-4:] == windows[1][1:-1][:4]  # doc_stride tokens shared by neighbours
    assert [f["labels"] for f in encoded.features] == [0, 0, 0, 1]
    truncated = encode_splits(records, TaskSpec(labels=["sport", "tech"]), tokenizer, 16)["train"]
    assert truncated.row_of_feature.tolist() == [0, 1]


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_a_chunked_text_is_scored_once_from_its_pooled_windows(tiny_model, tmp_path, pooling):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"text": " ".join(["the"] * 30), "label": "sport"}, {"text": "code", "label": "tech"}]
    records = {"test": read_file(str(write_jsonl(tmp_path / "t.jsonl", rows)))}
    spec = TaskSpec(labels=["sport", "tech"], long_text="chunk", doc_stride=4, chunk_pooling=pooling)
    encoded = encode_splits(records, spec, tokenizer, 16)["test"]
    # text 0: windows favour tech, tech, then sport strongly: the mean says sport, the max too (3 > 1)
    logits = [np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([3.0, 0.0]), np.array([0.0, 2.0])]
    scores = TASK_KINDS["classification"].score(encoded, logits, spec)
    assert scores["accuracy"] == 1.0  # two texts, both right
    spec.chunk_pooling = "mean"
    logits[2] = np.array([1.5, 0.0])  # mean (0.5, 0.67): tech; max (1.5, 1.0): sport
    expected = 0.5 if pooling == "mean" else 1.0
    spec.chunk_pooling = pooling
    assert TASK_KINDS["classification"].score(encoded, logits, spec)["accuracy"] == expected


def test_predictor_reads_a_long_text_in_windows_and_pools_them(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    goal = tokenizer.convert_tokens_to_ids("goal")
    seen = []

    def backend(inputs):  # a window scores sport by whether it holds "goal"
        seen.append(inputs["input_ids"].shape)
        has_goal = (inputs["input_ids"] == goal).any(1).astype(np.float32)
        return {"classification": np.stack([has_goal * 4, 1 - has_goal], 1)}

    spec = TaskSpec(
        name="classification", labels=["sport", "tech"], long_text="chunk", doc_stride=2, chunk_pooling="mean"
    )
    predictor = Predictor(tokenizer, [spec], backend, max_length=8)
    texts = [" ".join(["the"] * 20 + ["goal"]), "the", "goal"]
    predictions = predictor.predict(texts)
    assert seen[0][0] > 3  # windows, not texts
    # text 0: 4 windows, the last holds goal: mean logits (1.0, 0.75) -> sport
    assert [p["classification"]["label"] for p in predictions] == ["sport", "tech", "sport"]
    assert len(predictor.label_scores(texts)) == 3


def test_bad_long_text_settings_are_refused():
    base = {"train_file": "x.jsonl"}
    with pytest.raises(ConfigError, match="--long_text 'split': choose one of truncate, chunk"):
        DataArguments(**base, long_text="split")
    with pytest.raises(ConfigError, match="--doc_stride 64: the overlap of two windows"):
        DataArguments(**base, long_text="chunk", doc_stride=64, max_seq_length=128)
    with pytest.raises(ConfigError, match="--chunk_pooling 'sum'"):
        DataArguments(**base, long_text="chunk", chunk_pooling="sum")
    with pytest.raises(ConfigError, match="NER splits long sentences by itself"):
        DataArguments(**base, task_type="ner", long_text="chunk")


def test_chunking_finds_the_label_past_the_window_where_truncation_cannot(tiny_model, tmp_path):
    files = {
        split: str(write_jsonl(tmp_path / f"{split}.jsonl", long_rows(n, seed)))
        for split, n, seed in (("train", 240, 1), ("validation", 48, 2), ("test", 48, 3))
    }
    short = ["--max_seq_length", "16", "--num_train_epochs", "6", *FAST]
    cut = run_recipe(recipe_args(tiny_model, files, tmp_path / "cut", *short))
    out = tmp_path / "chunk"
    chunked = run_recipe(recipe_args(tiny_model, files, out, *short, "--long_text", "chunk", "--doc_stride", "4"))
    assert chunked["test_accuracy"] >= 0.8, chunked
    assert cut["test_accuracy"] <= 0.6, cut  # the topic word is never seen: about chance (1/3)
    assert chunked["test_samples"] == 48  # scored per text, not per window
    info = json.loads((out / "nlptransfer_task.json").read_text())
    assert (info["long_text"], info["doc_stride"], info["max_seq_length"]) == ("chunk", 4, 16)
    predictor = load_predictor(out)  # the run's window and chunking, from its folder
    assert predictor.max_length == 16 and predictor.chunking is not None
    rows = long_rows(24, 9)
    predicted = [p["classification"]["label"] for p in predictor.predict([r["text"] for r in rows])]
    assert np.mean([p == r["label"] for p, r in zip(predicted, rows)]) >= 0.8
