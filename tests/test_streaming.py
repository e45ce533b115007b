"""`--streaming`: the fine-tuning recipe trains from a file read row by row (nothing converted or cached). One
checking pass reports bad rows before training; the order is a seeded shuffle buffer that depends only on
(seed, epoch), so a killed run resumes exactly; a run without --max_steps or that needs the rows in hand stops."""

from collections import Counter

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from nlptransfer.data import encode_splits
from nlptransfer.errors import ConfigError, DataError
from nlptransfer.readers import read_file, stream_file
from nlptransfer.tasks import TaskSpec

from conftest import killed_at_batch, recipe_args, write_jsonl
from test_recipe import FAST, run_recipe

datasets = pytest.importorskip("datasets")
STREAM = ["--streaming", "true"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def test_streamed_features_are_the_rows_features_in_a_seeded_order(tiny_model, cls_files, monkeypatch):
    import nlptransfer.preprocessing as preprocessing

    monkeypatch.setattr(preprocessing, "STREAM_BATCH_ROWS", 50)  # several batches from the small file
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    whole = encode_splits({"train": read_file(cls_files["train"])}, TaskSpec(), tokenizer, 32)["train"]
    stream = stream_file(cls_files["train"])
    stream.seed = 7
    streamed = encode_splits({"train": stream}, TaskSpec(), tokenizer, 32)["train"]
    assert len(stream) == len(whole.features)  # the checking pass counted the rows

    def key(feature):
        return tuple(feature["input_ids"]), feature["labels"]

    first = [key(f) for f in streamed.features]
    assert Counter(first) == Counter(key(f) for f in whole.features)  # the same features, each once
    assert first == [key(f) for f in streamed.features]  # the same order again
    assert first != [key(f) for f in whole.features]  # shuffled
    streamed.features.set_epoch(1)
    assert [key(f) for f in streamed.features] != first  # another order for another epoch


def test_a_streaming_run_learns(tiny_model, cls_files, tmp_path):
    out = tmp_path / "stream"
    results = run_recipe(recipe_args(tiny_model, cls_files, out, *FAST, *STREAM, "--max_steps", "144"))
    assert results["train_steps"] == 144  # 6 passes over 24 batches
    assert results["test_accuracy"] >= 0.8 and results["eval_accuracy"] >= 0.8  # chance is 1/3
    assert not (tmp_path / "hf_cache" / "nlptransfer" / "inputs" / "x").exists()


def test_a_killed_streaming_run_resumes_exactly(tiny_model, cls_files, tmp_path):
    common = [*FAST, *STREAM, "--max_steps", "30", "--checkpointing_steps", "10", "--eval_strategy", "no"]
    run_recipe(recipe_args(tiny_model, cls_files, tmp_path / "full", *common))
    out = tmp_path / "killed"
    with killed_at_batch(27):  # in the second pass over the stream (24 batches each)
        run_recipe(recipe_args(tiny_model, cls_files, out, *common))
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_10", "step_20"]
    run_recipe(recipe_args(tiny_model, cls_files, out, *common, "--resume_from_checkpoint", "latest"))
    full, resumed = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_a_bad_row_stops_a_stream_before_training(tiny_model, cls_files, tmp_path):
    rows = [{"text": f"row {i}", "label": "a"} for i in range(30)]
    rows[21] = {"text": "row 21"}
    files = {**cls_files, "train": str(write_jsonl(tmp_path / "train.jsonl", rows))}
    with pytest.raises(DataError, match=r"train\.jsonl:22: field 'label' is empty or no|train\.jsonl:22: no field"):
        run_recipe(recipe_args(tiny_model, files, tmp_path / "out", *STREAM, "--max_steps", "5"))
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "extra, says",
    [
        ([], "a stream has no length, so no epoch count; set --max_steps"),
        (["--max_steps", "5", "--validation_split_percentage", "10"], "cannot carve a validation split"),
    ],
)
def test_a_stream_without_what_it_needs_stops(tiny_model, cls_files, tmp_path, extra, says):
    files = {split: path for split, path in cls_files.items() if split != "validation" or extra}
    with pytest.raises(ConfigError, match=says):
        run_recipe(recipe_args(tiny_model, files, tmp_path / "out", *STREAM, *extra))
