"""`--class_weights`: weighted cross-entropy for classes, BCE `pos_weight` per label, read from train or a file."""

import json
from types import SimpleNamespace

import pytest
import torch

from nlptransfer.data import label_counts, read_class_weights
from nlptransfer.errors import ConfigError, DataError
from nlptransfer.lifecycle import weighted_task_loss
from nlptransfer.tasks import TASK_KINDS, TaskSpec

from conftest import make_classification_rows, recipe_args, write_jsonl
from test_recipe import FAST, run_recipe


def test_weighted_cross_entropy_is_the_weighted_mean_computed_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2, 1, -100])  # the last position is unlabelled
    weights = [0.5, 2.0, 4.0]
    nll = -logits.log_softmax(-1)
    by_hand = (0.5 * nll[0, 0] + 4.0 * nll[1, 2] + 2.0 * nll[2, 1]) / (0.5 + 4.0 + 2.0)
    kind = TASK_KINDS["classification"]
    assert kind.loss(logits, labels, weights).item() == pytest.approx(by_hand.item(), rel=1e-6)
    unweighted = (nll[0, 0] + nll[1, 2] + nll[2, 1]) / 3
    assert kind.loss(logits, labels).item() == pytest.approx(unweighted.item(), rel=1e-6)


def test_pos_weight_scales_each_labels_positive_term_by_hand():
    logits = torch.tensor([[1.0, -2.0], [-0.5, 0.3]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    pos_weight = torch.tensor([3.0, 0.5])
    p = logits.sigmoid()
    by_hand = -(pos_weight * labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    loss = TASK_KINDS["multilabel"].loss(logits, labels, pos_weight.tolist())
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_balanced_weights_from_the_training_labels():
    from datasets import Dataset

    spec = TaskSpec(labels=["neg", "pos"])
    # 9 neg, 1 pos: n / (classes x count)
    counts = label_counts(Dataset.from_dict({"label": ["neg"] * 9 + ["pos"]}), spec)
    assert counts == [9, 1]
    assert TASK_KINDS["classification"].balanced_weights(counts, 10, spec) == pytest.approx([10 / 18, 5.0])
    spec = TaskSpec(kind="multilabel", labels=["a", "b", "c"])
    kind = TASK_KINDS["multilabel"]
    rows = [kind.row_label(names, "f:1", "labels") for names in (["a"], ["a", "b"], [], ["a", "a"])]
    counts = label_counts(Dataset.from_dict({"label": rows}), spec)
    assert counts == [3, 1, 0]  # a: 3 of 4 rows (named twice in one: counted once), b: 1 of 4, c: none
    assert kind.balanced_weights(counts, 4, spec) == pytest.approx([1 / 3, 3.0, 1.0])
    with pytest.raises(ConfigError, match="regression task has no classes"):
        TASK_KINDS["regression"].balanced_weights([1], 1, TaskSpec(kind="regression"))


def test_multilabel_weighs_positives_by_default_and_none_turns_it_off(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from nlptransfer.data import encode_splits
    from nlptransfer.readers import read_file

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"text": "goal", "labels": ["a"]}, {"text": "code", "labels": ["a", "b"]}, {"text": "soup", "labels": []}]
    records = {"train": read_file(str(write_jsonl(tmp_path / "train.jsonl", rows)))}
    for given, expected in ((None, [0.5, 2.0]), ("none", None), ("balanced", [0.5, 2.0])):
        spec = TaskSpec(kind="multilabel", label_column="labels")
        encode_splits(records, spec, tokenizer, 16, class_weights=given)
        assert spec.class_weights == (pytest.approx(expected) if expected else None), given
    spec = TaskSpec(labels=[])  # classification: unweighted unless asked
    encode_splits(
        {"train": read_file(str(write_jsonl(tmp_path / "c.jsonl", make_classification_rows(6, 1))))},
        spec,
        tokenizer,
        16,
    )
    assert spec.class_weights is None


def test_single_task_loss_uses_the_weights_only_when_given():
    spec = TaskSpec(labels=["a", "b"])
    assert weighted_task_loss(spec) is None  # the model's own loss
    spec.class_weights = [1.0, 3.0]
    outputs = SimpleNamespace(logits=torch.tensor([[0.2, 0.1], [0.0, 1.0]]))
    batch = {"labels": torch.tensor([1, 0])}
    expected = TASK_KINDS["classification"].loss(outputs.logits, batch["labels"], [1.0, 3.0])
    assert weighted_task_loss(spec)(outputs, batch).item() == pytest.approx(expected.item())


def test_weights_file_by_label_or_in_order_and_bad_files_name_the_problem(tmp_path):
    spec = TaskSpec(labels=["food", "sport", "tech"])
    by_name = tmp_path / "w.json"
    by_name.write_text(json.dumps({"tech": 2.5}))
    assert read_class_weights(str(by_name), spec) == [1.0, 1.0, 2.5]
    in_order = tmp_path / "l.json"
    in_order.write_text("[1, 2, 3]")
    assert read_class_weights(str(in_order), spec) == [1.0, 2.0, 3.0]
    bad = tmp_path / "bad.json"
    for content, message in (
        ('{"opera": 2}', r"bad.json: label 'opera' is not one of the task's labels \(food, sport, tech\)"),
        ('{"food": -1}', r"bad.json: field 'food' holds -1; expected a positive number"),
        ("[1, 2]", r"bad.json: 2 weights for 3 labels"),
        ('{"food": 1,', r"bad.json:1: not valid JSON"),
    ):
        bad.write_text(content)
        with pytest.raises(DataError, match=message):
            read_class_weights(str(bad), spec)
    with pytest.raises(DataError, match="no such file; expected `balanced` or a JSON file"):
        read_class_weights(str(tmp_path / "missing.json"), spec)


def test_recipe_trains_with_balanced_weights_on_an_imbalanced_task(tiny_model, tmp_path):
    """Sport is 1 row in 12 of train: the balanced weights are saved in the run's config and the run learns."""
    rows = [r for r in make_classification_rows(600, 1) if r["label"] != "sport"]
    sport = [r for r in make_classification_rows(600, 4) if r["label"] == "sport"][: len(rows) // 11]
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", rows + sport)),
        "validation": str(write_jsonl(tmp_path / "validation.jsonl", make_classification_rows(48, 2))),
    }
    out = tmp_path / "out"
    args = recipe_args(tiny_model, files, out, *FAST, "--num_train_epochs", "3", "--class_weights", "balanced")
    results = run_recipe(args)
    assert results["eval_accuracy"] >= 0.8, results  # chance 1/3; sport is a third of validation
    assert "class_weights: balanced" in (out / "run_config.yaml").read_text()
