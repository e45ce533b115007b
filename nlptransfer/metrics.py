"""Local metrics: nothing is fetched from the Hub.

Classification: accuracy and macro precision/recall/F1 (scikit-learn). NER: entity
precision/recall/F1 with seqeval at word level, both the default (conlleval-compatible) mode and
strict IOB2, overall and per entity type, plus word accuracy. Regression: Pearson and Spearman
correlation (scipy) and mean squared error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-averaged precision/recall/F1 over the `num_labels` classes seen in train.

    The macro average is over the classes that occur in `y_true` or `y_pred`: a class absent from this
    split and never predicted says nothing either way. A class never predicted has precision 0, one
    absent from `y_true` recall 0 (`zero_division=0`)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return {}
    present = np.union1d(y_true, y_pred)
    labels = present[(present >= 0) & (present < num_labels)]
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Micro and macro F1 (macro over every label of the label set, absent ones scoring 0 only when predicted),
    per-label F1 and subset accuracy (every label of a row right) of multi-hot (n, L) arrays."""
    from sklearn.metrics import f1_score

    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if len(y_true) == 0:
        return {}
    present = np.flatnonzero(y_true.any(0) | y_pred.any(0))
    per_label = f1_score(y_true, y_pred, average=None, zero_division=0)
    results = {
        "f1": float(per_label[present].mean()) if len(present) else 0.0,  # macro F1: the usual headline
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "subset_accuracy": float((y_true == y_pred).all(1).mean()),
    }
    results |= {f"{name}_f1": float(per_label[i]) for i, name in enumerate(labels)}
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
    """1-based ranks; tied values share the average of their ranks (`scipy.stats.rankdata`)."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(values, dtype=float), method="average")


def _correlation(function, x: np.ndarray, y: np.ndarray) -> float:
    """`function` (scipy's pearsonr or spearmanr) of x and y, or 0.0 where it is undefined: fewer than
    two values, a constant side (e.g. a model that predicts one value), NaN in the inputs."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    value = float(function(x, y).statistic)
    return value if np.isfinite(value) else 0.0


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman (Pearson of tie-averaged ranks) correlation, and mean squared error.

    A correlation is undefined when either side is constant; it is then reported as 0.0, so that
    model selection on it still compares numbers. The MSE is plain numpy, so that a diverged model's
    NaN predictions give a NaN score rather than an error (scikit-learn rejects non-finite inputs).
    """
    from scipy.stats import pearsonr, spearmanr

    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if len(y_true) == 0:
        return {}
    return {
        "pearson": _correlation(pearsonr, y_true, y_pred),
        "spearman": _correlation(spearmanr, y_true, y_pred),
        "mse": float(np.mean((y_pred - y_true) ** 2)),
    }


METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "classification": classification_metrics,
    "pair_classification": classification_metrics,
    "regression": regression_metrics,
    "ner": ner_metrics,
}
