"""What the server answers for one text of a model pass: `ModelPass` holds a batch's logits, and the answer
formats read one row of it.

    /predict (TEI)        `tei_answer`: one task's answer in text-embeddings-inference's format, by task kind
                          (`TEI_FORMATS`): every label with its probability, highest first (`raw_scores`: the
                          logits, still highest first); a regression's value; NER's entity spans
    /predict/tasks        `task_answers`: every chosen task's prediction, as `Predictor.predict` gives it

A new task kind answers /predict with its own `TaskKind.decode` until it registers a format here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nlptransfer.tasks import TASK_KINDS, TaskSpec


@dataclass
class ModelPass:
    """One batch through a model: the first texts, their encoding and every task's logits (numpy)."""

    first: list[str]
    encoding: object
    logits: dict[str, np.ndarray]


def decoded(spec: TaskSpec, out: ModelPass, row: int, raw_scores: bool = False):
    """The kind's own serving answer (`TaskKind.decode`): {label, score}, a number, or entity spans."""
    logits = torch.from_numpy(np.ascontiguousarray(out.logits[spec.name][row])).float()
    return TASK_KINDS[spec.kind].decode(logits, spec, out.encoding, row, out.first[row])


def all_label_scores(spec: TaskSpec, out: ModelPass, row: int, raw_scores: bool = False) -> list[dict]:
    """Every label with its probability (or raw logit), highest first: TEI's classifier answer."""
    values = out.logits[spec.name][row].astype(np.float64)
    if not raw_scores:
        values = np.exp(values - values.max())
        values /= values.sum()
    return [{"label": spec.labels[i], "score": float(values[i])} for i in np.argsort(-values, kind="stable")]


def regression_value(spec: TaskSpec, out: ModelPass, row: int, raw_scores: bool = False) -> list[dict]:
    """A regression head's value as TEI's one-label answer (label "score", as the head's config names it)."""
    return [{"label": "score", "score": float(np.reshape(out.logits[spec.name][row], -1)[0])}]


TEI_FORMATS: dict[str, Callable[[TaskSpec, ModelPass, int, bool], object]] = {
    "classification": all_label_scores,
    "pair_classification": all_label_scores,
    "regression": regression_value,
    "ner": decoded,  # entity spans: [{entity, word, start, end, score}]
}
"""task kind -> its /predict answer for one text."""


def tei_answer(spec: TaskSpec, raw_scores: bool) -> Callable[[ModelPass, int], object]:
    answer = TEI_FORMATS.get(spec.kind, decoded)
    return lambda out, row: answer(spec, out, row, raw_scores)


def task_answers(specs: Sequence[TaskSpec]) -> Callable[[ModelPass, int], dict]:
    return lambda out, row: {spec.name: decoded(spec, out, row) for spec in specs}
