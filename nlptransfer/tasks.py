"""Task kinds: how each kind checks its rows, builds its label set, tokenizes, scores and computes its loss.

A new kind is one class registered in `TASK_KINDS`; recipes and models never branch on the kind's
name. What a model needs to build a head and a loss for any kind:

- `head`: "sequence" (one prediction per example, from the pooled output) or "token" (one per token);
- `num_outputs(spec)`: the width of the head (the number of classes; 1 for regression);
- `loss(logits, labels, weights)`: the mean loss over labelled positions (label -100 marks an unlabelled one),
  weighted per class when `weights` (`TaskSpec.class_weights`) are given;
- `check_row(row, where, spec)` and `encode_batch(rows, labels, ...)`: what a row must hold and how a batch of
  rows becomes model inputs (`check` and `encode` run them over a split as cached `Dataset.map` passes);
- `has_label_set`: whether the kind predicts names from a label set (False for regression);
- `model_config(spec)`: the transformers config settings of its head (num_labels, id2label, problem_type);
- `calibrate(encoded, logits, spec)`: what the kind chooses on validation predictions (multi-label thresholds);
- `probabilities(logits)` and `decode(...)`: scores and one text's answer at inference.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, PreTrainedTokenizerBase

from nlptransfer.errors import ConfigError, DataError
from nlptransfer.metrics import classification_metrics, multilabel_metrics, ner_metrics, regression_metrics
from nlptransfer.preprocessing import (
    FEATURE_INFO,
    StreamedFeatures,
    arrow_column,
    check_rows,
    encode_rows,
    id_type,
    map_rows,
    tokenizer_key,
)
from nlptransfer.readers import Records, iob1_to_iob2

logger = logging.getLogger(__name__)


@dataclass
class TaskSpec:
    """What one task reads and predicts: the columns of its rows and (once known) its label names."""

    name: str = "task"
    kind: str = "classification"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    labels: list[str] = field(default_factory=list)
    thresholds: list[float] | None = None
    """Multi-label tasks: the probability at which each label is predicted (chosen on validation)."""
    threshold_tuning: str = "per_label"
    """Multi-label tasks: how validation chooses `thresholds`: one per label (`per_label`), one for every label
    (`global`), or none (`fixed`: 0.5)."""
    long_text: str = "truncate"
    """Texts longer than the window: `truncate` them, or `chunk` them into windows that overlap by
    `doc_stride` tokens, each trained with the text's label, their logits pooled (`chunk_pooling`: mean or
    max) into the text's prediction at evaluation and inference."""
    doc_stride: int = 32
    chunk_pooling: str = "mean"
    max_seq_length: int | None = None
    """The window the task was trained with (inference uses it unless told otherwise)."""
    class_weights: list[float] | None = None
    """Loss weight of each class (classification: weighted cross-entropy; multi-label: BCE `pos_weight` per
    label), in label order; None weighs every class alike."""

    @classmethod
    def from_data_args(cls, data_args, name: str = "task") -> TaskSpec:
        return cls(
            name=name,
            kind=data_args.task_type,
            text_column=data_args.text_column_name,
            text_pair_column=data_args.text_pair_column_name,
            label_column=data_args.label_column_name,
            tokens_column=data_args.tokens_column_name,
            tags_column=data_args.tags_column_name,
            threshold_tuning=data_args.threshold_tuning,
            long_text=data_args.long_text,
            doc_stride=data_args.doc_stride,
            chunk_pooling=data_args.chunk_pooling,
            max_seq_length=data_args.max_seq_length,
        )

    def inference_settings(self) -> dict:
        """What inference needs beyond the kind and labels (saved in a run's `nlptransfer_task.json`)."""
        return {name: getattr(self, name) for name in INFERENCE_SETTINGS}

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


INFERENCE_SETTINGS = ("thresholds", "long_text", "doc_stride", "chunk_pooling", "max_seq_length")
LONG_TEXT = ("truncate", "chunk")
CHUNK_POOLING = {"mean": np.mean, "max": np.max}
"""How a chunked text's chunk logits become its own, by `--chunk_pooling` name."""


def pool_chunks(logits: Sequence[np.ndarray], row_of_feature: Sequence[int], pooling: str) -> list[np.ndarray]:
    """One logit row per text from the logits of its chunks (`row_of_feature`: each chunk's text, in order)."""
    rows: dict[int, list[np.ndarray]] = {}
    for row, row_logits in zip(row_of_feature, logits):
        rows.setdefault(row, []).append(np.asarray(row_logits))
    return [CHUNK_POOLING[pooling](np.stack(rows[row]), axis=0) for row in sorted(rows)]


@dataclass
class Encoded:
    """Model inputs of one split (a `datasets.Dataset` of `input_ids`, ..., `labels`: memory-mapped when the
    split came from a file), plus what scoring needs to map predictions back to rows and words.

    `table` is what `encode` wrote (the inputs and `FEATURE_INFO`); `labels` the checked label of every row."""

    table: object
    records: Records
    labels: object

    @classmethod
    def from_features(cls, features: list[dict], rows: list[int] | None = None, labels: list | None = None) -> Encoded:
        """An `Encoded` of ready features (tests, benchmarks): each its own row unless `rows` says otherwise."""
        from datasets import Dataset

        rows = list(range(len(features))) if rows is None else rows
        table = Dataset.from_list(
            [{**f, "__row__": row, "length": len(f["input_ids"])} for f, row in zip(features, rows)]
        )
        return cls(table, Records("features"), Dataset.from_dict({"label": labels or []}))

    @cached_property
    def features(self):
        """The model inputs, one dict per feature (what collators batch)."""
        return self.table.remove_columns([name for name in FEATURE_INFO if name in self.table.column_names])

    def lengths(self) -> np.ndarray:
        return arrow_column(self.table, "length").to_numpy()

    @cached_property
    def row_of_feature(self) -> np.ndarray:
        return arrow_column(self.table, "__row__").to_numpy()

    @cached_property
    def words_of_feature(self) -> list[list[int]]:
        return arrow_column(self.table, "__words__").to_pylist() if "__words__" in self.table.column_names else []

    @cached_property
    def row_labels(self) -> list:
        return arrow_column(self.labels, "label").to_pylist()

    @cached_property
    def feature_labels(self) -> list:
        return arrow_column(self.table, "labels").to_pylist()


def _field(row: dict, where: str, column: str, flag: str):
    """The row's value in `column` (None where this row lacks a field other rows have, or holds null)."""
    if column not in row:
        fields = ", ".join(repr(name) for name, value in row.items() if value is not None)
        raise DataError(f"{where}: no field {column!r} (fields: {fields}); set {flag}")
    return row[column]


def _holds(value) -> str:
    """What a field holds, for an error: a row's missing field reads as null from Arrow, so None says both."""
    return "is missing or null" if value is None else f"holds {value!r}"


def _has(row: dict, column: str) -> bool:
    return row.get(column) is not None


def _label_name(value, where: str, column: str) -> str:
    if (
        isinstance(value, bool)
        or not isinstance(value, (str, int, float))
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise DataError(f"{where}: field {column!r} {_holds(value)}; expected a class name or an integer class id")
    if isinstance(value, float):
        value = int(value)
    name = str(value).strip()
    if not name:
        raise DataError(f"{where}: field {column!r} is empty; expected a class name or an integer class id")
    return name


def _sorted_labels(names: set[str]) -> list[str]:
    # integer ids keep their numeric order (so "2" < "10"); names sort alphabetically
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _label_number(value, where: str, column: str) -> float:
    """A regression target: an int or float, or a string holding one (CSV/TSV); finite, never a bool."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise DataError(f"{where}: field {column!r} {_holds(value)}; expected a number (regression target)")
    if not math.isfinite(number):
        raise DataError(f"{where}: field {column!r} {_holds(value)}; expected a finite number (regression target)")
    return number


def cross_entropy_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """Mean cross-entropy over labelled positions: (n, C) logits with (n,) labels, or (n, L, C) with (n, L);
    with class `weights`, the weighted mean (each position counts its class's weight, as in `F.cross_entropy`)."""
    weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=logits.device)
    logits = logits.reshape(-1, logits.shape[-1])
    if weight is not None:
        logits = logits.float()
    return F.cross_entropy(logits, labels.reshape(-1).long(), weight=weight, ignore_index=-100)


def mse_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (n, 1) logits and (n,) targets."""
    return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))


def _spec_key(spec: TaskSpec) -> list:
    """What of `spec` decides how rows are read and split into features."""
    return [
        spec.text_column,
        spec.text_pair_column,
        spec.label_column,
        spec.tokens_column,
        spec.tags_column,
        spec.long_text,
        spec.doc_stride,
    ]


def _log_windows(records: Records, table, max_length: int, head: str) -> None:
    """Say how many texts were chunked (or sentences split), or else truncated."""
    if not len(table):
        return
    rows = arrow_column(table, "__row__").to_numpy()
    if len(rows) > len(records):
        repeated = rows[1:][rows[1:] == rows[:-1]]
        what = "texts" if head == "sequence" else "sentences"
        logger.info(
            "%s: %d %s longer than max_seq_length=%d became %d windows",
            records.source,
            len(np.unique(repeated)),
            what,
            max_length,
            len(rows),
        )
    elif head == "sequence" and (truncated := int((arrow_column(table, "length").to_numpy() >= max_length).sum())):
        logger.info(
            "%s: %d of %d examples reach max_seq_length=%d and were truncated",
            records.source,
            truncated,
            len(rows),
            max_length,
        )


@dataclass
class StreamEncoded:
    """A streamed split's `features` (a `StreamedFeatures`); it has no length until iterated."""

    features: StreamedFeatures
    records: object


def check_stream(stream, kind: TaskKind, spec: TaskSpec) -> Counter:
    """One pass over a stream that checks every row (file:line errors, before training starts) and counts its
    labels (each name once per row; every tag for token tasks); sets the stream's row count."""
    kind.check_spec(spec)
    check_long_text(spec)
    counts: Counter = Counter()
    rows = 0
    for line, row in stream:
        label = kind.check_row(row, stream.at(line), spec)
        if kind.has_label_set:
            counts.update(label if isinstance(label, list) else [label])
        rows += 1
    stream.rows = rows
    return counts


class TaskKind:
    """What every kind provides; the defaults are those of a kind that predicts classes."""

    name: ClassVar[str]
    head: ClassVar[str]  # "sequence" (one prediction per example, pooled) or "token" (one per token)
    auto_model: ClassVar[type]
    default_metric: ClassVar[str]  # higher is better
    has_label_set: ClassVar[bool] = True
    problem_type: ClassVar[str | None] = None  # transformers' config.problem_type of the head, when it has one
    default_class_weights: ClassVar[str | None] = None  # --class_weights when not given ("balanced": from train)
    uncertainty_factor: ClassVar[float] = (
        1.0  # Kendall et al.: 1/sigma^2 for likelihoods of classes, 1/(2 sigma^2) Gaussian
    )

    def check_spec(self, spec: TaskSpec) -> None:
        """Raise ConfigError when `spec` lacks something this kind needs (called before reading any row)."""

    def num_outputs(self, spec: TaskSpec) -> int:
        return len(spec.labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
        return cross_entropy_loss(logits, labels, weights)

    def balanced_weights(self, counts: Sequence[int], rows: int, spec: TaskSpec) -> list[float]:
        """`--class_weights balanced`: n / (classes x count) per class of the training labels (sklearn's
        "balanced"; NER counts every tag); a class absent from train gets weight 1. `counts`: each label's
        occurrences in train, in label order; `rows`: train's rows."""
        n = sum(counts)
        return [n / (len(spec.labels) * c) if c else 1.0 for c in counts]

    def calibrate(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> None:
        """Fit what the kind decides on validation predictions (a multi-label task's thresholds) into `spec`."""

    def model_config(self, spec: TaskSpec) -> dict:
        """`AutoConfig.from_pretrained` keyword arguments for this kind's head."""
        names = spec.labels if self.has_label_set else ["score"]
        config = {
            "num_labels": self.num_outputs(spec),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }
        if self.problem_type:
            config["problem_type"] = self.problem_type
        return config

    def label_order(self, names: set[str]) -> list[str]:
        return _sorted_labels(names)

    def check_row(self, row: dict, where: str, spec: TaskSpec):
        """Validate one row (every column of its split; None where this row has no value); return its label as
        the kind keeps it (a class name, a list of names, a number, a list of IOB2 tags). Errors name `where`
        (file:line) and the field."""
        raise NotImplementedError

    def encode_batch(self, rows: dict[str, list], labels: list, tokenizer, spec: TaskSpec, max_length: int) -> dict:
        """Model inputs of a batch of rows (columns of values) whose labels `check_row` gave: `input_ids`, ...,
        `labels`, and `__row__` (the batch position of each feature's row); token tasks add `__words__`."""
        raise NotImplementedError

    def check(self, records: Records, spec: TaskSpec, num_proc: int | None = None):
        """Validate every row (a batched `Dataset.map`, cached); return a dataset of each row's `label`."""
        self.check_spec(spec)
        check_long_text(spec)
        return map_rows(
            records, check_rows, dict(kind=self, spec=spec), ("check", self.name, _spec_key(spec)), num_proc
        )

    def encode(
        self,
        records: Records,
        labels,
        tokenizer: PreTrainedTokenizerBase,
        spec: TaskSpec,
        max_length: int,
        num_proc: int | None = None,
    ) -> Encoded:
        """Tokenize every row (a batched `Dataset.map`, cached: the same rows, tokenizer and settings are
        tokenized once); `labels` from `check`."""
        key = ("encode", self.name, _spec_key(spec), spec.labels, max_length, tokenizer_key(tokenizer))
        checked = arrow_column(labels, "label")
        options = dict(kind=self, spec=spec, tokenizer=tokenizer, max_length=max_length, labels=checked)
        options["ids"] = id_type(tokenizer)
        table = map_rows(records, encode_rows, options, key, num_proc)
        _log_windows(records, table, max_length, self.head)
        return Encoded(table, records, labels)

    def score(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> dict[str, float]:
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Each label's probability from (..., labels) logits: a softmax (one class per text)."""
        return logits.float().softmax(-1)

    def decode(self, logits: torch.Tensor, spec: TaskSpec, encoding, row: int, text: str):
        """One text's prediction for serving (`MultiTaskModel.predict`): the label name and its probability."""
        probs = self.probabilities(logits)
        best = int(probs.argmax())
        return {"label": spec.labels[best], "score": float(probs[best])}


def tokenize_texts(tokenizer: PreTrainedTokenizerBase, texts, pairs, max_length: int, spec: TaskSpec, **options):
    """A sequence task's texts (and pairs) tokenized as the task reads them: truncated to `max_length`, or
    chunked into windows (`spec.long_text == "chunk"`; `overflow_to_sample_mapping` gives each window's text)."""
    if spec.long_text != "chunk":
        return tokenizer(texts, pairs, truncation=True, max_length=max_length, **options)
    return tokenizer(
        texts,
        pairs,
        truncation="only_first" if pairs is not None else True,
        max_length=max_length,
        stride=spec.doc_stride,
        return_overflowing_tokens=True,
        **options,
    )


def check_long_text(spec: TaskSpec) -> None:
    if spec.long_text not in LONG_TEXT:
        raise ConfigError(f"--long_text {spec.long_text!r}: choose one of {', '.join(LONG_TEXT)}")
    if spec.chunk_pooling not in CHUNK_POOLING:
        raise ConfigError(f"--chunk_pooling {spec.chunk_pooling!r}: choose one of {', '.join(CHUNK_POOLING)}")
    if spec.long_text == "chunk" and not 0 <= spec.doc_stride < (spec.max_seq_length or 10**9) // 2:
        raise ConfigError(
            f"--doc_stride {spec.doc_stride}: the overlap of two windows must be at least 0 and under half of "
            f"--max_seq_length ({spec.max_seq_length})"
        )


class _SequenceKind(TaskKind):
    """One text (or a pair of texts) in, one prediction out."""

    head = "sequence"
    auto_model = AutoModelForSequenceClassification

    def row_label(self, value, where: str, column: str):
        raise NotImplementedError

    def feature_label(self, label, label2id: dict[str, int]):
        """A row's label as the model's target (`label2id`: the spec's label ids)."""
        raise NotImplementedError

    def check_row(self, row: dict, where: str, spec: TaskSpec):
        if _has(row, spec.tokens_column) and _has(row, spec.tags_column) and not _has(row, spec.text_column):
            raise DataError(
                f"{where}: this row has token/tag lists ({spec.tokens_column!r}, {spec.tags_column!r}) "
                f"but no {spec.text_column!r} field; for tagging use --task_type ner"
            )
        columns = [(spec.text_column, "--text_column_name")]
        if spec.text_pair_column:
            columns.append((spec.text_pair_column, "--text_pair_column_name"))
        for column, flag in columns:
            text = _field(row, where, column, flag)
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: field {column!r} is empty or not text: {text!r}")
        return self.row_label(_field(row, where, spec.label_column, "--label_column_name"), where, spec.label_column)

    def encode_batch(self, rows: dict[str, list], labels: list, tokenizer, spec: TaskSpec, max_length: int) -> dict:
        """One feature per text, truncated to `max_length`; or, `spec.long_text == "chunk"`, one per window of
        it (overlapping by `spec.doc_stride` tokens; a pair's first text is the one chunked), each with the
        text's label."""
        texts = rows[spec.text_column]
        pairs = rows[spec.text_pair_column] if spec.text_pair_column else None
        encoding = tokenize_texts(tokenizer, texts, pairs, max_length, spec, return_attention_mask=False)
        positions = list(encoding.pop("overflow_to_sample_mapping", range(len(texts))))
        label2id = spec.label2id
        features = {key: encoding[key] for key in encoding.keys()}
        features["labels"] = [self.feature_label(labels[row], label2id) for row in positions]
        features["__row__"] = positions
        return features

    def pooled(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> tuple[list, list[np.ndarray]]:
        """(each text's feature label, each text's logits): chunks pooled by `spec.chunk_pooling`."""
        first = {}
        for index, row in enumerate(encoded.row_of_feature.tolist()):
            first.setdefault(row, index)
        y_true = [encoded.feature_labels[first[row]] for row in sorted(first)]
        if len(first) == len(logits):
            return y_true, logits
        return y_true, pool_chunks(logits, encoded.row_of_feature, spec.chunk_pooling)


class ClassificationKind(_SequenceKind):
    """One class per text, or per pair of texts when `spec.text_pair_column` is set."""

    name = "classification"
    default_metric = "accuracy"
    problem_type = "single_label_classification"  # also with one class, which transformers would take for regression

    def row_label(self, value, where: str, column: str) -> str:
        return _label_name(value, where, column)

    def feature_label(self, label: str, label2id: dict[str, int]) -> int:
        return label2id[label]

    def score(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> dict[str, float]:
        y_true, logits = self.pooled(encoded, logits, spec)
        y_pred = [int(np.argmax(row_logits)) for row_logits in logits]
        return classification_metrics(y_true, y_pred, len(spec.labels))


class PairClassificationKind(ClassificationKind):
    """Classification of text pairs (entailment, paraphrase...): the second text column is required."""

    name = "pair_classification"

    def check_spec(self, spec: TaskSpec) -> None:
        if not spec.text_pair_column:
            raise ConfigError(
                f"task {self.name!r} needs a second text column: set --text_pair_column_name "
                f"(e.g. --text_pair_column_name text_b)"
            )


THRESHOLD_TUNING = ("per_label", "global", "fixed")
THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)
"""The probabilities a multi-label threshold is chosen from."""


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, per_label: bool = False) -> np.ndarray:
    """Thresholds from THRESHOLD_GRID for (n, L) multi-hot `y_true` and probabilities: the one with the best
    macro F1 (over the labels that occur or are predicted, as `multilabel_metrics` scores it) for all labels,
    or, `per_label`, each label's best F1 (labels with no positive keep the global one). Ties go to the
    lowest threshold."""
    predicted = probs[None] >= THRESHOLD_GRID[:, None, None]  # (grid, n, L)
    tp = (predicted & y_true[None]).sum(1)
    fp = (predicted & ~y_true[None]).sum(1)
    fn = (~predicted & y_true[None]).sum(1)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(tp.shape), where=(2 * tp + fp + fn) > 0)  # (grid, L)
    counted = y_true.any(0)[None] | predicted.any(1)
    macro = (f1 * counted).sum(1) / np.maximum(counted.sum(1), 1)
    chosen = np.full(y_true.shape[1], THRESHOLD_GRID[int(np.argmax(macro))])
    if per_label:
        has_positive = y_true.any(0)
        chosen[has_positive] = THRESHOLD_GRID[np.argmax(f1[:, has_positive], axis=0)]
    return chosen


class MultiLabelKind(_SequenceKind):
    """Any number of classes per text (or pair): a list of names per row, or one string of names separated by
    commas; a sigmoid and binary cross-entropy per label; a label is predicted at probability >= its threshold
    (`spec.thresholds`, one per label, chosen on validation; 0.5 until then)."""

    name = "multilabel"
    default_metric = "f1"  # macro F1 over the labels
    # BCE over many mostly-negative labels barely moves the rare ones: positives weighted by negatives / positives.
    # Chosen on GoEmotions validation (1 epoch, MiniLM, thresholds per label): macro F1 0.131 unweighted at lr 1e-4,
    # 0.142 at lr 3e-4, 0.416 with a 3e-3 head LR, 0.466 with these weights.
    default_class_weights = "balanced"
    problem_type = "multi_label_classification"  # transformers' pipeline then gives a sigmoid score per label
    uncertainty_factor = 1.0

    def row_label(self, value, where: str, column: str) -> list[str]:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if not isinstance(value, list):
            raise DataError(f"{where}: field {column!r} {_holds(value)}; expected a list of class names")
        return list(dict.fromkeys(_label_name(item, where, column) for item in value))  # a name counts once

    def feature_label(self, label: list[str], label2id: dict[str, int]) -> list[float]:
        hot = [0.0] * len(label2id)
        for name in label:
            hot[label2id[name]] = 1.0
        return hot

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
        pos_weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=pos_weight)

    def balanced_weights(self, counts: Sequence[int], rows: int, spec: TaskSpec) -> list[float]:
        """`--class_weights balanced`: BCE's `pos_weight` of each label, negatives / positives in train (1 for a
        label with no positive; a row names a label at most once)."""
        return [(rows - p) / p if p else 1.0 for p in counts]

    def calibrate(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> None:
        """Choose `spec.thresholds` on these (validation) predictions: the threshold of THRESHOLD_GRID with the
        best macro F1 for every label (`global`), or the best F1 per label (`per_label`; a label with no
        positive here keeps the global one); `fixed` leaves 0.5."""
        if spec.threshold_tuning == "fixed" or not logits:
            return
        y_true, logits = self.pooled(encoded, logits, spec)
        y_true, probs = np.asarray(y_true, dtype=bool), _sigmoid(np.stack(logits))
        chosen = tune_thresholds(y_true, probs, per_label=spec.threshold_tuning == "per_label")
        spec.thresholds = [round(float(t), 2) for t in chosen]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """A sigmoid per label: labels are independent."""
        return logits.float().sigmoid()

    def thresholds(self, spec: TaskSpec) -> np.ndarray:
        return np.asarray(spec.thresholds or [0.5] * len(spec.labels))

    def predicted(self, logits: list[np.ndarray], spec: TaskSpec) -> np.ndarray:
        return (_sigmoid(np.stack(logits)) >= self.thresholds(spec)).astype(int)

    def score(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> dict[str, float]:
        y_true, logits = self.pooled(encoded, logits, spec)
        return multilabel_metrics(np.asarray(y_true, dtype=int), self.predicted(logits, spec), spec.labels)

    def decode(self, logits: torch.Tensor, spec: TaskSpec, encoding, row: int, text: str) -> list[dict]:
        """Every label at or above its threshold, most probable first."""
        probs = self.probabilities(logits)
        chosen = [i for i, threshold in enumerate(self.thresholds(spec)) if float(probs[i]) >= threshold]
        return sorted(({"label": spec.labels[i], "score": float(probs[i])} for i in chosen), key=lambda x: -x["score"])


class RegressionKind(_SequenceKind):
    """A real-valued score per text or text pair (e.g. STS-B similarity); one output, MSE loss."""

    name = "regression"
    default_metric = "pearson"
    has_label_set = False
    problem_type = "regression"
    uncertainty_factor = 0.5

    def num_outputs(self, spec: TaskSpec) -> int:
        return 1

    def decode(self, logits: torch.Tensor, spec: TaskSpec, encoding, row: int, text: str) -> float:
        return float(logits.reshape(-1)[0])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
        return mse_loss(logits, labels)

    def balanced_weights(self, counts: Sequence[int], rows: int, spec: TaskSpec) -> list[float]:
        raise ConfigError("--class_weights: a regression task has no classes to weigh")

    def row_label(self, value, where: str, column: str) -> float:
        return _label_number(value, where, column)

    def feature_label(self, label: float, label2id: dict[str, int]) -> float:
        return label

    def score(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> dict[str, float]:
        y_true, logits = self.pooled(encoded, logits, spec)
        y_pred = [float(np.reshape(row_logits, -1)[0]) for row_logits in logits]
        return regression_metrics(y_true, y_pred)


class NerKind(TaskKind):
    name = "ner"
    head = "token"
    auto_model = AutoModelForTokenClassification
    default_metric = "f1"

    def label_order(self, names: set[str]) -> list[str]:
        # "O" first, then by entity type with B- before I-: stable whatever the file order
        return sorted(names, key=lambda tag: (tag != "O", tag[2:], tag[:2]))

    def check_row(self, row: dict, where: str, spec: TaskSpec) -> list[str]:
        """The row's IOB2 tags."""
        if not _has(row, spec.tokens_column) and _has(row, spec.label_column):
            raise DataError(
                f"{where}: task 'ner' needs a word list {spec.tokens_column!r} and a tag list "
                f"{spec.tags_column!r} per row, but this row has a single label {spec.label_column!r}; "
                f"use --task_type classification, or set --tokens_column_name/--tags_column_name"
            )
        tokens = _field(row, where, spec.tokens_column, "--tokens_column_name")
        tags = _field(row, where, spec.tags_column, "--tags_column_name")
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise DataError(f"{where}: fields {spec.tokens_column!r} and {spec.tags_column!r} must be lists")
        if not tokens:
            raise DataError(f"{where}: field {spec.tokens_column!r} is an empty sentence")
        if len(tokens) != len(tags):
            raise DataError(
                f"{where}: {spec.tokens_column!r} has {len(tokens)} items but {spec.tags_column!r} has {len(tags)}"
            )
        if not all(isinstance(token, str) and token for token in tokens):
            raise DataError(f"{where}: field {spec.tokens_column!r} holds an empty or non-text word")
        return iob1_to_iob2([_label_name(tag, where, spec.tags_column) for tag in tags])

    def encode_batch(
        self, rows: dict[str, list], labels: list[list[str]], tokenizer, spec: TaskSpec, max_length: int
    ) -> dict:
        """Label the first sub-word of each word (-100 elsewhere); split sentences too long into windows."""
        label2id = spec.label2id
        budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        sentences = rows[spec.tokens_column]
        full = tokenizer(
            sentences,
            is_split_into_words=True,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        windows: list[tuple[int, int, int]] = []  # (row, first word, end word)
        for row in range(len(sentences)):
            pieces = np.bincount([w for w in full.word_ids(row) if w is not None], minlength=len(sentences[row]))
            start, used = 0, 0
            for word, count in enumerate(pieces):
                if used + count > budget and word > start:
                    windows.append((row, start, word))
                    start, used = word, 0
                used += count
            windows.append((row, start, len(sentences[row])))
        encoding = tokenizer(
            [sentences[row][start:end] for row, start, end in windows],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
        )
        features = {key: encoding[key] for key in encoding.keys()}
        features["labels"], features["__words__"] = [], []
        for i, (row, start, _) in enumerate(windows):
            feature_labels, words, previous = [], [], None
            for word in encoding.word_ids(i):
                if word is None or word == previous:
                    feature_labels.append(-100)  # first sub-word only: seqeval must score words, not pieces
                else:
                    feature_labels.append(label2id[labels[row][start + word]])
                    words.append(start + word)
                previous = word
            features["labels"].append(feature_labels)
            features["__words__"].append(words)
        features["__row__"] = [row for row, _, _ in windows]
        return features

    def decode(self, logits: torch.Tensor, spec: TaskSpec, encoding, row: int, text: str) -> list[dict]:
        """First sub-word of each word carries the word's tag; IOB2 tags join into character spans."""
        probs = logits.softmax(-1)
        words: list[tuple[str, float, int, int]] = []  # (tag, score, start char, end char)
        previous = None
        for position, word in enumerate(encoding.word_ids(row)):
            if word is None:
                continue
            span = encoding.word_to_chars(row, word)
            if word != previous:
                best = int(probs[position].argmax())
                words.append((spec.labels[best], float(probs[position, best]), span.start, span.end))
            previous = word
        entities: list[dict] = []
        for tag, score, start, end in words:
            inside = tag.startswith("I-") and entities and entities[-1]["entity"] == tag[2:] and entities[-1]["open"]
            if inside:
                entities[-1].update(end=end, scores=entities[-1]["scores"] + [score])
            elif tag != "O":
                entities.append({"entity": tag[2:], "start": start, "end": end, "scores": [score], "open": True})
            if tag == "O" and entities:
                entities[-1]["open"] = False
        return [
            {
                "entity": e["entity"],
                "word": text[e["start"] : e["end"]],
                "start": e["start"],
                "end": e["end"],
                "score": sum(e["scores"]) / len(e["scores"]),
            }
            for e in entities
        ]

    def score(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> dict[str, float]:
        """Map first-sub-word predictions back to words; a word with no prediction counts as 'O'."""
        y_true = encoded.row_labels
        y_pred = [["O"] * len(tags) for tags in y_true]
        scored = [np.zeros(len(tags), dtype=bool) for tags in y_true]
        rows = encoded.row_of_feature.tolist()
        for index, (feature_labels, words) in enumerate(zip(encoded.feature_labels, encoded.words_of_feature)):
            row = rows[index]
            positions = [j for j, label in enumerate(feature_labels) if label != -100]
            predicted = np.argmax(logits[index][: len(feature_labels)], axis=-1)
            for position, word in zip(positions, words):
                y_pred[row][word] = spec.labels[int(predicted[position])]
                scored[row][word] = True
        missed = sum(int((~mask).sum()) for mask in scored)
        if missed:
            logger.warning(
                "%s: %d words had no sub-word token to predict from and are scored as 'O'",
                encoded.records.source,
                missed,
            )
        return ner_metrics(y_true, y_pred)


TASK_KINDS: dict[str, TaskKind] = {
    kind.name: kind
    for kind in (ClassificationKind(), PairClassificationKind(), MultiLabelKind(), RegressionKind(), NerKind())
}
