"""The multi-label task kind: labels as lists or comma-separated names, BCE per label, metrics, decoding."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nlptransfer.errors import DataError
from nlptransfer.metrics import multilabel_metrics
from nlptransfer.tasks import TASK_KINDS, TaskSpec, tune_thresholds

from conftest import TOPICS, make_classification_rows, recipe_args, write_jsonl
from test_recipe import FAST, run_recipe

KIND = TASK_KINDS["multilabel"]


def test_labels_parse_as_lists_or_comma_separated_names_and_bad_ones_name_the_row():
    assert KIND.row_label(["joy", "love"], "f:1", "labels") == ["joy", "love"]
    assert KIND.row_label("joy, love", "f:1", "labels") == ["joy", "love"]
    assert KIND.row_label([], "f:1", "labels") == []
    with pytest.raises(DataError, match=r"f:3: field 'labels' holds 7; expected a list of class names"):
        KIND.row_label(7, "f:3", "labels")
    spec = TaskSpec(kind="multilabel", labels=["anger", "joy", "love"])
    assert KIND.feature_label(["love", "anger"], spec.label2id) == [1.0, 0.0, 1.0]
    assert KIND.model_config(spec)["problem_type"] == "multi_label_classification"


def test_loss_is_the_mean_binary_cross_entropy_per_label():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.8, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    p = logits.sigmoid()
    by_hand = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    assert KIND.loss(logits, labels).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert KIND.loss(logits, labels).item() == pytest.approx(F.binary_cross_entropy(p, labels).item(), rel=1e-6)


def test_metrics_and_thresholds():
    y_true = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
    y_pred = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    m = multilabel_metrics(y_true, y_pred, ["a", "b", "c"])
    # per label F1: a 1.0, b 2/3 (1 right of 2, 1 predicted), c 0 (predicted once, never true)
    assert m["a_f1"] == 1.0 and m["b_f1"] == pytest.approx(2 / 3) and m["c_f1"] == 0.0
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1
    assert m["subset_accuracy"] == 0.5
    spec = TaskSpec(kind="multilabel", labels=["a", "b"], thresholds=[0.9, 0.2])
    logits = torch.tensor([1.0, -1.0])  # probabilities 0.73 and 0.27
    assert [x["label"] for x in KIND.decode(logits, spec, None, 0, "")] == ["b"]
    spec.thresholds = None  # 0.5 each
    assert [x["label"] for x in KIND.decode(logits, spec, None, 0, "")] == ["a"]


def test_thresholds_are_chosen_for_macro_f1_globally_or_per_label():
    y_true = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    probs = np.array([[0.9, 0.10, 0.2], [0.6, 0.30, 0.1], [0.2, 0.35, 0.3], [0.7, 0.05, 0.1]])
    per_label = tune_thresholds(y_true, probs, per_label=True)
    # label a: 0.6 and 0.9 true, 0.7 false -> F1 0.8 from 0.08 up to 0.6, but (0.7, 0.9] keeps 1 of 2 (F1 0.67)
    # label b: 0.30 and 0.35 true, 0.10 false -> perfect just above 0.10; label c has no positive: the global one
    assert per_label[1] == pytest.approx(0.11)
    globally = tune_thresholds(y_true, probs)
    assert len(set(globally.tolist())) == 1 and per_label[2] == globally[2]

    def macro(t):  # macro F1 as multilabel_metrics scores it
        return multilabel_metrics(y_true, probs >= t, ["a", "b", "c"])["f1"]

    best = globally[0]
    assert all(macro(best) >= macro(t) for t in np.arange(0.02, 0.99, 0.01))
    assert macro(per_label) >= macro(best)


def test_recipe_learns_a_multilabel_task(tiny_model, tmp_path):
    """Each toy text has its topic, and half of them also a person's name, labelled 'people' (labels as a
    comma-separated string in those rows, a list in the others). The thresholds chosen on validation are
    saved with the model and used by predict; transformers' pipeline gives a sigmoid score per label."""
    from transformers import pipeline

    from nlptransfer.inference import load_predictor

    def rows(n, seed):
        out = []
        for i, row in enumerate(make_classification_rows(n, seed)):
            if i % 2:
                out.append({"text": row["text"] + " with anna", "labels": f"{row['label']}, people"})
            else:
                out.append({"text": row["text"], "labels": [row["label"]]})
        return out

    files = {
        split: str(write_jsonl(tmp_path / f"{split}.jsonl", rows(n, seed)))
        for split, n, seed in (("train", 384, 1), ("validation", 48, 2), ("test", 48, 3))
    }
    out = tmp_path / "out"
    # BCE learns the toy topics more slowly than cross-entropy: 2e-3 (FAST's) reaches macro F1 0.65 in 8 epochs
    args = recipe_args(tiny_model, files, out, *FAST, "--num_train_epochs", "8", "--learning_rate", "5e-3")
    results = run_recipe([*args, "--task_type", "multilabel", "--label_column_name", "labels"])
    assert results["test_f1"] >= 0.8, results  # all-negative predictions score 0
    assert set(TOPICS) | {"people"} == {k[len("test_") : -len("_f1")] for k in results if k.endswith("_f1")} - {
        "micro",
        "",
    }
    assert {"test_micro_f1", "test_subset_accuracy", "eval_f1"} <= set(results)
    info = json.loads((out / "nlptransfer_task.json").read_text())
    assert info["task_type"] == "multilabel" and "threshold_tuning: per_label" in (out / "run_config.yaml").read_text()
    assert len(info["thresholds"]) == len(info["labels"]) and all(0 < t < 1 for t in info["thresholds"])
    assert json.loads((out / "config.json").read_text())["problem_type"] == "multi_label_classification"

    predictor = load_predictor(out)
    text = rows(2, 7)[1]["text"]  # a topic text with a name
    scores = predictor.label_scores([text])[0]
    chosen = predictor.predict([text])[0]["multilabel"]
    thresholds = dict(zip(info["labels"], info["thresholds"]))
    assert {x["label"] for x in chosen} == {x["label"] for x in scores if x["score"] >= thresholds[x["label"]]}
    assert "people" in {x["label"] for x in chosen}
    piped = pipeline("text-classification", model=str(out), top_k=None)([text])[0]
    assert sum(x["score"] for x in piped) > 1.01  # a sigmoid per label, not a softmax over them
    assert {x["label"]: x["score"] for x in piped} == pytest.approx({x["label"]: x["score"] for x in scores}, abs=1e-4)


def test_a_multilabel_head_in_a_multitask_model_uses_bce_with_its_pos_weight(tiny_model):
    from nlptransfer import MultiTaskModel
    from nlptransfer.batching import MultiTaskCollator

    topic = TaskSpec(name="topic", kind="classification", labels=["food", "sport", "tech"])
    tags = TaskSpec(name="tags", kind="multilabel", labels=["a", "b"], class_weights=[2.0, 0.5])
    model = MultiTaskModel.from_encoder(tiny_model, [topic, tags]).eval()
    features = [
        {"input_ids": [2, 10, 3], "attention_mask": [1, 1, 1], "labels": 1, "task_ids": 0},
        {"input_ids": [2, 11, 12, 3], "attention_mask": [1, 1, 1, 1], "labels": [1.0, 0.0], "task_ids": 1},
        {"input_ids": [2, 13, 3], "attention_mask": [1, 1, 1], "labels": [1.0, 1.0], "task_ids": 1},
    ]
    batch = MultiTaskCollator(pad_token_id=0, task_names=["topic", "tags"])(features)
    out = model(**batch)
    logits, labels = out.logits["tags"], batch["labels"]["tags"]
    assert labels.dtype == torch.float32 and logits.shape == (2, 2)
    expected = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=torch.tensor([2.0, 0.5]))
    assert out.losses["tags"].item() == pytest.approx(expected.item(), rel=1e-6)
    decoded = model.predict(["goal"], tasks=["tags"])[0]["tags"]
    assert isinstance(decoded, list)  # the labels at or above their thresholds


def test_multi_hot_targets_are_never_padded_to_the_batch_width():
    from nlptransfer.batching import PaddingCollator

    features = [
        {"input_ids": [2, 5, 3], "attention_mask": [1, 1, 1], "labels": [1.0, 0.0, 1.0]},
        {"input_ids": [2, 5, 6, 7, 3], "attention_mask": [1] * 5, "labels": [0.0, 0.0, 0.0]},
    ]
    batch = PaddingCollator(0, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].shape == (2, 3)
    assert batch["labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
