"""N-way K-shot episodes over a pool of labelled classes, and a class split that cannot leak.

    meta_train, meta_test = split_classes(pool.classes, 0.4, seed=0)     # disjoint, fixed by the seed
    meta_train, meta_val, meta_test = split_meta_classes(pool.classes, 0.4, 0.25, seed=0)  # and a validation group
    sampler = EpisodeSampler(pool.subset(meta_test).class_rows, n_way=5, k_shot=5, query=5, seed=1)
    episode = sampler.episode(17)                  # the same episode every time, for every model

An episode is a pure function of (seed, index), so every starting point of a benchmark is scored
on exactly the same support and query rows. A class needs `k_shot + query` rows to be sampled;
smaller classes are left out (`EpisodeSampler.skipped`), never sampled with repeats.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from nlptransfer.batching import PaddingCollator
from nlptransfer.data import encode_splits
from nlptransfer.errors import ConfigError
from nlptransfer.readers import Records
from nlptransfer.tasks import TaskSpec


def split_classes(
    classes: Sequence[str], test: float, seed: int, flag: str = "--meta_test_classes"
) -> tuple[list[str], list[str]]:
    """(meta_train, meta_test): disjoint, together all of `classes`, the same for the same seed.

    `test` below 1 is the fraction of classes held out for meta-testing (rounded, at least one);
    1 or more is their number. The input order does not matter: classes are sorted first.
    """
    names = sorted(set(classes))
    if len(names) != len(classes):
        raise ConfigError(f"split_classes: class names repeat in {list(classes)}")
    if test <= 0 or (test >= 1 and not float(test).is_integer()):
        raise ConfigError(f"{flag} must be a fraction in (0, 1) or a whole number of classes, got {test}")
    n_test = max(1, round(test * len(names))) if test < 1 else int(test)
    if not 1 <= n_test < len(names):
        raise ConfigError(f"{flag} {test} holds out {n_test} of {len(names)} classes; both sides need at least one")
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    meta_test, meta_train = sorted(shuffled[:n_test]), sorted(shuffled[n_test:])
    if set(meta_train) & set(meta_test):  # cannot happen by construction; the whole protocol rests on it
        raise AssertionError(f"meta-train and meta-test classes overlap: {set(meta_train) & set(meta_test)}")
    return meta_train, meta_test


def split_meta_classes(
    classes: Sequence[str], test: float, validation: float, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """(meta_train, meta_val, meta_test): `split_classes` holds out the meta-test classes (the same ones as
    without validation), then `validation` (a fraction of the classes left, or a number; 0: none) of the rest
    are held out of meta-training too, to choose settings on: three disjoint groups."""
    rest, meta_test = split_classes(classes, test, seed)
    if not validation:
        return rest, [], meta_test
    meta_train, meta_val = split_classes(rest, validation, seed, flag="--meta_val_classes")
    return meta_train, meta_val, meta_test


@dataclass
class ClassPool:
    """Tokenized rows and, per class, the indices of its rows; `batch` pads any subset into tensors."""

    features: list[dict]
    class_rows: dict[str, list[int]]
    pad_token_id: int

    @classmethod
    def from_records(
        cls,
        records: Records,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        text_column: str = "text",
        label_column: str = "label",
    ) -> ClassPool:
        """Validate (file:line errors) and tokenize every row, like the fine-tuning recipe reads its data."""
        spec = TaskSpec(name="episodes", kind="classification", text_column=text_column, label_column=label_column)
        encoded = encode_splits({"train": records}, spec, tokenizer, max_length)["train"]
        class_rows: dict[str, list[int]] = {name: [] for name in spec.labels}
        for index, label in enumerate(encoded.feature_labels):
            class_rows[spec.labels[label]].append(index)
        features = encoded.features.remove_columns(["labels"]).to_list()
        return cls(features, class_rows, tokenizer.pad_token_id)

    @property
    def classes(self) -> list[str]:
        return sorted(self.class_rows)

    def subset(self, classes: Sequence[str]) -> ClassPool:
        """The same rows, restricted to `classes` (a meta-train or meta-test group)."""
        unknown = sorted(set(classes) - set(self.class_rows))
        if unknown:
            raise ConfigError(f"classes {unknown} are not in the data (known: {self.classes})")
        return ClassPool(self.features, {name: self.class_rows[name] for name in classes}, self.pad_token_id)

    def batch(self, rows: Sequence[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        batch = PaddingCollator(self.pad_token_id)([self.features[i] for i in rows])
        return {key: value.to(device) for key, value in batch.items()}


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot task. Label i is `classes[i]`; support and query are row indices of the pool."""

    index: int
    classes: tuple[str, ...]
    support: tuple[int, ...]
    support_labels: tuple[int, ...]
    query: tuple[int, ...]
    query_labels: tuple[int, ...]
    seed: int  # seeds the dropout of whatever trains on this episode, so every model sees the same masks

    @property
    def n_way(self) -> int:
        return len(self.classes)

    def merged(self) -> Episode:
        """Support and query as one support set, the query left empty (for a learner that uses all the rows)."""
        return replace(
            self,
            support=self.support + self.query,
            support_labels=self.support_labels + self.query_labels,
            query=(),
            query_labels=(),
        )


@dataclass
class EpisodeSampler:
    """Episodes of `n_way` classes with `k_shot` support and `query` query rows each, drawn without
    replacement inside an episode; the episode with a given index depends only on (seed, index)."""

    class_rows: Mapping[str, Sequence[int]]
    n_way: int
    k_shot: int
    query: int
    seed: int = 0
    eligible: list[str] = field(init=False)
    skipped: list[str] = field(init=False)

    def __post_init__(self):
        for flag, value in (("--n_way", self.n_way), ("--k_shot", self.k_shot), ("--query", self.query)):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if self.n_way < 2:
            raise ConfigError(f"--n_way must be at least 2 (one class is no classification), got {self.n_way}")
        needed = self.k_shot + self.query
        self.eligible = sorted(name for name, rows in self.class_rows.items() if len(rows) >= needed)
        self.skipped = sorted(set(self.class_rows) - set(self.eligible))
        if len(self.eligible) < self.n_way:
            raise ConfigError(
                f"--n_way {self.n_way}: only {len(self.eligible)} of {len(self.class_rows)} classes have the "
                f"--k_shot + --query = {needed} rows an episode needs (too small: {self.skipped})"
            )

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, index])
        chosen = rng.choice(len(self.eligible), self.n_way, replace=False)  # random order: label i is arbitrary
        classes = tuple(self.eligible[i] for i in chosen)
        support, support_labels, query, query_labels = [], [], [], []
        for label, name in enumerate(classes):
            rows = self.class_rows[name]
            picked = [rows[i] for i in rng.choice(len(rows), self.k_shot + self.query, replace=False)]
            support += picked[: self.k_shot]
            query += picked[self.k_shot :]
            support_labels += [label] * self.k_shot
            query_labels += [label] * self.query
        seed = int(rng.integers(2**31))
        return Episode(index, classes, tuple(support), tuple(support_labels), tuple(query), tuple(query_labels), seed)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% confidence interval): 1.96 standard errors of the mean
    (`scipy.stats.sem`, sample std / sqrt(n)), the normal approximation few-shot papers report."""
    from scipy.stats import sem  # imported here: scipy adds warning filters on import, `import nlptransfer` must not

    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(np.mean(values))
    if n == 1:
        return mean, float("nan")
    return mean, 1.96 * float(sem(values))
