"""Read labelled examples from local files or Hub datasets, remembering where each one came from.

Every reader returns `Records`: plain dict rows plus their origin (file and line), so that every
later check can say exactly which line of which file is wrong.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nlptransfer.errors import DataError


@dataclass
class Records:
    """Rows of one split and where each came from (1-based line numbers, or row numbers for Hub data)."""

    source: str
    rows: list[dict]
    lines: list[int] = field(default_factory=list)
    unit: str = "line"

    def where(self, index: int) -> str:
        return (
            f"{self.source}:{self.lines[index]}"
            if self.unit == "line"
            else f"{self.source}, {self.unit} {self.lines[index]}"
        )

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, indices: list[int]) -> Records:
        return Records(self.source, [self.rows[i] for i in indices], [self.lines[i] for i in indices], self.unit)

    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []


def read_jsonl(path: Path, **_) -> Records:
    rows, lines = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
            lines.append(number)
    return Records(str(path), rows, lines)


def read_json(path: Path, **_) -> Records:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(f'{path}: expected a JSON list of objects (or {{"data": [...]}})')
    return Records(str(path), data, list(range(1, len(data) + 1)), unit="record")


def _read_delimited(path: Path, delimiter: str) -> Records:
    rows, lines = [], []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError(f"{path}:1: expected a header row naming the columns")
        for row in reader:
            if None in row:
                raise DataError(
                    f"{path}:{reader.line_num}: more fields than the {len(reader.fieldnames)} header columns"
                )
            rows.append({key.strip(): value for key, value in row.items()})
            lines.append(reader.line_num)
    return Records(str(path), rows, lines)


def read_csv(path: Path, **_) -> Records:
    return _read_delimited(path, ",")


def read_tsv(path: Path, **_) -> Records:
    return _read_delimited(path, "\t")


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 marks B- only between two touching entities of one type; IOB2 starts every entity with B-."""
    if not all(tag == "O" or tag[:2] in ("B-", "I-") for tag in tags):
        return list(tags)  # another scheme (BIOES, plain labels): leave it alone
    converted = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            previous = converted[i - 1] if i else "O"
            if previous == "O" or previous[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        converted.append(tag)
    return converted


def read_conll(path: Path, token_column: int = 0, tag_column: int = -1, **_) -> Records:
    """Blank-line separated sentences, one `token ... tag` line per word; `-DOCSTART-` lines skipped."""
    rows, lines = [], []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    needed = max(token_column, tag_column) + 1 if tag_column >= 0 else max(token_column + 1, -tag_column, 2)

    def flush():
        if tokens:
            rows.append({"tokens": list(tokens), "ner_tags": iob1_to_iob2(tags)})
            lines.append(start)
        tokens.clear()
        tags.clear()

    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                flush()
                continue
            if fields[0] == "-DOCSTART-":
                flush()
                continue
            if len(fields) < needed:
                raise DataError(
                    f"{path}:{number}: malformed CoNLL line {line.rstrip()!r}: expected at least {needed} "
                    f"whitespace-separated columns (word in column {token_column}, tag in column {tag_column})"
                )
            if not tokens:
                start = number
            tokens.append(fields[token_column])
            tags.append(fields[tag_column])
    flush()
    return Records(str(path), rows, lines)


READERS: dict[str, Callable[..., Records]] = {
    "jsonl": read_jsonl,
    "json": read_json,
    "csv": read_csv,
    "tsv": read_tsv,
    "conll": read_conll,
}
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".conll": "conll"}


def detect_format(path: Path) -> str:
    """By extension, else by the first non-blank line (CoNLL files are often `eng.train`, `x.txt`)."""
    if path.suffix.lower() in EXTENSIONS:
        return EXTENSIONS[path.suffix.lower()]
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = next((line for line in handle if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    fields = first.split()
    if fields and (
        fields[0] == "-DOCSTART-" or (len(fields) >= 2 and (fields[-1] == "O" or fields[-1][:2] in ("B-", "I-")))
    ):
        return "conll"
    raise DataError(
        f"{path}: cannot tell the file format from the name or first line; expected one of "
        f"{', '.join(sorted(EXTENSIONS))} or a CoNLL column file (`word ... tag` per line)"
    )


def read_file(path: str, **options) -> Records:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{path}: no such file")
    return READERS[detect_format(file)](file, **options)


def read_hub_dataset(name: str, config: str | None = None) -> dict[str, Records]:
    """Load a Hub dataset with `datasets`; integer class labels become their names."""
    import datasets

    loaded = datasets.load_dataset(name, config)
    splits = {}
    for split, data in loaded.items():
        names = {col: feat.names for col, feat in data.features.items() if isinstance(feat, datasets.ClassLabel)}
        seq_names = {
            col: feat.feature.names
            for col, feat in data.features.items()
            if isinstance(feat, (datasets.Sequence, datasets.List))
            and isinstance(getattr(feat, "feature", None), datasets.ClassLabel)
        }
        rows = data.to_list()
        for row in rows:
            for col, labels in names.items():
                row[col] = labels[row[col]]
            for col, labels in seq_names.items():
                row[col] = [labels[i] for i in row[col]]
        source = f"dataset {name}" + (f" ({config})" if config else "") + f" split {split}"
        splits[split] = Records(source, rows, list(range(len(rows))), unit="row")
    return splits
