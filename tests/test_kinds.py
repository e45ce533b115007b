"""Task kinds as a registry: heads, output sizes and losses without branching on names; the
pair_classification and regression kinds from data checks to an end-to-end recipe run."""

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from nlptransfer.config import ConfigError, DataArguments, ModelArguments, TrainArguments, parse_args
from nlptransfer.data import encode_splits
from nlptransfer.evaluation import host_loss
from nlptransfer.metrics import average_ranks, regression_metrics
from nlptransfer.readers import DataError, read_file
from nlptransfer.tasks import TASK_KINDS, Encoded, TaskSpec

from conftest import FILLERS, TOPICS, recipe_args, write_jsonl
from test_recipe import run_recipe

EXPECTED = {  # kind: (head, has_label_set)
    "classification": ("sequence", True),
    "pair_classification": ("sequence", True),
    "multilabel": ("sequence", True),
    "regression": ("sequence", False),
    "ner": ("token", True),
}


@pytest.fixture
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def encode(tmp_path, tokenizer, kind, splits, max_length=32, **spec_kwargs):
    records = {name: read_file(str(write_jsonl(tmp_path / f"{name}.jsonl", rows))) for name, rows in splits.items()}
    spec = TaskSpec(kind=kind, **spec_kwargs)
    return spec, encode_splits(records, spec, tokenizer, max_length)


# ---- the registry interface ---------------------------------------------------------------------


def test_every_kind_declares_head_outputs_and_label_set():
    assert set(TASK_KINDS) == set(EXPECTED)
    for name, (head, has_label_set) in EXPECTED.items():
        kind = TASK_KINDS[name]
        assert kind.name == name and kind.head == head and kind.has_label_set is has_label_set
        spec = TaskSpec(kind=name, labels=["a", "b", "c"] if has_label_set else [])
        assert kind.num_outputs(spec) == (3 if has_label_set else 1)
        assert kind.model_config(spec)["num_labels"] == kind.num_outputs(spec)
    assert TASK_KINDS["regression"].model_config(TaskSpec(kind="regression"))["problem_type"] == "regression"


@pytest.mark.parametrize("name", ["classification", "pair_classification"])
def test_sequence_classification_loss_is_cross_entropy(name):
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, -100, 1, 2])
    expected = F.cross_entropy(logits, labels, ignore_index=-100)
    assert torch.allclose(TASK_KINDS[name].loss(logits, labels), expected)


def test_ner_loss_is_flattened_cross_entropy_ignoring_minus_100():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4)
    labels = torch.tensor([[-100, 1, 0, 3, -100, -100], [-100, 2, 2, 0, 1, -100]])
    expected = F.cross_entropy(logits.reshape(-1, 4), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(TASK_KINDS["ner"].loss(logits, labels), expected)


def test_regression_loss_is_mse_on_squeezed_logits():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 1), torch.tensor([0.5, 1.0, -2.0, 3.25, 0.0])
    assert torch.allclose(TASK_KINDS["regression"].loss(logits, labels), F.mse_loss(logits.squeeze(-1), labels))
    # integer targets (e.g. from a collated int column) are compared as floats
    assert torch.allclose(
        TASK_KINDS["regression"].loss(logits, torch.tensor([1, 0, 2, 3, 1])),
        F.mse_loss(logits.squeeze(-1), torch.tensor([1.0, 0.0, 2.0, 3.0, 1.0])),
    )


@pytest.mark.parametrize("name", ["classification", "regression", "ner"])
def test_kind_loss_matches_the_transformers_head_loss(name, tiny_model, tokenizer):
    """What the recipe trains on (the model's own loss) is what evaluation and multi-task use."""
    from nlptransfer.modeling import load_model_for_task

    labels = [] if name == "regression" else ["a", "b", "c"]
    spec = TaskSpec(kind=name, labels=labels)
    torch.manual_seed(0)
    model = load_model_for_task(ModelArguments(model_name_or_path=tiny_model), spec).eval()
    batch = tokenizer(["the goal team", "a new chip today"], padding=True, return_tensors="pt")
    if name == "ner":
        targets = torch.tensor([[-100, 0, 1, 2, -100, -100], [-100, 2, 1, 0, 0, -100]])[
            :, : batch["input_ids"].shape[1]
        ]
    elif name == "regression":
        targets = torch.tensor([0.5, -1.5])
    else:
        targets = torch.tensor([2, 0])
    with torch.no_grad():
        outputs = model(**batch, labels=targets)
    assert outputs.logits.shape[-1] == TASK_KINDS[name].num_outputs(spec)
    assert torch.allclose(TASK_KINDS[name].loss(outputs.logits, targets), outputs.loss, atol=1e-6)


def test_host_loss_uses_the_kind_loss():
    rows = [np.array([0.5], dtype=np.float32), np.array([2.0], dtype=np.float32), np.array([-1.0], dtype=np.float32)]
    targets = [1.0, 2.0, 0.0]
    encoded = Encoded.from_features([{"input_ids": [1], "labels": y} for y in targets])
    assert host_loss(encoded, rows, TaskSpec(kind="regression")) == pytest.approx((0.25 + 0 + 1) / 3)

    # token logits of different widths (padded across processes) against labels of each feature's length
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32)]
    labels = [[-100, 1, 2, -100], [-100, 0, 0, 1, 2, -100]]
    encoded = Encoded.from_features([{"input_ids": [0] * len(y), "labels": y} for y in labels])
    flat_logits = torch.cat([torch.from_numpy(row[: len(y)]) for row, y in zip(logits, labels)])
    flat_labels = torch.tensor([label for y in labels for label in y])
    expected = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
    assert host_loss(encoded, logits, TaskSpec(kind="ner", labels=["O", "B", "I"])) == pytest.approx(float(expected))


def test_task_type_help_lists_every_kind():
    help_text = DataArguments.__dataclass_fields__["task_type"].metadata["help"]
    assert all(name in help_text for name in TASK_KINDS)


# ---- pair_classification ------------------------------------------------------------------------


def test_pair_classification_without_pair_column_names_the_flag(tmp_path, tokenizer):
    rows = [{"text": "goal", "label": "a"}]
    with pytest.raises(
        ConfigError, match="'pair_classification' needs a second text column: set --text_pair_column_name"
    ):
        encode(tmp_path, tokenizer, "pair_classification", {"train": rows})
    with pytest.raises(ConfigError, match="--text_pair_column_name"):
        parse_args(
            ModelArguments,
            DataArguments,
            TrainArguments,
            args=["--train_file", "a", "--task_type", "pair_classification"],
        )


def test_pair_classification_encodes_both_texts(tmp_path, tokenizer):
    rows = [{"text_a": "goal team", "text_b": "chip", "label": "no"}]
    spec, encoded = encode(
        tmp_path, tokenizer, "pair_classification", {"train": rows}, text_column="text_a", text_pair_column="text_b"
    )
    feature = encoded["train"].features[0]
    assert spec.labels == ["no"] and feature["labels"] == 0
    assert tokenizer.decode(feature["input_ids"]) == "[CLS] goal team [SEP] chip [SEP]"
    with pytest.raises(DataError, match=r"train\.jsonl:1: no field 'text_b'.*set --text_pair_column_name"):
        encode(
            tmp_path,
            tokenizer,
            "pair_classification",
            {"train": [{"text_a": "goal", "label": "no"}]},
            text_column="text_a",
            text_pair_column="text_b",
        )


# ---- regression: data checks and metrics --------------------------------------------------------


def test_regression_keeps_numbers_and_no_label_set(tmp_path, tokenizer):
    splits = {
        "train": [{"text": "goal", "label": 1}, {"text": "chip", "label": 0.25}],
        "test": [{"text": "cake", "label": -3.5}],  # a value never seen in train is fine
    }
    spec, encoded = encode(tmp_path, tokenizer, "regression", splits)
    assert spec.labels == []
    assert [f["labels"] for f in encoded["train"].features] == [1.0, 0.25]
    assert encoded["test"].features[0]["labels"] == -3.5
    assert TASK_KINDS["regression"].model_config(spec)["num_labels"] == 1


def test_regression_targets_collate_as_float32(tmp_path, tokenizer):
    from nlptransfer.batching import PaddingCollator

    rows = [{"text": "goal team", "label": 2}, {"text": "chip", "label": 0.5}]  # an int target too
    _, encoded = encode(tmp_path, tokenizer, "regression", {"train": rows})
    batch = PaddingCollator(tokenizer.pad_token_id)(encoded["train"].features)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [2.0, 0.5]


def test_regression_reads_numbers_from_csv_and_pairs(tmp_path, tokenizer):
    path = tmp_path / "train.csv"
    path.write_text("s1,s2,score\ngoal team,a match,4.5\nchip,soup,0\n")
    spec = TaskSpec(kind="regression", text_column="s1", text_pair_column="s2", label_column="score")
    encoded = encode_splits({"train": read_file(str(path))}, spec, tokenizer, 32)
    assert [f["labels"] for f in encoded["train"].features] == [4.5, 0.0]
    assert 1 in encoded["train"].features[0]["token_type_ids"]


@pytest.mark.parametrize(
    "value, message",
    [
        ("high", r"holds 'high'; expected a number"),
        (True, r"holds True; expected a number"),
        (None, r"is missing or null; expected a number"),
        ([1.0], r"holds \[1\.0\]; expected a number"),
        ("", r"holds ''; expected a number"),
        (float("nan"), r"holds nan; expected a finite number"),
        (float("inf"), r"holds inf; expected a finite number"),
        ("-inf", r"holds '-inf'; expected a finite number"),
    ],
)
def test_regression_rejects_non_numbers_with_file_line_and_field(tmp_path, tokenizer, value, message):
    rows = [{"text": "goal", "score": 1.0}, {"text": "chip", "score": value}]
    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'score' " + message):
        encode(tmp_path, tokenizer, "regression", {"train": rows}, label_column="score")


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks([3, 1, 3, 3, 2]).tolist() == [4.0, 1.0, 4.0, 4.0, 2.0]


def test_regression_metrics_by_hand():
    perfect = regression_metrics([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["spearman"] == pytest.approx(1.0)
    assert perfect["mse"] == pytest.approx((1 + 4 + 9 + 16) / 4)
    reversed_ = regression_metrics([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0])
    assert reversed_["pearson"] == pytest.approx(-1.0) and reversed_["spearman"] == pytest.approx(-1.0)
    # monotone but not linear: Spearman 1, Pearson below 1
    curved = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 10.0, 100.0, 1000.0])
    assert curved["spearman"] == pytest.approx(1.0) and curved["pearson"] < 0.9
    # ties: ranks [1, 2.5, 2.5, 4] and [1.5, 1.5, 3.5, 3.5] -> correlation 3 / sqrt(4.5 * 4) = 1/sqrt(2)
    tied = regression_metrics([1.0, 2.0, 2.0, 3.0], [1.0, 1.0, 2.0, 2.0])
    assert tied["spearman"] == pytest.approx(1 / math.sqrt(2))
    # a constant prediction has no defined correlation: scored 0 so model selection still compares
    assert regression_metrics([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])["pearson"] == 0.0
    assert regression_metrics([], []) == {}


def test_spearman_agrees_with_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, size=60).astype(float)  # many ties
    y_pred = np.round(y_true + rng.normal(size=60), 1)
    scores = regression_metrics(y_true, y_pred)
    assert scores["spearman"] == pytest.approx(stats.spearmanr(y_true, y_pred)[0])
    assert scores["pearson"] == pytest.approx(stats.pearsonr(y_true, y_pred)[0])


# ---- end to end: the recipe with each new kind ---------------------------------------------------

# one thread: on a busy 2-core machine two threads contend and a 50-step run takes 10 s instead of 0.3 s
FAST = [
    "--learning_rate",
    "5e-3",
    "--per_device_train_batch_size",
    "16",
    "--max_seq_length",
    "16",
    "--cpu_threads",
    "1",
]


@pytest.fixture
def batch_losses(monkeypatch):
    """The training loss of every batch, in order."""
    from nlptransfer.training import Trainer

    losses, original = [], Trainer.compute_loss

    def recording(self, batch):
        loss = original(self, batch)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(Trainer, "compute_loss", recording)
    return losses


def regression_rows(n: int, seed: int) -> list[dict]:
    """Target 1.0 when a sport word is in the text, else 0.0 (plus a little noise)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(sorted(TOPICS))
        words = [*rng.sample(FILLERS, 3), rng.choice(TOPICS[topic])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": (1.0 if topic == "sport" else 0.0) + rng.uniform(-0.1, 0.1)})
    return rows


def pair_rows(n: int, seed: int) -> list[dict]:
    """The label is the topic of the second text; the first holds another topic's word, so only a
    model that tells the two segments apart gets it right."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        second = rng.choice(sorted(TOPICS))
        first = rng.choice(sorted(set(TOPICS) - {second}))
        texts = [" ".join([rng.choice(FILLERS), rng.choice(TOPICS[topic])]) for topic in (first, second)]
        rows.append({"text_a": texts[0], "text_b": texts[1], "label": second})
    return rows


def test_recipe_regression_end_to_end(tiny_model, tmp_path, batch_losses):
    from transformers import AutoModelForSequenceClassification

    files = {
        split: str(write_jsonl(tmp_path / f"{split}.jsonl", regression_rows(n, seed)))
        for split, n, seed in (("train", 192, 1), ("validation", 32, 2), ("test", 32, 3))
    }
    out = tmp_path / "reg"
    args = ["--task_type", "regression", "--label_column_name", "score", *FAST, "--num_train_epochs", "4"]
    results = run_recipe(recipe_args(tiny_model, files, out, *args))
    assert np.mean(batch_losses[-5:]) < np.mean(batch_losses[:5]) / 4
    for key in ("eval_pearson", "eval_spearman", "eval_mse", "test_pearson", "test_spearman", "test_mse"):
        assert key in results
    assert results["test_pearson"] > 0.8
    assert results["test_loss"] == pytest.approx(results["test_mse"], rel=1e-4)  # the eval loss is MSE
    config = AutoModelForSequenceClassification.from_pretrained(out).config
    assert config.num_labels == 1 and config.problem_type == "regression"
    assert json.loads((out / "nlptransfer_task.json").read_text())["labels"] == []


def test_recipe_pair_classification_end_to_end(tiny_model, tmp_path, batch_losses):
    files = {
        split: str(write_jsonl(tmp_path / f"{split}.jsonl", pair_rows(n, seed)))
        for split, n, seed in (("train", 192, 4), ("validation", 48, 5))
    }
    out = tmp_path / "pair"
    args = ["--task_type", "pair_classification", "--text_column_name", "text_a", "--text_pair_column_name", "text_b"]
    results = run_recipe(recipe_args(tiny_model, files, out, *args, *FAST, "--num_train_epochs", "8"))
    assert np.mean(batch_losses[-5:]) < np.mean(batch_losses[:5]) / 2
    assert results["eval_accuracy"] >= 0.8 and "eval_f1" in results  # chance is 1/3
    saved = json.loads((out / "nlptransfer_task.json").read_text())
    assert saved["task_type"] == "pair_classification" and saved["labels"] == ["food", "sport", "tech"]


def test_attention_kernel_is_chosen_by_flag_and_gives_the_same_outputs(tiny_model, tokenizer):
    from nlptransfer.modeling import load_model_for_task

    spec = TaskSpec(kind="classification", labels=["a", "b", "c"])
    batch = tokenizer(["the goal team", "a new chip today in paris"], padding=True, return_tensors="pt")
    logits = {}
    for kernel in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = load_model_for_task(ModelArguments(model_name_or_path=tiny_model, attn_implementation=kernel), spec)
        assert model.config._attn_implementation == kernel
        with torch.no_grad():
            logits[kernel] = model.eval()(**batch).logits
    assert torch.allclose(logits["sdpa"], logits["eager"], atol=1e-5)  # same math, another kernel
