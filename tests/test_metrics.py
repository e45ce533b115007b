import math
import warnings

import numpy as np
import pytest

from nlptransfer.metrics import classification_metrics, ner_metrics, regression_metrics


def test_classification_metrics_by_hand():
    # class 0: tp=2 fp=1 fn=0 -> p=2/3 r=1 f1=0.8 ; class 1: tp=1 fp=0 fn=1 -> p=1 r=0.5 f1=2/3
    # class 2 never occurs nor is predicted: left out of the macro average
    scores = classification_metrics([0, 0, 1, 1], [0, 0, 1, 0], num_labels=3)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert scores["recall"] == pytest.approx(0.75)
    assert scores["f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def per_class_macro(y_true, y_pred, num_labels):
    """Macro precision/recall/F1 class by class, over the classes that occur or are predicted."""
    precisions, recalls, f1s = [], [], []
    for label in range(num_labels):
        tp = sum(t == p == label for t, p in zip(y_true, y_pred))
        predicted, actual = list(y_pred).count(label), list(y_true).count(label)
        if predicted or actual:
            precision, recall = tp / predicted if predicted else 0.0, tp / actual if actual else 0.0
            precisions.append(precision)
            recalls.append(recall)
            f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return np.mean(precisions), np.mean(recalls), np.mean(f1s)


def test_classification_macro_average_over_present_classes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        # classes 0-3 only occur, 0-4 only are predicted, 5 neither: labels absent on either side
        y_true, y_pred = rng.integers(0, 4, 20).tolist(), rng.integers(0, 5, 20).tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no UndefinedMetricWarning: zero division is defined as 0
            scores = classification_metrics(y_true, y_pred, num_labels=6)
        expected = per_class_macro(y_true, y_pred, 6)
        assert [scores["precision"], scores["recall"], scores["f1"]] == pytest.approx(expected, abs=1e-12)
        assert scores["accuracy"] == pytest.approx(np.mean(np.equal(y_true, y_pred)))
    # never right: everything 0, not NaN
    assert classification_metrics([0, 1], [1, 0], 3) == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert classification_metrics([], [], 3) == {}


def test_regression_correlations_undefined_are_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning is avoided, not silenced
        constant = regression_metrics([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
        single = regression_metrics([1.0], [2.0])
    assert constant == {"pearson": 0.0, "spearman": 0.0, "mse": pytest.approx((16 + 9 + 4) / 3)}
    assert single == {"pearson": 0.0, "spearman": 0.0, "mse": 1.0}
    diverged = regression_metrics([1.0, 2.0, 3.0], [1.0, float("nan"), 3.0])  # NaN predictions: no exception
    assert diverged["pearson"] == 0.0 and diverged["spearman"] == 0.0 and math.isnan(diverged["mse"])
    # Spearman is the Pearson correlation of tie-averaged ranks
    scores = regression_metrics([3.0, 1.0, 2.0, 2.0, 5.0], [0.1, 0.2, 0.2, 0.4, 0.9])
    ranks_true, ranks_pred = [4, 1, 2.5, 2.5, 5], [1, 2.5, 2.5, 4, 5]
    assert scores["spearman"] == pytest.approx(np.corrcoef(ranks_true, ranks_pred)[0, 1])
    assert scores["pearson"] == pytest.approx(np.corrcoef([3, 1, 2, 2, 5], [0.1, 0.2, 0.2, 0.4, 0.9])[0, 1])


def test_ner_default_vs_strict_by_hand():
    y_true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    # sentence 1: PER right, LOC predicted as I-LOC (conlleval accepts it, strict IOB2 does not)
    # sentence 2: ORG missed
    y_pred = [["B-PER", "I-PER", "O", "I-LOC"], ["O", "O"]]
    scores = ner_metrics(y_true, y_pred)
    assert scores["precision"] == pytest.approx(1.0)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(0.8)
    assert scores["strict_precision"] == pytest.approx(1.0)
    assert scores["strict_recall"] == pytest.approx(1 / 3)
    assert scores["strict_f1"] == pytest.approx(0.5)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["LOC_f1"] == pytest.approx(1.0) and scores["strict_LOC_f1"] == pytest.approx(0.0)
    assert scores["ORG_recall"] == 0.0 and scores["ORG_number"] == 1
    assert scores["PER_number"] == 1
