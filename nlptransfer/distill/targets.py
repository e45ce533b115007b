"""The teacher's predictions on the training rows, computed once and cached on disk.

The teacher reads the same rows through its *own* tokenizer, so teacher and student need not share
a vocabulary. Targets are kept per row (sequence tasks) or per word (NER: the logits at the first
sub-word of each word, the position the gold loss and scoring use), so they line up with the
student's features whatever the two tokenizers make of the words, and whatever windows each cuts
long sentences into.

    targets, status = cached_teacher_targets(teacher, splits["train"], spec, 128, "runs/x/teacher_cache")
    train_features = targets.attach(encoded["train"])   # each feature gains `teacher_logits`

A *transfer set* (`read_transfer_set`) is unlabelled text the teacher labels for the student: its rows
get soft targets only (`batching.without_labels`), so the student learns from more of the teacher's knowledge
than the labelled rows hold (XtremeDistil, Mukherjee & Awadallah 2020, for NER).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from nlptransfer.batching import PaddingCollator, without_labels
from nlptransfer.data import encode_splits
from nlptransfer.distill.arguments import DistillArguments
from nlptransfer.distill.teacher import Teacher
from nlptransfer.errors import ConfigError, DataError
from nlptransfer.readers import Records, read_file
from nlptransfer.tasks import TASK_KINDS, Encoded, TaskSpec

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1

# words as CoNLL-style corpora cut them: "U.S." whole, "Smith's" whole, punctuation apart from words
WORD = re.compile(r"(?:\w\.){2,}|\w+(?:[-'&]\w+)*|[^\w\s]")


@dataclass
class TeacherTargets:
    """Teacher logits: one row per training row, or (token tasks) one per word, the words of row r at
    `logits[offsets[r]:offsets[r + 1]]`. NaN marks a word the teacher made no prediction for."""

    logits: torch.Tensor
    offsets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.logits) if self.offsets is None else len(self.offsets) - 1

    def of_row(self, row: int) -> torch.Tensor:
        if self.offsets is None:
            return self.logits[row]
        return self.logits[self.offsets[row] : self.offsets[row + 1]]

    def attach(self, encoded: Encoded) -> list[dict]:
        """The student's features, each with its `teacher_logits`: the row's logits, or (token tasks)
        an array as long as the feature with each word's logits at its first sub-word, NaN elsewhere."""
        logits = self.logits.float().numpy()
        features = []
        for index, feature in enumerate(encoded.features):
            row = encoded.row_of_feature[index]
            if self.offsets is None:
                features.append({**feature, "teacher_logits": logits[row]})
                continue
            start = int(self.offsets[row])
            positions = [j for j, label in enumerate(feature["labels"]) if label != -100]
            words = encoded.words_of_feature[index]
            target = np.full((len(feature["input_ids"]), logits.shape[-1]), np.nan, dtype=np.float32)
            target[positions] = logits[[start + word for word in words]]
            features.append({**feature, "teacher_logits": target})
        return features

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        """Atomically: a killed run never leaves half a cache file behind."""
        tensors = {"logits": self.logits.contiguous()}
        if self.offsets is not None:
            tensors["offsets"] = self.offsets.contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TeacherTargets:
        tensors = load_file(str(path))
        return cls(tensors["logits"], tensors.get("offsets"))


@torch.inference_mode()
def compute_teacher_targets(
    teacher: Teacher,
    records: Records,
    spec: TaskSpec,
    max_length: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> TeacherTargets:
    """Run the teacher over `records`, tokenized with the teacher's tokenizer; per row or per word."""
    kind = TASK_KINDS[spec.kind]
    encoded = encode_splits({"train": records}, dataclasses.replace(spec), teacher.tokenizer, max_length)["train"]
    collator = PaddingCollator(teacher.tokenizer.pad_token_id)
    features = encoded.features
    order = np.argsort(-encoded.lengths(), kind="stable").tolist()
    teacher.model.to(device)
    per_feature: list[np.ndarray | None] = [None] * len(order)
    for start in tqdm(range(0, len(order), batch_size), desc="teacher", disable=not progress):
        chunk = order[start : start + batch_size]
        batch = collator([features[i] for i in chunk])
        logits = teacher({k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        for i, row_logits in zip(chunk, logits):
            per_feature[i] = row_logits
    if kind.head != "token":
        return TeacherTargets(torch.from_numpy(np.stack([per_feature[i] for i in _row_order(encoded)])))
    counts = [len(row[spec.tokens_column]) for row in records.rows]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    table = np.full((offsets[-1], per_feature[0].shape[-1]), np.nan, dtype=np.float32)
    rows = encoded.row_of_feature
    for index, (feature_labels, words) in enumerate(zip(encoded.feature_labels, encoded.words_of_feature)):
        positions = [j for j, label in enumerate(feature_labels) if label != -100]
        table[[offsets[rows[index]] + word for word in words]] = per_feature[index][positions]
    missing = int(np.isnan(table).any(-1).sum())
    if missing:
        logger.warning(
            "%s: the teacher made no prediction for %d words; they get no soft target", records.source, missing
        )
    return TeacherTargets(torch.from_numpy(table), torch.from_numpy(offsets).long())


def _row_order(encoded: Encoded) -> list[int]:
    """Feature index of each row, for kinds with exactly one feature per row."""
    if not np.array_equal(encoded.row_of_feature, np.arange(len(encoded.records))):
        raise ValueError("sequence tasks must have exactly one feature per row, in row order")
    return list(range(len(encoded.features)))


def cache_key(teacher: Teacher, records: Records, spec: TaskSpec, max_length: int) -> str:
    """What the targets depend on: the teacher (folder, weight files' size and time, head), the rows
    themselves (so a changed file, --max_train_samples or validation carve-out is a new key), the
    columns and label names read, and the sequence length."""
    folder = Path(teacher.path).resolve()
    weights = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.suffix in (".safetensors", ".bin", ".json") and not p.name.startswith("teacher_")  # not our caches
    )
    rows = hashlib.sha256()
    for row in records.rows:
        rows.update(json.dumps(row, sort_keys=True, default=str).encode())
        rows.update(b"\n")
    spec_fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "name"}
    identity = {
        "format": CACHE_FORMAT,
        "teacher": str(folder),
        "weights": weights,
        "task": teacher.task,
        "spec": spec_fields,
        "max_length": max_length,
        "rows": rows.hexdigest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def cached_teacher_targets(
    teacher: Teacher,
    records: Records,
    spec: TaskSpec,
    max_length: int,
    cache_dir: str | Path | None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[TeacherTargets, str]:
    """(targets, status): "hit" read from `cache_dir`, "written" computed and stored there, or
    "memory" computed without a cache (`cache_dir` None)."""
    if cache_dir is None:
        return compute_teacher_targets(teacher, records, spec, max_length, batch_size, device, progress), "memory"
    key = cache_key(teacher, records, spec, max_length)
    path = Path(cache_dir) / f"teacher_{key}.safetensors"
    if path.is_file():
        targets = TeacherTargets.load(path)
        if len(targets) == len(records):
            return targets, "hit"
        logger.warning("%s holds %d rows, expected %d; recomputing", path, len(targets), len(records))
    targets = compute_teacher_targets(teacher, records, spec, max_length, batch_size, device, progress)
    metadata = {"teacher": teacher.path, "task": str(teacher.task), "rows": str(len(records)), "source": records.source}
    targets.save(path, metadata)
    return targets, "written"


def teacher_labelled_features(
    teacher: Teacher,
    splits: dict[str, Records],
    encoded: dict[str, Encoded],
    spec: TaskSpec,
    tokenizer,
    max_length: int,
    args: DistillArguments,
    cache_dir: str | Path | None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[list[dict], str]:
    """(training features with the teacher's soft targets attached, where the targets came from). With
    `args.transfer_file`, its unlabelled rows (kept as `splits["transfer"]`) are added: they teach the
    student through the soft targets alone."""
    label = partial(
        cached_teacher_targets,
        teacher,
        spec=spec,
        max_length=max_length,
        cache_dir=cache_dir if args.cache_teacher else None,
        batch_size=args.teacher_batch_size,
        device=device,
        progress=progress,
    )
    targets, status = label(splits["train"])
    features = targets.attach(encoded["train"])
    if args.transfer_file:
        splits["transfer"] = read_transfer_set(args.transfer_file, spec, args.max_transfer_samples)
        transfer = encode_splits({"train": splits["transfer"]}, spec, tokenizer, max_length)
        features += without_labels(label(splits["transfer"])[0].attach(transfer["train"]))
    return features, status


# ---- transfer sets: unlabelled rows the teacher labels -------------------------------------------
def read_transfer_set(path: str, spec: TaskSpec, limit: int | None = None) -> Records:
    """The first `limit` rows of an unlabelled file, in the task's columns. NER rows take the word list
    in `spec.tokens_column` or, failing that, split `spec.text_column` into words (`WORD`); sequence
    tasks take `spec.text_column` (and the pair column). Each row carries the first label as a
    placeholder, since the encoders need one; `batching.without_labels` masks it after encoding."""
    kind = TASK_KINDS[spec.kind]
    if not kind.has_label_set:
        raise ConfigError(f"--transfer_file: a {spec.kind} task has no soft targets to distil from unlabelled rows")
    records = read_file(path)
    if limit is not None:
        records = records.select(range(min(limit, len(records))))
    placeholder, rows, lines, all_lines = spec.labels[0], [], [], records.lines
    for index, row in enumerate(records.rows):
        row = {name: value for name, value in row.items() if value is not None}  # Arrow: a field a row lacks is null
        if kind.head == "token":
            words = row.get(spec.tokens_column)
            if words is None:
                text = row.get(spec.text_column)
                if not isinstance(text, str):
                    raise DataError(
                        f"{records.where(index)}: a transfer row needs a word list {spec.tokens_column!r} or a "
                        f"text {spec.text_column!r}; this row has {sorted(row)}"
                    )
                words = WORD.findall(text)
            if not words:
                continue  # an empty text teaches nothing
            rows.append({spec.tokens_column: words, spec.tags_column: [placeholder] * len(words)})
        else:
            columns = [c for c in (spec.text_column, spec.text_pair_column) if c]
            missing = [c for c in columns if c not in row]
            if missing:
                raise DataError(
                    f"{records.where(index)}: a transfer row needs field(s) {missing}; it has {sorted(row)}"
                )
            rows.append({**{c: row[c] for c in columns}, spec.label_column: placeholder})
        lines.append(all_lines[index])
    if not rows:
        raise DataError(f"{path}: no transfer rows with text found")
    return Records(records.source, rows, lines, records.unit)
