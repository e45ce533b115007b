"""Local metrics: nothing is fetched from the Hub.

Classification: accuracy and macro precision/recall/F1. NER: entity precision/recall/F1 with
seqeval at word level, both the default (conlleval-compatible) mode and strict IOB2, overall and
per entity type, plus word accuracy. Regression: Pearson and Spearman correlation and mean squared
error, in plain numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-averaged precision/recall/F1 over the `num_labels` classes seen in train."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return {}
    results = {"accuracy": float((y_true == y_pred).mean())}
    precisions, recalls, f1s = [], [], []
    for label in range(num_labels):
        true_positive = float(np.sum((y_pred == label) & (y_true == label)))
        predicted, actual = float(np.sum(y_pred == label)), float(np.sum(y_true == label))
        if predicted == 0 and actual == 0:
            continue  # a class absent from this split and never predicted says nothing either way
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    results.update(precision=float(np.mean(precisions)), recall=float(np.mean(recalls)), f1=float(np.mean(f1s)))
    return results


def ner_metrics(y_true: list[list[str]], y_pred: list[list[str]]) -> dict[str, float]:
    """Entity-level scores of word-level tag sequences (seqeval), default and strict IOB2 modes."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    words = sum(len(tags) for tags in y_true)
    if words == 0:
        return {}
    correct = sum(t == p for true, pred in zip(y_true, y_pred) for t, p in zip(true, pred))
    results = {"accuracy": correct / words}
    for prefix, options in (("", {}), ("strict_", {"mode": "strict", "scheme": IOB2})):
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0, **options)
        micro = report["micro avg"]
        results.update(
            {
                f"{prefix}precision": micro["precision"],
                f"{prefix}recall": micro["recall"],
                f"{prefix}f1": micro["f1-score"],
            }
        )
        for entity, scores in report.items():
            if entity.endswith(" avg"):
                continue
            results[f"{prefix}{entity}_precision"] = scores["precision"]
            results[f"{prefix}{entity}_recall"] = scores["recall"]
            results[f"{prefix}{entity}_f1"] = scores["f1-score"]
            results[f"{prefix}{entity}_number"] = int(scores["support"])
    return {key: float(value) for key, value in results.items()}


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the average of their ranks (as scipy.stats.rankdata does)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2)[group]  # mean of the 1-based ranks start+1 .. end
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    scale = np.sqrt((x * x).sum() * (y * y).sum())
    # undefined when either side is constant (e.g. a model that predicts one value): scored 0, no correlation
    return float(np.clip((x * y).sum() / scale, -1.0, 1.0)) if scale > 0 else 0.0


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman (Pearson of tie-averaged ranks) correlation, and mean squared error.

    A correlation is undefined when either side is constant; it is then reported as 0.0, so that
    model selection on it still compares numbers.
    """
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if len(y_true) == 0:
        return {}
    return {
        "pearson": _pearson(y_true, y_pred),
        "spearman": _pearson(average_ranks(y_true), average_ranks(y_pred)),
        "mse": float(np.mean((y_pred - y_true) ** 2)),
    }


METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "classification": classification_metrics,
    "pair_classification": classification_metrics,
    "regression": regression_metrics,
    "ner": ner_metrics,
}
