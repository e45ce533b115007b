"""From arguments to encoded splits: read, carve a validation slice, validate, fix labels, tokenize."""

from __future__ import annotations

import json
import random
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from nlptransfer.errors import DataError
from nlptransfer.readers import Records, read_file, read_hub_dataset
from nlptransfer.tasks import TASK_KINDS, Encoded, TaskSpec

SPLITS = ("train", "validation", "test")
HUB_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}


def load_splits(data_args, seed: int) -> dict[str, Records]:
    """Read train/validation/test from files (or a Hub dataset); files given explicitly win."""
    splits: dict[str, Records] = {}
    if data_args.dataset_name:
        hub = read_hub_dataset(data_args.dataset_name, data_args.dataset_config_name)
        for split, names in HUB_SPLIT_NAMES.items():
            found = next((hub[name] for name in names if name in hub), None)
            if found is not None:
                splits[split] = found
    conll = {"token_column": data_args.conll_token_column, "tag_column": data_args.conll_tag_column}
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
        if split in splits and limit is not None:
            splits[split] = splits[split].select(list(range(min(limit, len(splits[split])))))
    return splits


def carve_validation(train: Records, percentage: int, seed: int) -> tuple[Records, Records]:
    """Hold out a seeded `percentage` of train; the same seed always holds out the same rows."""
    indices = list(range(len(train)))
    random.Random(seed).shuffle(indices)
    held = max(1, len(indices) * percentage // 100)
    return train.select(sorted(indices[held:])), train.select(sorted(indices[:held]))


def encode_splits(
    splits: dict[str, Records],
    spec: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    class_weights: str | None = None,
) -> dict[str, Encoded]:
    """Validate every split, take the label set from train (unless `spec.labels` is set), tokenize.

    Kinds without a label set (regression) skip the label set: `spec.labels` is left as it is.
    `class_weights` (`--class_weights`: "balanced", "none" or a JSON file; by default the kind's
    `default_class_weights`) sets `spec.class_weights`.
    """
    kind = TASK_KINDS[spec.kind]
    checked = {split: kind.check(records, spec) for split, records in splits.items()}
    if kind.has_label_set:
        _fix_label_set(splits, checked, spec, kind)
    class_weights = class_weights or kind.default_class_weights
    if class_weights == "none":
        spec.class_weights = None
    elif class_weights == "balanced" and "train" in checked:  # from the training labels (when train is given)
        spec.class_weights = kind.balanced_weights(checked["train"], spec)
    elif class_weights and class_weights != "balanced":
        spec.class_weights = read_class_weights(class_weights, spec)
    return {split: kind.encode(splits[split], checked[split], tokenizer, spec, max_length) for split in splits}


def _fix_label_set(splits: dict[str, Records], checked: dict[str, list], spec: TaskSpec, kind) -> None:
    """Take the label set from train unless given; every label of every split must be in it."""
    if not spec.labels:
        spec.labels = kind.label_order({name for name in _flatten(checked["train"])})
    known = set(spec.labels)
    for split, labels in checked.items():
        for index, row_labels in enumerate(labels):
            for name in row_labels if isinstance(row_labels, list) else [row_labels]:
                if name not in known:
                    column = spec.tags_column if kind.head == "token" else spec.label_column
                    raise DataError(
                        f"{splits[split].where(index)}: label {name!r} in field {column!r} was not seen in the "
                        f"training data (known: {', '.join(spec.labels)})"
                    )


def _flatten(labels: list) -> list[str]:
    return [name for row in labels for name in (row if isinstance(row, list) else [row])]


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
