"""Task kinds: how each kind checks its rows, builds its label set, tokenizes, scores and computes its loss.

A new kind is one class registered in `TASK_KINDS`; recipes and models never branch on the kind's
name. What a model needs to build a head and a loss for any kind:

- `head`: "sequence" (one prediction per example, from the pooled output) or "token" (one per token);
- `num_outputs(spec)`: the width of the head (the number of classes; 1 for regression);
- `loss(logits, labels)`: the mean loss over labelled positions (label -100 marks an unlabelled one);
- `has_label_set`: whether the kind predicts names from a label set (False for regression);
- `model_config(spec)`: the transformers config settings of its head (num_labels, id2label, problem_type).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, PreTrainedTokenizerBase

from nlptransfer.errors import ConfigError, DataError
from nlptransfer.metrics import classification_metrics, ner_metrics, regression_metrics
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
        )

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


@dataclass
class Encoded:
    """Model inputs of one split, plus what scoring needs to map predictions back to rows and words."""

    features: list[dict]
    records: Records
    row_labels: list
    row_of_feature: list[int]
    words_of_feature: list[list[int]] = field(default_factory=list)

    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def _field(records: Records, index: int, column: str, flag: str):
    row = records.rows[index]
    if column not in row:
        raise DataError(
            f"{records.where(index)}: no field {column!r} (fields: {', '.join(map(repr, row))}); set {flag}"
        )
    return row[column]


def _label_name(value, where: str, column: str) -> str:
    if (
        isinstance(value, bool)
        or not isinstance(value, (str, int, float))
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise DataError(f"{where}: field {column!r} holds {value!r}; expected a class name or an integer class id")
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
        raise DataError(f"{where}: field {column!r} holds {value!r}; expected a number (regression target)")
    if not math.isfinite(number):
        raise DataError(f"{where}: field {column!r} holds {value!r}; expected a finite number (regression target)")
    return number


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled positions: (n, C) logits with (n,) labels, or (n, L, C) with (n, L)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), ignore_index=-100)


def mse_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (n, 1) logits and (n,) targets."""
    return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))


class TaskKind:
    """What every kind provides; the defaults are those of a kind that predicts classes."""

    name: ClassVar[str]
    head: ClassVar[str]  # "sequence" (one prediction per example, pooled) or "token" (one per token)
    auto_model: ClassVar[type]
    default_metric: ClassVar[str]  # higher is better
    has_label_set: ClassVar[bool] = True
    problem_type: ClassVar[str | None] = None  # transformers' config.problem_type of the head, when it has one
    uncertainty_factor: ClassVar[float] = (
        1.0  # Kendall et al.: 1/sigma^2 for likelihoods of classes, 1/(2 sigma^2) Gaussian
    )

    def check_spec(self, spec: TaskSpec) -> None:
        """Raise ConfigError when `spec` lacks something this kind needs (called before reading any row)."""

    def num_outputs(self, spec: TaskSpec) -> int:
        return len(spec.labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(logits, labels)

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

    def check(self, records: Records, spec: TaskSpec) -> list:
        """Validate every row; return its labels in row order."""
        raise NotImplementedError

    def encode(
        self, records: Records, labels: list, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec, max_length: int
    ) -> Encoded:
        raise NotImplementedError

    def score(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> dict[str, float]:
        raise NotImplementedError

    def decode(self, logits: torch.Tensor, spec: TaskSpec, encoding, row: int, text: str):
        """One text's prediction for serving (`MultiTaskModel.predict`): the label name and its probability."""
        probs = logits.softmax(-1)
        best = int(probs.argmax())
        return {"label": spec.labels[best], "score": float(probs[best])}


class _SequenceKind(TaskKind):
    """One text (or a pair of texts) in, one prediction out."""

    head = "sequence"
    auto_model = AutoModelForSequenceClassification

    def row_label(self, value, where: str, column: str):
        raise NotImplementedError

    def feature_label(self, label, spec: TaskSpec):
        raise NotImplementedError

    def check(self, records: Records, spec: TaskSpec) -> list:
        """Validate every row; return its labels in row order."""
        self.check_spec(spec)
        labels = []
        for i, row in enumerate(records.rows):
            if spec.tokens_column in row and spec.tags_column in row and spec.text_column not in row:
                raise DataError(
                    f"{records.where(i)}: this row has token/tag lists ({spec.tokens_column!r}, {spec.tags_column!r}) "
                    f"but no {spec.text_column!r} field; for tagging use --task_type ner"
                )
            columns = [(spec.text_column, "--text_column_name")]
            if spec.text_pair_column:
                columns.append((spec.text_pair_column, "--text_pair_column_name"))
            for column, flag in columns:
                text = _field(records, i, column, flag)
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"{records.where(i)}: field {column!r} is empty or not text: {text!r}")
            labels.append(
                self.row_label(
                    _field(records, i, spec.label_column, "--label_column_name"), records.where(i), spec.label_column
                )
            )
        return labels

    def encode(
        self, records: Records, labels: list, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec, max_length: int
    ) -> Encoded:
        texts = [row[spec.text_column] for row in records.rows]
        pairs = [row[spec.text_pair_column] for row in records.rows] if spec.text_pair_column else None
        encoding = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        features = []
        for i in range(len(records)):
            feature = {key: encoding[key][i] for key in encoding.keys()}
            feature["labels"] = self.feature_label(labels[i], spec)
            features.append(feature)
        truncated = sum(len(f["input_ids"]) >= max_length for f in features)
        if truncated:
            logger.info(
                "%s: %d of %d examples reach max_seq_length=%d and were truncated",
                records.source,
                truncated,
                len(features),
                max_length,
            )
        return Encoded(features, records, labels, list(range(len(records))))


class ClassificationKind(_SequenceKind):
    """One class per text, or per pair of texts when `spec.text_pair_column` is set."""

    name = "classification"
    default_metric = "accuracy"
    problem_type = "single_label_classification"  # also with one class, which transformers would take for regression

    def row_label(self, value, where: str, column: str) -> str:
        return _label_name(value, where, column)

    def feature_label(self, label: str, spec: TaskSpec) -> int:
        return spec.label2id[label]

    def score(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> dict[str, float]:
        y_pred = [int(np.argmax(row_logits)) for row_logits in logits]
        y_true = [f["labels"] for f in encoded.features]
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

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return mse_loss(logits, labels)

    def row_label(self, value, where: str, column: str) -> float:
        return _label_number(value, where, column)

    def feature_label(self, label: float, spec: TaskSpec) -> float:
        return label

    def score(self, encoded: Encoded, logits: list[np.ndarray], spec: TaskSpec) -> dict[str, float]:
        y_pred = [float(np.reshape(row_logits, -1)[0]) for row_logits in logits]
        y_true = [f["labels"] for f in encoded.features]
        return regression_metrics(y_true, y_pred)


class NerKind(TaskKind):
    name = "ner"
    head = "token"
    auto_model = AutoModelForTokenClassification
    default_metric = "f1"

    def label_order(self, names: set[str]) -> list[str]:
        # "O" first, then by entity type with B- before I-: stable whatever the file order
        return sorted(names, key=lambda tag: (tag != "O", tag[2:], tag[:2]))

    def check(self, records: Records, spec: TaskSpec) -> list[list[str]]:
        """Validate every row; return its IOB2 tag sequences in row order."""
        self.check_spec(spec)
        all_tags = []
        for i, row in enumerate(records.rows):
            if spec.tokens_column not in row and spec.label_column in row:
                raise DataError(
                    f"{records.where(i)}: task 'ner' needs a word list {spec.tokens_column!r} and a tag list "
                    f"{spec.tags_column!r} per row, but this row has a single label {spec.label_column!r}; "
                    f"use --task_type classification, or set --tokens_column_name/--tags_column_name"
                )
            tokens = _field(records, i, spec.tokens_column, "--tokens_column_name")
            tags = _field(records, i, spec.tags_column, "--tags_column_name")
            if not isinstance(tokens, list) or not isinstance(tags, list):
                raise DataError(
                    f"{records.where(i)}: fields {spec.tokens_column!r} and {spec.tags_column!r} must be lists"
                )
            if not tokens:
                raise DataError(f"{records.where(i)}: field {spec.tokens_column!r} is an empty sentence")
            if len(tokens) != len(tags):
                raise DataError(
                    f"{records.where(i)}: {spec.tokens_column!r} has {len(tokens)} items but {spec.tags_column!r} has {len(tags)}"
                )
            if not all(isinstance(token, str) and token for token in tokens):
                raise DataError(f"{records.where(i)}: field {spec.tokens_column!r} holds an empty or non-text word")
            all_tags.append(iob1_to_iob2([_label_name(tag, records.where(i), spec.tags_column) for tag in tags]))
        return all_tags

    def encode(
        self,
        records: Records,
        labels: list[list[str]],
        tokenizer: PreTrainedTokenizerBase,
        spec: TaskSpec,
        max_length: int,
    ) -> Encoded:
        """Label the first sub-word of each word (-100 elsewhere); split sentences too long into windows."""
        label2id = spec.label2id
        budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        sentences = [row[spec.tokens_column] for row in records.rows]
        full = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
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
        split = len(windows) - len(sentences)
        if split:
            logger.info(
                "%s: %d sentences longer than max_seq_length=%d were split into windows",
                records.source,
                split,
                max_length,
            )
        encoding = tokenizer(
            [sentences[row][start:end] for row, start, end in windows],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
        )
        features, words_of_feature = [], []
        for i, (row, start, _) in enumerate(windows):
            feature = {key: encoding[key][i] for key in encoding.keys()}
            feature_labels, words, previous = [], [], None
            for word in encoding.word_ids(i):
                if word is None or word == previous:
                    feature_labels.append(-100)  # first sub-word only: seqeval must score words, not pieces
                else:
                    feature_labels.append(label2id[labels[row][start + word]])
                    words.append(start + word)
                previous = word
            feature["labels"] = feature_labels
            features.append(feature)
            words_of_feature.append(words)
        return Encoded(features, records, labels, [row for row, _, _ in windows], words_of_feature)

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
        for index, (feature, words) in enumerate(zip(encoded.features, encoded.words_of_feature)):
            row = encoded.row_of_feature[index]
            positions = [j for j, label in enumerate(feature["labels"]) if label != -100]
            predicted = np.argmax(logits[index][: len(feature["labels"])], axis=-1)
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
    kind.name: kind for kind in (ClassificationKind(), PairClassificationKind(), RegressionKind(), NerKind())
}
