"""Multi-task sampling: which task each batch (or example) comes from, and seeded per-task streams.

A task sampler turns task sizes into probabilities and a schedule of task indices. The
`MultiTaskBatchSampler` reads each task's examples from its own endless stream (pass after pass
of `EpochSampler` shuffles), so small tasks cycle and large ones are never repeated within a
pass. The batches of an epoch depend only on (seed, epoch): a resumed run sees the same ones.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Sampler

from nlptransfer.batching import EpochSampler
from nlptransfer.errors import ConfigError


class TaskSampler:
    """Base: probabilities from `weights`, a schedule drawn with replacement from them."""

    name: ClassVar[str]

    def weights(self, sizes: Sequence[int]) -> list[float]:
        raise NotImplementedError

    def probabilities(self, sizes: Sequence[int]) -> list[float]:
        weights = self.weights(sizes)
        total = sum(weights)
        return [weight / total for weight in weights]

    def schedule(self, sizes: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
        """`count` task indices drawn independently from `probabilities(sizes)`."""
        if count == 0:
            return []
        probabilities = torch.tensor(self.probabilities(sizes), dtype=torch.float64)
        return torch.multinomial(probabilities, count, replacement=True, generator=generator).tolist()


@dataclass
class ProportionalSampler(TaskSampler):
    """Task probability proportional to its number of training examples."""

    name: ClassVar[str] = "proportional"

    def weights(self, sizes: Sequence[int]) -> list[float]:
        return [float(size) for size in sizes]


@dataclass
class TemperatureSampler(TaskSampler):
    """Probability proportional to size^(1/T): T=1 is proportional, large T approaches uniform."""

    name: ClassVar[str] = "temperature"
    temperature: float = 2.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ConfigError(f"--sampling_temperature must be positive, got {self.temperature}")

    def weights(self, sizes: Sequence[int]) -> list[float]:
        return [float(size) ** (1.0 / self.temperature) for size in sizes]


@dataclass
class UniformSampler(TaskSampler):
    """Every task equally likely, whatever its size."""

    name: ClassVar[str] = "uniform"

    def weights(self, sizes: Sequence[int]) -> list[float]:
        return [1.0] * len(sizes)


@dataclass
class RoundRobinSampler(UniformSampler):
    """Tasks in turn, 0, 1, 2, 0, 1, 2, ...; no randomness (its probabilities are uniform)."""

    name: ClassVar[str] = "round_robin"

    def schedule(self, sizes: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
        return [i % len(sizes) for i in range(count)]


TASK_SAMPLERS: dict[str, type[TaskSampler]] = {
    cls.name: cls for cls in (ProportionalSampler, TemperatureSampler, UniformSampler, RoundRobinSampler)
}


def build_task_sampler(name: str, temperature: float = 2.0) -> TaskSampler:
    """The registered sampler `name`, given `temperature` if it takes one."""
    if name not in TASK_SAMPLERS:
        raise ConfigError(f"--task_sampling {name!r} is not known; choose one of {sorted(TASK_SAMPLERS)}")
    cls = TASK_SAMPLERS[name]
    options = {"temperature": temperature}
    return cls(**{f.name: options[f.name] for f in dataclasses.fields(cls) if f.name in options})


def derive_seed(*parts: object) -> int:
    """A stable 62-bit seed from `parts` (not Python's `hash`, so the same in every process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


class _TaskStream:
    """One task's endless stream of local indices from `position` on: pass after pass of seeded shuffles."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, task: int, group_by_length: bool, position: int):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.task = task
        self.group_by_length = group_by_length
        self.pass_, self.index = divmod(position, len(lengths))
        self.order = self._pass_order(self.pass_)

    def _pass_order(self, pass_: int) -> list[int]:
        sampler = EpochSampler(
            self.lengths, self.batch_size, derive_seed(self.seed, "task", self.task, pass_), self.group_by_length
        )
        sampler.set_epoch(pass_)
        order = sampler.indices()
        # a pass that starts mid-batch (the previous pass ended with a partial batch) is rotated so
        # that `head` examples finish that batch and its length groups still line up with batches
        head = (-pass_ * len(order)) % self.batch_size
        start = -head % len(order)
        return np.concatenate([order[start:], order[:start]])

    def take(self, count: int) -> list[int]:
        taken = []
        while len(taken) < count:
            if self.index == len(self.order):
                self.pass_, self.index = self.pass_ + 1, 0
                self.order = self._pass_order(self.pass_)
            piece = self.order[self.index : self.index + count - len(taken)].tolist()
            taken += piece
            self.index += len(piece)
        return taken


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Batches of global indices into the concatenated tasks, for `DataLoader(batch_sampler=...)`.

    `lengths[t][i]` is the token length of example i of task t; its global index is
    `offsets[t] + i`. By default each batch is one task drawn by `task_sampler`; with `mixed`
    the task is drawn per example. Every batch holds exactly `batch_size` examples.

    With `processes` > 1 (accelerate deals batch k to process k % processes) each task is drawn for that many
    batches in a row, so all processes train on the same task at every step. DeepSpeed needs it: ZeRO-2 reduces
    gradients in buckets in the order the backward pass produces them, which must be the same on every process
    (measured: a per-task adapter never trained, its gradients added to another task's), and ZeRO-3 gathers the
    weights of the routes a step uses. (Under DDP processes may train on different tasks in one step.)
    """

    def __init__(
        self,
        lengths: list[list[int]],
        batch_size: int,
        task_sampler: TaskSampler,
        seed: int,
        group_by_length: bool = False,
        mixed: bool = False,
        processes: int = 1,
    ):
        if not lengths or any(len(task) == 0 for task in lengths):
            raise ConfigError(f"every task needs training examples, got sizes {[len(task) for task in lengths]}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = [np.asarray(task, dtype=np.int64) for task in lengths]
        self.batch_size = batch_size
        self.task_sampler = task_sampler
        self.seed = seed
        self.group_by_length = group_by_length
        self.mixed = mixed
        self.processes = processes
        self.sizes = [len(task) for task in self.lengths]
        self.offsets = [sum(self.sizes[:t]) for t in range(len(self.sizes))]
        self.epoch = 0
        self._used: dict[int, list[int]] = {}  # epoch -> examples each task's stream gives that epoch

    @property
    def sampler(self) -> MultiTaskBatchSampler:
        # accelerate's DataLoaderShard.set_epoch reaches `batch_sampler.batch_sampler.sampler` when it
        # wraps this in BatchSamplerShard (several processes) or SkipBatchSampler (skip_first_batches)
        return self

    @property
    def probabilities(self) -> list[float]:
        return self.task_sampler.probabilities(self.sizes)

    def task_of(self, global_index: int) -> int:
        """The task a global index belongs to."""
        if not 0 <= global_index < sum(self.sizes):
            raise IndexError(f"global index {global_index} is outside 0..{sum(self.sizes) - 1}")
        return bisect.bisect_right(self.offsets, global_index) - 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        steps = math.ceil(sum(self.sizes) / (self.batch_size * self.processes))
        return steps * self.processes

    def schedule(self, epoch: int) -> list[int]:
        """The task of every batch (or, with `mixed`, of every example) of `epoch`."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "schedule", epoch))
        if self.mixed:
            return self.task_sampler.schedule(self.sizes, len(self) * self.batch_size, generator)
        per_step = self.task_sampler.schedule(self.sizes, len(self) // self.processes, generator)
        return [task for task in per_step for _ in range(self.processes)]

    def _examples_used(self, epoch: int) -> list[int]:
        if epoch not in self._used:
            per_draw = 1 if self.mixed else self.batch_size
            counts = torch.bincount(torch.tensor(self.schedule(epoch), dtype=torch.long), minlength=len(self.sizes))
            self._used[epoch] = [int(count) * per_draw for count in counts]
        return self._used[epoch]

    def stream_positions(self, epoch: int) -> list[int]:
        """Where each task's stream stands at the start of `epoch` (replays the schedules before it)."""
        positions = [0] * len(self.sizes)
        for earlier in range(epoch):
            positions = [p + used for p, used in zip(positions, self._examples_used(earlier))]
        return positions

    def task_counts(self, batches: int) -> list[float]:
        """How many batches' worth of examples each task got in the first `batches` batches (over epochs)."""
        counts, epoch, per_batch = [0.0] * len(self.sizes), 0, self.batch_size if self.mixed else 1
        while batches > 0:
            draws = self.schedule(epoch)[: batches * per_batch]
            for t in draws:
                counts[t] += 1 / per_batch
            batches -= len(draws) // per_batch
            epoch += 1
        return counts

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        streams = [
            _TaskStream(self.lengths[t], self.batch_size, self.seed, t, self.group_by_length, position)
            for t, position in enumerate(self.stream_positions(epoch))
        ]
        schedule = self.schedule(epoch)
        if self.mixed:
            for start in range(0, len(schedule), self.batch_size):
                yield [self.offsets[t] + streams[t].take(1)[0] for t in schedule[start : start + self.batch_size]]
        else:
            for t in schedule:
                yield [self.offsets[t] + i for i in streams[t].take(self.batch_size)]
