"""Task samplers and the multi-task batch sampler: proportions, determinism, resume, streams, accelerate."""

import random
from collections import Counter

import accelerate
import numpy as np
import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader

from nlptransfer.batching import EpochSampler
from nlptransfer.config import ConfigError
from nlptransfer.sampling import TASK_SAMPLERS, MultiTaskBatchSampler, build_task_sampler

SIZES = [100, 300, 600]


def make_lengths(sizes=SIZES, seed=0):
    rng = random.Random(seed)
    return [[rng.randint(4, 128) for _ in range(size)] for size in sizes]


def make_sampler(sizes=SIZES, batch_size=8, name="proportional", seed=13, **kwargs):
    return MultiTaskBatchSampler(make_lengths(sizes), batch_size, build_task_sampler(name), seed, **kwargs)


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_proportional_schedule_follows_sizes():
    generator = torch.Generator().manual_seed(0)
    schedule = build_task_sampler("proportional").schedule(SIZES, 20000, generator)
    counts = Counter(schedule)
    for task, size in enumerate(SIZES):
        assert counts[task] / len(schedule) == pytest.approx(size / sum(SIZES), abs=0.02)


def test_temperature_interpolates_between_proportional_and_uniform():
    proportional = build_task_sampler("proportional").probabilities(SIZES)
    assert build_task_sampler("temperature", temperature=1.0).probabilities(SIZES) == pytest.approx(proportional)
    hot = build_task_sampler("temperature", temperature=100.0).probabilities(SIZES)
    assert hot == pytest.approx([1 / 3] * 3, abs=0.01)
    default = build_task_sampler("temperature").probabilities(SIZES)  # T=2: in between
    assert proportional[0] < default[0] < 1 / 3
    assert build_task_sampler("uniform").probabilities(SIZES) == pytest.approx([1 / 3] * 3)


def test_round_robin_cycles_exactly():
    sampler = build_task_sampler("round_robin")
    assert sampler.schedule(SIZES, 7, torch.Generator()) == [0, 1, 2, 0, 1, 2, 0]
    assert sampler.probabilities(SIZES) == pytest.approx([1 / 3] * 3)
    batches = epoch_batches(make_sampler(name="round_robin"), 0)
    assert [make_sampler().task_of(batch[0]) for batch in batches[:6]] == [0, 1, 2, 0, 1, 2]


def test_unknown_sampler_is_named():
    with pytest.raises(ConfigError, match="'temprature'") as error:
        build_task_sampler("temprature")
    assert all(name in str(error.value) for name in TASK_SAMPLERS)
    with pytest.raises(ConfigError, match="positive"):
        build_task_sampler("temperature", temperature=0.0)


def test_length_and_full_batches():
    sampler = make_sampler(batch_size=7)
    batches = epoch_batches(sampler, 0)
    assert len(sampler) == len(batches) == -(-sum(SIZES) // 7)
    assert all(len(batch) == 7 for batch in batches)
    assert all(0 <= i < sum(SIZES) for batch in batches for i in batch)


def test_task_of_uses_offsets():
    sampler = make_sampler()
    assert [sampler.task_of(i) for i in (0, 99, 100, 399, 400, 999)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(IndexError):
        sampler.task_of(1000)


@pytest.mark.parametrize("mixed", [False, True])
def test_same_seed_and_epoch_same_batches(mixed):
    first = epoch_batches(make_sampler(mixed=mixed), 1)
    assert epoch_batches(make_sampler(mixed=mixed), 1) == first
    assert epoch_batches(make_sampler(mixed=mixed), 2) != first
    assert epoch_batches(make_sampler(mixed=mixed, seed=14), 1) != first


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("group_by_length", [False, True])
def test_resume_at_epoch_equals_running_through(mixed, group_by_length):
    # small tasks wrap around their streams within an epoch, so the replayed stream positions matter
    kwargs = dict(sizes=[13, 50, 201], batch_size=4, name="uniform", mixed=mixed, group_by_length=group_by_length)
    running = make_sampler(**kwargs)
    sequence = [epoch_batches(running, epoch) for epoch in range(3)]
    assert epoch_batches(make_sampler(**kwargs), 2) == sequence[2]
    assert make_sampler(**kwargs).stream_positions(2) != [0, 0, 0]


@pytest.mark.parametrize("mixed", [False, True])
def test_each_pass_covers_a_task_once(mixed):
    # round robin over two tasks: task 0 (100 examples) is drawn 100 times in 200 examples
    sampler = make_sampler(sizes=[100, 100], batch_size=1, name="round_robin", mixed=mixed)
    batches = epoch_batches(sampler, 0)
    task0 = [i for batch in batches for i in batch if sampler.task_of(i) == 0]
    assert sorted(task0) == list(range(100))


def test_small_task_cycles_through_full_passes():
    sampler = make_sampler(sizes=[10, 990], batch_size=5, name="uniform")
    small = [i for batch in epoch_batches(sampler, 0) for i in batch if sampler.task_of(i) == 0]
    assert len(small) > 30
    passes = [small[start : start + 10] for start in range(0, len(small) - 9, 10)]
    assert all(sorted(piece) == list(range(10)) for piece in passes)
    assert passes[0] != passes[1]  # each pass is a new shuffle


def test_homogeneous_and_mixed_batches():
    homogeneous = make_sampler(name="uniform")
    assert all(len({homogeneous.task_of(i) for i in batch}) == 1 for batch in epoch_batches(homogeneous, 0))
    mixed = make_sampler(name="uniform", mixed=True)
    tasks_per_batch = [len({mixed.task_of(i) for i in batch}) for batch in epoch_batches(mixed, 0)]
    assert max(tasks_per_batch) == 3 and sum(tasks_per_batch) / len(tasks_per_batch) > 2


def test_group_by_length_reduces_padding():
    lengths = make_lengths([37, 203, 1001])
    flat = [length for task in lengths for length in task]

    def padding(group_by_length):
        sampler = MultiTaskBatchSampler(lengths, 8, build_task_sampler("uniform"), 3, group_by_length=group_by_length)
        total = 0
        for epoch in range(3):  # later epochs start mid-pass and wrap the small tasks
            for batch in epoch_batches(sampler, epoch):
                sizes = [flat[i] for i in batch]
                total += max(sizes) * len(sizes) - sum(sizes)
        return total

    assert padding(True) < 0.3 * padding(False)


def test_schedule_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    epoch_batches(make_sampler(mixed=True, group_by_length=True), 3)
    assert torch.equal(torch.get_rng_state(), before)


def test_works_as_dataloader_batch_sampler():
    sampler = make_sampler()
    dataset = list(range(sum(SIZES)))
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=lambda x: x)
    sampler.set_epoch(1)
    assert list(loader) == epoch_batches(make_sampler(), 1)


def test_accelerate_prepared_loader_keeps_batches_and_epochs():
    sampler = make_sampler()
    loader = DataLoader(list(range(sum(SIZES))), batch_sampler=sampler, collate_fn=lambda x: x)
    prepared = accelerate.Accelerator(cpu=True).prepare(loader)
    reference = make_sampler()
    assert list(prepared) == epoch_batches(reference, 0)
    prepared.set_epoch(2)
    assert sampler.epoch == 2
    assert list(prepared) == epoch_batches(reference, 2)
    # DataLoaderShard counts epochs itself after a full pass
    assert list(prepared) == epoch_batches(reference, 3)


def test_set_epoch_reaches_sampler_through_accelerate_wrappers():
    # two processes wrap it in BatchSamplerShard, which has no set_epoch of its own
    sampler = make_sampler()
    loader = DataLoader(list(range(sum(SIZES))), batch_sampler=sampler, collate_fn=lambda x: x)
    shard = prepare_data_loader(loader, num_processes=2, process_index=1)
    shard.set_epoch(4)
    assert sampler.epoch == 4
    expected = epoch_batches(make_sampler(), 4)[1::2]
    assert list(shard)[: len(expected)] == expected  # then accelerate pads to an even number of batches
    # a resumed epoch skips batches through SkipBatchSampler
    prepared = accelerate.Accelerator(cpu=True).prepare(
        DataLoader(list(range(sum(SIZES))), batch_sampler=make_sampler(), collate_fn=lambda x: x)
    )
    prepared.set_epoch(5)
    skipped = accelerate.skip_first_batches(prepared, 3)
    skipped.set_epoch(5)
    assert list(skipped) == epoch_batches(make_sampler(), 5)[3:]


@pytest.mark.parametrize("processes", [2, 3])
def test_every_process_gets_the_same_task_at_each_step(processes):
    """ZeRO-3 needs every process on the same task's route in a step: accelerate deals batch k to process
    k % processes, and each of those processes' batches comes from one task."""
    sampler = make_sampler(processes=processes)
    shards = [
        list(
            prepare_data_loader(
                DataLoader(list(range(sum(SIZES))), batch_sampler=sampler, collate_fn=lambda x: x),
                num_processes=processes,
                process_index=rank,
            )
        )
        for rank in range(processes)
    ]
    assert len(sampler) % processes == 0 and all(len(shard) == len(sampler) // processes for shard in shards)
    for step in zip(*shards):
        assert len({sampler.task_of(batch[0]) for batch in step}) == 1
    # one process: the schedule (and every run's batches) as before the option existed
    assert make_sampler(processes=1).schedule(3) == make_sampler().schedule(3)


def reference_order(lengths, batch_size, seed, epoch, group_by_length):
    """The epoch order by its definition, with copies: a seeded permutation; with length grouping, each mega-batch
    of 50 batches sorted longest first (ties in drawn order), full batches shuffled, the partial one last."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=generator).numpy()
    if not group_by_length:
        return order
    lengths, full, partial = np.asarray(lengths), [], []
    for start in range(0, len(order), batch_size * 50):
        chunk = order[start : start + batch_size * 50]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        whole = len(chunk) // batch_size * batch_size
        full.append(chunk[:whole].reshape(-1, batch_size))
        partial.append(chunk[whole:])
    full = np.concatenate(full)
    return np.concatenate([full[torch.randperm(len(full), generator=generator).numpy()].reshape(-1), *partial])


@pytest.mark.parametrize("rows, batch_size", [(1, 4), (7, 4), (1000, 32), (12345, 8)])
@pytest.mark.parametrize("group_by_length", [False, True])
def test_epoch_order_is_its_definition(rows, batch_size, group_by_length):
    """The in-place, int32 `EpochSampler.indices` gives the order of the plain definition (so runs resume across
    versions), for sizes with and without a partial last batch."""
    lengths = make_lengths([rows], seed=rows)[0]
    sampler = EpochSampler(lengths, batch_size, seed=5, group_by_length=group_by_length)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        expected = reference_order(lengths, batch_size, 5, epoch, group_by_length)
        assert sampler.indices().tolist() == expected.tolist()
