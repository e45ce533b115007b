"""From arguments to encoded splits: read, carve a validation slice, validate, fix labels, tokenize."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from nlptransfer.errors import ConfigError, DataError
from nlptransfer.preprocessing import StreamedFeatures, arrow_column
from nlptransfer.readers import Records, Stream, read_file, read_hub_dataset, stream_file
from nlptransfer.tasks import TASK_KINDS, Encoded, StreamEncoded, TaskSpec, check_stream

SPLITS = ("train", "validation", "test")
HUB_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}


def load_splits(data_args, seed: int, streaming: bool = False) -> dict[str, Records | Stream]:
    """Read train/validation/test from files (or a Hub dataset); files given explicitly win. With
    `data_args.streaming` (where the recipe can train from one, `streaming`), train is a `Stream` of the file."""
    if getattr(data_args, "streaming", False):
        return _streamed_splits(data_args, seed, streaming)
    splits: dict[str, Records] = {}
    if data_args.dataset_name:
        chosen = parse_dataset_split(getattr(data_args, "dataset_split", None))
        hub = read_hub_dataset(data_args.dataset_name, data_args.dataset_config_name, chosen)
        for split, names in HUB_SPLIT_NAMES.items():
            found = next((hub[name] for name in (split,) + names if name in hub), None)
            if found is not None:
                splits[split] = found
    conll = _conll_options(data_args)
    for split, path in (
        ("train", data_args.train_file),
        ("validation", data_args.validation_file),
        ("test", data_args.test_file),
    ):
        if path:
            splits[split] = read_file(path, **conll)
    if "train" not in splits or not len(splits["train"]):
        raise DataError(f"{data_args.train_file or data_args.dataset_name}: no training examples found")
    if "validation" not in splits and data_args.validation_split_percentage > 0:
        splits["train"], splits["validation"] = carve_validation(
            splits["train"], data_args.validation_split_percentage, seed
        )
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_test_samples,
    }
    for split, limit in limits.items():
        if split in splits:
            splits[split] = _first(splits[split], limit)
    return splits


def _conll_options(data_args) -> dict:
    return {"token_column": data_args.conll_token_column, "tag_column": data_args.conll_tag_column}


def _first(records: Records, limit: int | None) -> Records:
    """The first `limit` rows (`--max_*_samples`), or all of them."""
    return records if limit is None else records.select(range(min(limit, len(records))))


def _streamed_splits(data_args, seed: int, allowed: bool) -> dict[str, Records | Stream]:
    """--streaming: train read row by row as training consumes it; validation and test (small) read as usual."""
    if not allowed:
        raise ConfigError("--streaming: only recipes/finetune.py trains from a stream; read the data whole here")
    if data_args.dataset_name or not data_args.train_file:
        raise ConfigError("--streaming reads a local --train_file (of any format read_file reads)")
    if data_args.validation_split_percentage:
        raise ConfigError(
            "--streaming cannot carve a validation split from rows it never holds; give --validation_file instead"
        )
    conll = _conll_options(data_args)
    train = stream_file(data_args.train_file, **conll)
    if data_args.max_train_samples is not None:
        train = train.head(data_args.max_train_samples)
    train.seed = seed
    splits: dict[str, Records | Stream] = {"train": train}
    for split, path, limit in (
        ("validation", data_args.validation_file, data_args.max_eval_samples),
        ("test", data_args.test_file, data_args.max_test_samples),
    ):
        if path:
            splits[split] = _first(read_file(path, **conll), limit)
    return splits


def parse_dataset_split(text: str | None) -> dict[str, str] | None:
    """`--dataset_split "train=train[:90%],validation=train[90%:],test=test"`: which `datasets` split expression
    each of train/validation/test reads (splits left out are not read)."""
    if not text:
        return None
    chosen = {}
    for part in text.split(","):
        name, _, expression = part.partition("=")
        if name.strip() not in HUB_SPLIT_NAMES or not expression.strip():
            raise ConfigError(
                f"--dataset_split {text!r}: expected split=expression pairs separated by commas, split one of "
                f"{', '.join(HUB_SPLIT_NAMES)} (e.g. train=train[:90%],validation=train[90%:])"
            )
        chosen[name.strip()] = expression.strip()
    return chosen


def carve_validation(train: Records, percentage: int, seed: int) -> tuple[Records, Records]:
    """Hold out a seeded `percentage` of train; the same seed always holds out the same rows."""
    n = len(train)
    held = max(1, n * percentage // 100)
    if n <= 1_000_000:  # Python's shuffle: the rows earlier versions held out for this seed
        indices = list(range(n))
        random.Random(seed).shuffle(indices)
        order = np.asarray(indices)
    else:  # a permutation in numpy: no Python int per row
        order = np.random.default_rng(seed).permutation(n)
    return train.select(np.sort(order[held:])), train.select(np.sort(order[:held]))


def encode_splits(
    splits: dict[str, Records],
    spec: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    class_weights: str | None = None,
    num_proc: int | None = None,
) -> dict[str, Encoded]:
    """Validate every split, take the label set from train (unless `spec.labels` is set), tokenize; each step a
    cached, batched `Dataset.map` over Arrow (`num_proc` processes).

    Kinds without a label set (regression) skip the label set: `spec.labels` is left as it is.
    `class_weights` (`--class_weights`: "balanced", "none" or a JSON file; by default the kind's
    `default_class_weights`) sets `spec.class_weights`.
    """
    kind = TASK_KINDS[spec.kind]
    checked = {
        split: check_stream(records, kind, spec) if isinstance(records, Stream) else kind.check(records, spec, num_proc)
        for split, records in splits.items()
    }
    if kind.has_label_set:
        _fix_label_set(splits, checked, spec, kind)
    class_weights = class_weights or kind.default_class_weights
    if class_weights == "none":
        spec.class_weights = None
    elif class_weights == "balanced" and "train" in checked:  # from the training labels (when train is given)
        rows = len(splits["train"])
        spec.class_weights = kind.balanced_weights(label_counts(checked["train"], spec), rows, spec)
    elif class_weights and class_weights != "balanced":
        spec.class_weights = read_class_weights(class_weights, spec)
    encoded = {}
    for split, records in splits.items():
        if isinstance(records, Stream):
            features = StreamedFeatures(records, kind, spec, tokenizer, max_length, getattr(records, "seed", 0))
            encoded[split] = StreamEncoded(features, records)
        else:
            encoded[split] = kind.encode(records, checked[split], tokenizer, spec, max_length, num_proc)
    return encoded


def _names(labels) -> tuple[pa.Array, pa.Array | None]:
    """A checked split's label names as one flat Arrow array, and (for lists) each name's row."""
    column = arrow_column(labels, "label")
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return pc.list_flatten(column), pc.list_parent_indices(column)
    return column, None


def label_counts(labels, spec: TaskSpec) -> list[int]:
    """How often each of `spec.labels` occurs in a checked split (every tag of a sentence, every name of a
    multi-label row); `labels` from `TaskKind.check`, or a stream's counts (`check_stream`)."""
    if isinstance(labels, Counter):
        return [labels.get(name, 0) for name in spec.labels]
    names, _ = _names(labels)
    counts = {row["values"]: row["counts"] for row in pc.value_counts(names).to_pylist()} if len(names) else {}
    return [int(counts.get(name, 0)) for name in spec.labels]


def _fix_label_set(splits: dict[str, Records], checked: dict, spec: TaskSpec, kind) -> None:
    """Take the label set from train unless given; every label of every split must be in it."""
    if not spec.labels:
        if isinstance(checked["train"], Counter):
            spec.labels = kind.label_order(set(checked["train"]))
        else:
            names, _ = _names(checked["train"])
            spec.labels = kind.label_order(set(pc.unique(names).to_pylist()) if len(names) else set())
    known = pa.array(spec.labels, pa.string())
    for split, labels in checked.items():
        if isinstance(labels, Counter):
            if unseen := sorted(set(labels) - set(spec.labels)):
                column = spec.tags_column if kind.head == "token" else spec.label_column
                raise DataError(
                    f"{splits[split].source}: label {unseen[0]!r} in field {column!r} is not one of the task's "
                    f"labels ({', '.join(spec.labels)})"
                )
            continue
        names, parents = _names(labels)
        if not len(names):
            continue
        unknown = pc.invert(pc.is_in(names, value_set=known))
        if pc.any(unknown).as_py():
            first = pc.index(unknown, True).as_py()
            row = first if parents is None else parents[first].as_py()
            column = spec.tags_column if kind.head == "token" else spec.label_column
            raise DataError(
                f"{splits[split].where(row)}: label {names[first].as_py()!r} in field {column!r} was not seen in "
                f"the training data (known: {', '.join(spec.labels)})"
            )


def read_class_weights(path: str, spec: TaskSpec) -> list[float]:
    """`--class_weights FILE`: a JSON object {label: weight} (labels left out weigh 1) or a list of weights in
    label order; every weight a positive number."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"--class_weights {path}: no such file; expected `balanced` or a JSON file of weights")
    try:
        given = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if isinstance(given, list):
        if len(given) != len(spec.labels):
            raise DataError(
                f"{path}: {len(given)} weights for {len(spec.labels)} labels ({', '.join(spec.labels)}); "
                "a list gives one weight per label in that order"
            )
        given = dict(zip(spec.labels, given))
    if not isinstance(given, dict):
        raise DataError(f"{path}: expected a JSON object {{label: weight}} or a list of weights")
    for name, weight in given.items():
        if name not in spec.label2id:
            raise DataError(f"{path}: label {name!r} is not one of the task's labels ({', '.join(spec.labels)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise DataError(f"{path}: field {name!r} holds {weight!r}; expected a positive number")
    return [float(given.get(name, 1.0)) for name in spec.labels]
