"""Batches: dynamic padding, seeded (optionally length-grouped) order that resumes exactly."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from nlptransfer.preprocessing import arrow_column

logger = logging.getLogger(__name__)
PAD_VALUES = {"labels": -100, "attention_mask": 0, "token_type_ids": 0}


def multi_hot(value) -> bool:
    """A list of floats is a multi-label target (one per label, the same width in every row): never padded."""
    return bool(value) and isinstance(value[0], float)


class PaddingCollator:
    """Pad every list field to the longest in the batch, rounded up to `pad_to_multiple_of` when given
    (tensor cores run widths that are multiples of 8 fastest), but multi-hot targets (`multi_hot`);
    `feature_index` lets scoring find each row. Features without an `attention_mask` (the encoded splits store
    none: before padding it is all ones) get one: 1 on their tokens, 0 on the padding."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_values = {"input_ids": pad_token_id, **PAD_VALUES}
        self.pad_to_multiple_of = pad_to_multiple_of

    def width(self, longest: int) -> int:
        """The padded width of a batch whose longest row has `longest` tokens."""
        multiple = self.pad_to_multiple_of
        return -(-longest // multiple) * multiple if multiple else longest

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in features[0]:
            values = [feature[key] for feature in features]
            if isinstance(values[0], list) and not multi_hot(values[0]):
                width = self.width(max(len(value) for value in values))
                pad = self.pad_values.get(key, 0)
                batch[key] = torch.tensor([value + [pad] * (width - len(value)) for value in values])
            else:
                batch[key] = torch.tensor(values)
        if "attention_mask" not in batch and "input_ids" in batch:
            lengths = torch.tensor([len(feature["input_ids"]) for feature in features])
            batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]).long()
        return batch


class MultiTaskCollator(PaddingCollator):
    """Pad inputs as `PaddingCollator`; `labels` become {task name: tensor} in batch order (token
    labels padded to the batch width), and `task_ids` says which head each row goes to."""

    def __init__(self, pad_token_id: int, task_names: Sequence[str], pad_to_multiple_of: int | None = None):
        super().__init__(pad_token_id, pad_to_multiple_of)
        self.task_names = list(task_names)

    def __call__(self, features: Sequence[dict]) -> dict:
        per_task = ("labels", "teacher_logits")
        batch = super().__call__([{k: v for k, v in f.items() if k not in per_task} for f in features])
        if "labels" not in features[0]:
            return batch
        width = batch["input_ids"].shape[1]
        labels, targets = {}, {}
        for index, name in enumerate(self.task_names):
            rows = [f for f in features if f["task_ids"] == index]
            if not rows:
                continue
            if isinstance(rows[0]["labels"], list) and not multi_hot(rows[0]["labels"]):
                labels[name] = torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in rows])
            else:
                labels[name] = torch.tensor([f["labels"] for f in rows])
            if "teacher_logits" in rows[0]:  # a task with a teacher (`MultiTaskDistillation`)
                targets[name] = pad_targets([f["teacher_logits"] for f in rows], width)
        batch["labels"] = labels
        if targets:
            batch["teacher_logits"] = targets
        return batch


def pad_targets(targets: Sequence, width: int) -> torch.Tensor:
    """Teacher logits as one tensor: (rows, classes), or (rows, width, classes) for token tasks, padded
    with NaN (no target there)."""
    targets = [np.asarray(target, dtype=np.float32) for target in targets]
    if targets[0].ndim == 1:
        return torch.from_numpy(np.stack(targets))
    padded = np.full((len(targets), width, targets[0].shape[-1]), np.nan, dtype=np.float32)
    for i, target in enumerate(targets):
        padded[i, : len(target)] = target
    return torch.from_numpy(padded)


class Extended(Sequence):
    """The features of `base` (a list, a `datasets.Dataset`, another view) with more fields, computed when a row
    is read: no copy of the rows. `fields` maps a name to a value, or to a function of (index, feature)."""

    def __init__(self, base, **fields):
        self.base, self.fields = base, fields

    def __len__(self) -> int:
        return len(self.base)

    def _extend(self, index: int, feature: dict) -> dict:
        feature = dict(feature)
        for name, value in self.fields.items():
            feature[name] = value(index, feature) if callable(value) else value
        return feature

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        return self._extend(index, self.base[index])

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def __getitems__(self, indices: list[int]) -> list[dict]:  # a DataLoader reads a batch in one call
        getitems = getattr(self.base, "__getitems__", None)
        rows = getitems(list(indices)) if getitems is not None else [self.base[int(i)] for i in indices]
        return [self._extend(int(i), row) for i, row in zip(indices, rows)]


def feature_lengths(features) -> np.ndarray:
    """Each feature's token count: from the Arrow column of a `datasets.Dataset` (no row read), through views
    and concatenations, else by reading the rows."""
    if isinstance(features, Extended):
        return feature_lengths(features.base)
    if isinstance(features, ConcatDataset):
        return (
            np.concatenate([feature_lengths(part) for part in features.datasets])
            if features.datasets
            else np.zeros(0, int)
        )
    if "input_ids" in getattr(features, "column_names", ()):  # a datasets.Dataset
        import pyarrow.compute as pc

        ids = arrow_column(features, "input_ids")
        return pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.asarray([len(f["input_ids"]) for f in features], dtype=np.int64)


class EpochSampler(Sampler[int]):
    """A seeded shuffle that depends only on (seed, epoch), so a resumed run sees the same order.

    With `group_by_length`, examples are sorted by length inside shuffled mega-batches of 50
    batches, and batches are then shuffled: little padding, still random (the Trainer's scheme).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = False):
        self.lengths = np.asarray(lengths, dtype=np.int32)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def indices(self) -> np.ndarray:
        """This epoch's order, as int32 numpy (5M rows cost 20 MB, not 5M Python ints); length groups are sorted
        in place and the batches shuffled into one output array, so no copy of the order is made beside it."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator, dtype=torch.int32).numpy()
        if not self.group_by_length:
            return order
        mega, size = self.batch_size * 50, self.batch_size
        for start in range(0, len(order), mega):  # longest first in each mega-batch, ties in drawn order
            chunk = order[start : start + mega]
            chunk[:] = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
        # only the last mega-batch can end in a partial batch; it goes last so every batch but one is full
        batches = len(order) // size
        grouped = np.empty_like(order)
        permutation = torch.randperm(batches, generator=generator).numpy()
        np.take(
            order[: batches * size].reshape(batches, size),
            permutation,
            axis=0,
            out=grouped[: batches * size].reshape(batches, size),
        )
        grouped[batches * size :] = order[batches * size :]
        return grouped

    def __iter__(self) -> Iterator[int]:
        return map(int, self.indices())


def train_dataloader(
    features: list[dict],
    batch_size: int,
    collator: PaddingCollator,
    seed: int,
    group_by_length: bool,
    **options,
) -> DataLoader:
    """The seeded training order; `options` (`TrainArguments.dataloader_options`: workers, pinned memory) go
    to the DataLoader. The order is drawn in the main process, so workers change neither it nor a resume.
    A stream of features (a torch `IterableDataset`, `--streaming`) keeps its own seeded order; no length groups."""
    # its own generator: starting an epoch must not draw from the global RNG that dropout uses,
    # or a run resumed mid-epoch would see different dropout masks than an uninterrupted one
    generator = torch.Generator().manual_seed(seed)
    if isinstance(features, torch.utils.data.IterableDataset):
        if group_by_length:
            logger.info("a streamed training set is not grouped by length (its lengths are not known ahead)")
        return DataLoader(features, batch_size=batch_size, collate_fn=collator, generator=generator, **options)
    sampler = EpochSampler(feature_lengths(features), batch_size, seed, group_by_length)
    return DataLoader(
        _indexed(features),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        generator=generator,
        # workers kept between epochs: safe here, as this loader draws only from its own generator
        persistent_workers=options.get("num_workers", 0) > 0,
        **options,
    )


def has_length(loader) -> bool:
    """Whether a loader knows its number of batches (a stream's does not)."""
    try:
        len(loader)
    except TypeError:
        return False
    return True


def eval_dataloader(features: list[dict], batch_size: int, collator: PaddingCollator, **options) -> DataLoader:
    """Longest first: padding is small and a batch too big for memory shows up at once. `options` as in
    `train_dataloader`; its workers are not kept between passes: each pass over a loader without its own
    generator draws a worker seed from the global RNG (even with no workers), and a kept pool would draw
    it only once, so dropout after the first evaluation would differ from a run without workers."""
    order = np.argsort(-feature_lengths(features), kind="stable").tolist()
    return DataLoader(_indexed(features), batch_size=batch_size, sampler=order, collate_fn=collator, **options)


def _indexed(features) -> Extended:
    return Extended(features, feature_index=lambda index, feature: index)


def _masked(index: int, feature: dict):
    return [-100] * len(feature["labels"]) if isinstance(feature["labels"], list) else -100


def without_labels(features) -> Extended:
    """The same features with every gold label masked (-100): rows that teach through another signal
    (a teacher's soft targets, a domain classifier) and never through a label."""
    return Extended(features, labels=_masked)


def with_task(features, task_id: int) -> Extended:
    """The same features tagged with the index of their task (for `MultiTaskModel` and its collator)."""
    return Extended(features, task_ids=task_id)
