"""Batches: dynamic padding, seeded (optionally length-grouped) order that resumes exactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

PAD_VALUES = {"labels": -100, "attention_mask": 0, "token_type_ids": 0}


def multi_hot(value) -> bool:
    """A list of floats is a multi-label target (one per label, the same width in every row): never padded."""
    return bool(value) and isinstance(value[0], float)


class PaddingCollator:
    """Pad every list field to the longest in the batch, rounded up to `pad_to_multiple_of` when given
    (tensor cores run widths that are multiples of 8 fastest), but multi-hot targets (`multi_hot`);
    `feature_index` lets scoring find each row."""

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


class EpochSampler(Sampler[int]):
    """A seeded shuffle that depends only on (seed, epoch), so a resumed run sees the same order.

    With `group_by_length`, examples are sorted by length inside shuffled mega-batches of 50
    batches, and batches are then shuffled: little padding, still random (the Trainer's scheme).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = False):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if not self.group_by_length:
            return iter(order)
        mega = self.batch_size * 50
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        # partial batches go last so every batch but the final one is full
        return iter([i for batch in shuffled + partial for i in batch])


def train_dataloader(
    features: list[dict],
    batch_size: int,
    collator: PaddingCollator,
    seed: int,
    group_by_length: bool,
    **options,
) -> DataLoader:
    """The seeded training order; `options` (`TrainArguments.dataloader_options`: workers, pinned memory) go
    to the DataLoader. The order is drawn in the main process, so workers change neither it nor a resume."""
    sampler = EpochSampler([len(f["input_ids"]) for f in features], batch_size, seed, group_by_length)
    # its own generator: starting an epoch must not draw from the global RNG that dropout uses,
    # or a run resumed mid-epoch would see different dropout masks than an uninterrupted one
    generator = torch.Generator().manual_seed(seed)
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


def eval_dataloader(features: list[dict], batch_size: int, collator: PaddingCollator, **options) -> DataLoader:
    """Longest first: padding is small and a batch too big for memory shows up at once. `options` as in
    `train_dataloader`; its workers are not kept between passes: each pass over a loader without its own
    generator draws a worker seed from the global RNG (even with no workers), and a kept pool would draw
    it only once, so dropout after the first evaluation would differ from a run without workers."""
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    return DataLoader(_indexed(features), batch_size=batch_size, sampler=order, collate_fn=collator, **options)


def _indexed(features: list[dict]) -> list[dict]:
    return [{**feature, "feature_index": i} for i, feature in enumerate(features)]


def without_labels(features: list[dict]) -> list[dict]:
    """The same features with every gold label masked (-100): rows that teach through another signal
    (a teacher's soft targets, a domain classifier) and never through a label."""
    return [{**f, "labels": [-100] * len(f["labels"]) if isinstance(f["labels"], list) else -100} for f in features]


def with_task(features: list[dict], task_id: int) -> list[dict]:
    """The same features tagged with the index of their task (for `MultiTaskModel` and its collator)."""
    return [{**feature, "task_ids": task_id} for feature in features]
