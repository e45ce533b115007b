"""Rows to features with `datasets`: checking and tokenizing as batched `Dataset.map` passes whose results are
cached under a fingerprint of the rows and everything that decides the output (settings, label set, tokenizer),
and, for `--streaming`, the same per-batch work done as training reads a file.

The task kinds (`nlptransfer.tasks`) say what a row means (`check_row`) and how a batch of rows becomes model
inputs (`encode_batch`); this module runs them over Arrow, in one process or several.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Iterator

import pyarrow as pa
import torch

from nlptransfer.encoders import cpu_cores
from nlptransfer.readers import BATCH_ROWS, LINE, Records, locate

FEATURE_INFO = ("length", "__row__", "__words__")
"""Columns `encode` adds beside the model inputs: each feature's token count, its row, its words (token tasks)."""


def arrow_column(dataset, name: str):
    """One column of a `datasets.Dataset` as an Arrow array (zero-copy unless rows were selected); an empty
    split's map output has no columns: an empty array."""
    if name not in dataset.column_names:
        return pa.chunked_array([], pa.null())
    if dataset._indices is None:
        return dataset.data.column(name)
    return dataset.with_format("arrow")[name]


ENCODING_VERSION = "4"
"""Part of every check/encode cache fingerprint: bump it when what they write changes."""


def tokenizer_key(tokenizer) -> str:
    """A tokenizer's identity for caches: its class, its full definition (a fast tokenizer's JSON without the
    truncation/padding state a call leaves behind, else its vocabulary) and special tokens."""
    key = hashlib.sha256(
        json.dumps(
            [type(tokenizer).__name__, tokenizer.all_special_tokens, getattr(tokenizer, "padding_side", None)]
        ).encode()
    )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
        # its fields come in a fixed order (version, truncation, padding, added_tokens, ...): the state a call
        # leaves is all before `added_tokens`, so the rest is hashed as it is (no parse: ~1 ms, not ~50)
        start = definition.find(',"added_tokens":')
        if start < 0:
            state = json.loads(definition)
            state.pop("truncation", None)
            state.pop("padding", None)
            definition = json.dumps(state, sort_keys=True)
        key.update(definition[max(start, 0) :].encode())
    else:
        key.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return key.hexdigest()[:24]


def row_labels(batch: dict[str, list], kind, spec, source: str, unit: str) -> list:
    """Every row of a batch checked by `kind.check_row`."""
    columns = [name for name in batch if name != LINE]
    labels = []
    for i, line in enumerate(batch[LINE]):
        row = {name: batch[name][i] for name in columns}
        labels.append(kind.check_row(row, locate(source, unit, line), spec))
    return labels


def check_rows(batch, indices, kind, spec, source, unit) -> dict:
    return {"label": row_labels(batch, kind, spec, source, unit)}


COMPACT = {"token_type_ids": pa.list_(pa.int8()), "length": pa.int32()}
"""Arrow types of the columns `encode_rows` writes beside `input_ids` (an eighth or half of int64)."""


def id_type(tokenizer) -> pa.DataType:
    """The narrowest Arrow type for the tokenizer's ids: uint16 below 65,536 tokens (as nanoGPT stores them; a
    quarter of int64), else int32. Less to write, to map and to hold in the page cache."""
    return pa.list_(pa.uint16() if len(tokenizer) <= 2**16 else pa.int32())


def encode_rows(batch, indices, kind, spec, tokenizer, max_length, source, unit, labels=None, ids=None) -> pa.Table:
    """A batch of rows as an Arrow table of features (model inputs and `FEATURE_INFO`). `labels`: the checked
    labels of every row of the split (`check_rows`' column), else the rows are checked here; `ids`: the type of
    `input_ids` (`id_type`)."""
    if labels is None:
        batch_labels = row_labels(batch, kind, spec, source, unit)
    else:
        batch_labels = labels.take(pa.array(indices, pa.int64())).to_pylist()
    features = kind.encode_batch(batch, batch_labels, tokenizer, spec, max_length)
    features["__row__"] = [indices[position] for position in features["__row__"]]
    features["length"] = [len(ids) for ids in features["input_ids"]]
    types = {**COMPACT, "input_ids": ids or id_type(tokenizer)}
    return pa.table({name: pa.array(values, types.get(name)) for name, values in features.items()})


AUTO_WORKERS_ROWS = 100_000
"""From this many rows a split is checked and tokenized by one process per core unless told otherwise (measured
on 200k SST-2 rows, 2 cores: 34k rows/s with two processes, 23k with one; below, starting them costs more)."""


def map_rows(records: Records, function, options: dict, key, num_proc: int | None):
    """`function` over batches of `records`' rows with `Dataset.map`, its output (only) kept. The result is
    cached beside the rows' Arrow file under a fingerprint of the rows and `key`, so the same rows, settings
    (and tokenizer) are read or tokenized once; `num_proc` processes share the work (by default one per core
    for a split of `AUTO_WORKERS_ROWS` rows or more)."""
    data = records.data
    fingerprint = hashlib.sha256(
        json.dumps([ENCODING_VERSION, data._fingerprint, key], default=str).encode()
    ).hexdigest()[:32]
    processes = num_proc or (cpu_cores() if len(data) >= AUTO_WORKERS_ROWS else 1)
    processes = processes if processes > 1 and len(data) >= 2 * processes else None
    return data.map(
        function,
        batched=True,
        with_indices=True,
        remove_columns=data.column_names,
        fn_kwargs={**options, "source": records.source, "unit": records.unit},
        new_fingerprint=fingerprint,
        num_proc=processes,
        batch_size=BATCH_ROWS,  # written as Arrow record batches this large: loading the cache reads one
        writer_batch_size=BATCH_ROWS,  # header per batch (per 1,000 rows, page faults touched the whole file)
        try_original_type=False,  # a "label"/"labels" column written here is not the one read
        desc=f"{key[0]} {records.source}",
    )


STREAM_BATCH_ROWS = 1000
"""Rows a stream tokenizes at a time."""


class StreamedFeatures(torch.utils.data.IterableDataset):
    """A `Stream`'s features, tokenized batch by batch as training reads them (`--streaming`), in the order of a
    seeded shuffle buffer of `buffer_size` features that depends only on (seed, epoch): a resumed run sees the
    same order. DataLoader workers each tokenize every k-th batch of rows."""

    def __init__(self, stream, kind, spec, tokenizer, max_length: int, seed: int, buffer_size: int = 10_000):
        self.stream, self.kind, self.spec, self.tokenizer = stream, kind, spec, tokenizer
        self.max_length, self.seed, self.buffer_size, self.epoch = max_length, seed, buffer_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _features(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        share, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        rows = iter(self.stream)
        options = dict(kind=self.kind, spec=self.spec, tokenizer=self.tokenizer, max_length=self.max_length)
        options.update(source=self.stream.source, unit=self.stream.unit, ids=id_type(self.tokenizer))
        for number in itertools.count():
            chunk = list(itertools.islice(rows, STREAM_BATCH_ROWS))
            if not chunk:
                return
            if number % workers != share:
                continue
            columns = list(dict.fromkeys(name for _, row in chunk for name in row))
            batch = {name: [row.get(name) for _, row in chunk] for name in columns}
            batch[LINE] = [line for line, _ in chunk]
            indices = range(number * STREAM_BATCH_ROWS, number * STREAM_BATCH_ROWS + len(chunk))
            encoded = encode_rows(batch, indices, **options)
            inputs = {
                name: encoded.column(name).to_pylist() for name in encoded.column_names if name not in FEATURE_INFO
            }
            for i in range(len(inputs["input_ids"])):
                yield {name: column[i] for name, column in inputs.items()}

    def __iter__(self) -> Iterator[dict]:
        order = random.Random(f"{self.seed}-{self.epoch}")
        buffer: list[dict] = []
        for feature in self._features():
            buffer.append(feature)
            if len(buffer) >= self.buffer_size:
                i = order.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        order.shuffle(buffer)
        yield from buffer
