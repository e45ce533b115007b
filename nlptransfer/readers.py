"""Read labelled examples into Arrow (`datasets.Dataset`), remembering where each one came from.

Every reader returns `Records`: a memory-mapped `datasets.Dataset` of the rows plus a `__line__` column (the
line of the file, or the row of a table, each row came from), so every later check can say exactly which line
of which file is wrong, and no rank ever holds the corpus as Python objects. A file is converted once, batch by
batch, into an Arrow file in the `datasets` cache (`HF_DATASETS_CACHE/nlptransfer/`), keyed by the file's path,
size and modification time: the next run with the same file memory-maps it at once.

Formats: .jsonl/.ndjson, .json, .csv, .tsv, CoNLL columns, .parquet, .arrow (IPC stream or file), a
`save_to_disk` folder, and Hub datasets (`read_hub_dataset`).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from nlptransfer.errors import DataError

LINE = "__line__"
"""The column holding each row's line (or row) number in its source."""
BATCH_ROWS = 10_000
"""Rows converted to Arrow at a time: memory stays flat however long the file."""
READER_VERSION = "1"
"""Part of every cache key: bump it when what a reader produces changes."""


class Records:
    """Rows of one split and where each came from (1-based line numbers, or row numbers for tables and Hub
    data), over a `datasets.Dataset` with a `LINE` column.

    `Records(source, rows, lines)` builds one from Python rows (small data, tests); the readers build theirs from
    Arrow files in the cache. `rows` materializes every row as a dict: only for small splits."""

    def __init__(
        self,
        source: str,
        rows: list[dict] | None = None,
        lines: list[int] | None = None,
        unit: str = "line",
        *,
        data=None,
    ):
        self.source, self.unit = source, unit
        if data is None:
            rows = rows or []
            lines = list(lines) if lines is not None else list(range(1, len(rows) + 1))
            data = _dataset(_rows_table(rows, lines))
        self.data = data

    def at(self, line: int) -> str:
        """Where the row of line (or row) number `line` came from, for error messages."""
        return locate(self.source, self.unit, line)

    def where(self, index: int) -> str:
        return self.at(self.data.select_columns([LINE])[int(index)][LINE])

    def __len__(self) -> int:
        return len(self.data)

    def select(self, indices) -> Records:
        return Records(self.source, unit=self.unit, data=self.data.select(indices))

    def columns(self) -> list[str]:
        return [name for name in self.data.column_names if name != LINE]

    @property
    def rows(self) -> list[dict]:
        return self.data.remove_columns([LINE]).to_list()

    @property
    def lines(self) -> list[int]:
        return list(self.data[LINE])

    def __repr__(self) -> str:
        return f"Records({self.source!r}, {len(self)} rows, columns {self.columns()})"


def locate(source: str, unit: str, line: int) -> str:
    """`file:line` (or `source, row N`): how every error names a row."""
    return f"{source}:{line}" if unit == "line" else f"{source}, {unit} {line}"


# ---- rows -> Arrow, batch by batch ----------------------------------------------------------------------------


def _json_array(values: list) -> pa.Array:
    """Values of mixed kinds (a number here, text there; a list or a comma-separated string) as one Arrow JSON
    column: `datasets` reads each value back as it was written, so every check sees the row as the user gave it."""
    storage = pa.array([None if value is None else json.dumps(value) for value in values], pa.string())
    return pa.ExtensionArray.from_storage(pa.json_(), storage)


def _rows_table(rows: list[dict], lines: list[int], json_columns: set[str] | None = None) -> pa.Table:
    """One batch of rows as an Arrow table: every column any row has (a row without one holds null there); a
    column whose values Arrow cannot store as one type is stored as JSON (and joins `json_columns`)."""
    json_columns = set() if json_columns is None else json_columns
    names = list(dict.fromkeys(name for row in rows for name in row))
    arrays = []
    for name in names:
        values = [row.get(name) for row in rows]
        if name not in json_columns:
            try:
                array = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                array = None
            # Arrow reads true as 1 in a column of numbers: true/false among numbers is kept as given, too
            if array is not None and (pa.types.is_boolean(array.type) or not any(type(v) is bool for v in values)):
                arrays.append(array)
                continue
            json_columns.add(name)
        arrays.append(_json_array(values))
    return pa.Table.from_arrays([*arrays, pa.array(lines, pa.int64())], names=[*names, LINE])


def _unify(schema: pa.Schema | None, table: pa.Table) -> tuple[pa.Schema, set[str]]:
    """(the schema of the rows so far widened for `table`, the columns that cannot be: they must become JSON).
    Ints meet floats: floats; a column of nulls: any type."""
    if schema is None:
        return table.schema, set()
    try:
        return pa.unify_schemas([schema, table.schema], promote_options="permissive"), set()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        clashing = set()
        for field in table.schema:
            if field.name in schema.names:
                try:
                    pa.unify_schemas(
                        [pa.schema([schema.field(field.name)]), pa.schema([field])], promote_options="permissive"
                    )
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                    clashing.add(field.name)
        return schema, clashing


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with every column of `schema`, in its order and types (columns it lacks, or holds only nulls
    in: null)."""
    columns = []
    for field in schema:
        column = table.column(field.name) if field.name in table.column_names else None
        if column is None or (pa.types.is_null(column.type) and not pa.types.is_null(field.type)):
            columns.append(pa.nulls(len(table), field.type))
        else:
            columns.append(column.cast(field.type) if column.type != field.type else column)
    return pa.Table.from_arrays(columns, schema=schema)


def _cache_folder() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "nlptransfer" / "inputs"


def file_key(path: Path, reader: str, options: dict) -> str:
    """A file's cache key: what was read (resolved path, size, modification time) and how."""
    stat = path.stat()
    identity = [READER_VERSION, reader, str(path.resolve()), stat.st_size, stat.st_mtime_ns, sorted(options.items())]
    return hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:24]


def cached_arrow(key: str, tables: Callable[[set[str]], Iterator[pa.Table]]):
    """The `datasets.Dataset` of the Arrow file `key` in the cache, written first (batch by batch from
    `tables(json_columns)`) unless a run before wrote it. When a batch widens a column's type (ints, then
    floats), or a column turns out to mix kinds (it is then stored as JSON from the first row on), the file is
    written again from the start, so every batch shares one schema."""
    import datasets

    final = _cache_folder() / key / "data.arrow"
    if not final.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        schema, json_columns = None, set()
        while True:
            tmp = final.with_name(f".data.arrow.tmp{os.getpid()}")
            restart = False
            try:
                with pa.OSFile(str(tmp), "wb") as sink:
                    writer = None
                    for table in tables(json_columns):
                        unified, clashing = _unify(schema, table)
                        if clashing:
                            json_columns |= clashing
                            schema, restart = None, True
                            break
                        if writer is not None and unified != schema:
                            schema, restart = unified, True
                            break
                        schema = unified
                        if writer is None:
                            writer = pa.ipc.new_stream(sink, schema)
                        writer.write_table(_conform(table, schema))
                    if not restart:
                        if writer is None:  # no rows at all
                            writer = pa.ipc.new_stream(sink, pa.schema([(LINE, pa.int64())]))
                        writer.close()
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if not restart:
                os.replace(tmp, final)
                break
            tmp.unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(final))


def _dataset(table: pa.Table):
    import datasets

    return datasets.Dataset(table)


def _row_batches(rows: Iterable[tuple[int, dict]], json_columns: set[str]) -> Iterator[pa.Table]:
    """(line, row) pairs as Arrow tables of `BATCH_ROWS` rows."""
    batch: list[dict] = []
    lines: list[int] = []
    for line, row in rows:
        batch.append(row)
        lines.append(line)
        if len(batch) == BATCH_ROWS:
            yield _rows_table(batch, lines, json_columns)
            batch, lines = [], []
    if batch:
        yield _rows_table(batch, lines, json_columns)


def _from_rows(
    path: Path, reader: str, rows: Callable[[], Iterable[tuple[int, dict]]], unit: str = "line", **options
) -> Records:
    data = cached_arrow(file_key(path, reader, options), lambda json_columns: _row_batches(rows(), json_columns))
    return Records(str(path), unit=unit, data=data)


# ---- the formats ------------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
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
            yield number, row


def read_jsonl(path: Path, **_) -> Records:
    return _from_rows(path, "jsonl", lambda: _jsonl_rows(path))


def _json_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """A JSON list of objects, or {"data": [...]}: read whole (it is one JSON value)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(f'{path}: expected a JSON list of objects (or {{"data": [...]}})')
    return enumerate(data, start=1)


def read_json(path: Path, **_) -> Records:
    return _from_rows(path, "json", lambda: _json_rows(path), unit="record")


def _delimited_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError(f"{path}:1: expected a header row naming the columns")
        for row in reader:
            if None in row:
                raise DataError(
                    f"{path}:{reader.line_num}: more fields than the {len(reader.fieldnames)} header columns"
                )
            yield reader.line_num, {key.strip(): value for key, value in row.items()}


def read_csv(path: Path, **_) -> Records:
    return _from_rows(path, "csv", lambda: _delimited_rows(path, ","))


def read_tsv(path: Path, **_) -> Records:
    return _from_rows(path, "tsv", lambda: _delimited_rows(path, "\t"))


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


def _conll_rows(path: Path, token_column: int, tag_column: int) -> Iterator[tuple[int, dict]]:
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    needed = max(token_column, tag_column) + 1 if tag_column >= 0 else max(token_column + 1, -tag_column, 2)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if tokens:
                    yield start, {"tokens": tokens, "ner_tags": iob1_to_iob2(tags)}
                tokens, tags = [], []
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
    if tokens:
        yield start, {"tokens": tokens, "ner_tags": iob1_to_iob2(tags)}


def read_conll(path: Path, token_column: int = 0, tag_column: int = -1, **_) -> Records:
    """Blank-line separated sentences, one `token ... tag` line per word; `-DOCSTART-` lines skipped."""
    options = {"token_column": token_column, "tag_column": tag_column}
    return _from_rows(path, "conll", lambda: _conll_rows(path, token_column, tag_column), **options)


def _numbered(tables: Iterable[pa.Table | pa.RecordBatch], start: int = 0) -> Iterator[pa.Table]:
    """Tables of a columnar source with each row's number (0-based, as `dataset[i]` indexes it) added."""
    for table in tables:
        table = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
        if LINE in table.column_names:
            table = table.drop_columns([LINE])
        yield table.append_column(LINE, pa.array(range(start, start + len(table)), pa.int64()))
        start += len(table)


def _from_tables(source: str, key: str, tables: Callable[[], Iterator[pa.Table]]) -> Records:
    return Records(source, unit="row", data=cached_arrow(key, lambda json_columns: _numbered(tables())))


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).iter_batches(BATCH_ROWS)


def read_parquet(path: Path, **_) -> Records:
    return _from_tables(str(path), file_key(path, "parquet", {}), lambda: _parquet_batches(path))


def _arrow_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """An Arrow IPC stream (what `datasets` writes) or IPC file (Feather v2), batch by batch, memory-mapped."""
    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_stream(source)
        yield from reader
    except pa.ArrowInvalid:
        source.seek(0)
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid as err:
            raise DataError(f"{path}: not an Arrow IPC stream or file ({err})") from None
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def read_arrow(path: Path, **_) -> Records:
    return _from_tables(str(path), file_key(path, "arrow", {}), lambda: _arrow_batches(path))


def _saved_dataset(path: Path):
    """A folder written by `Dataset.save_to_disk` (a `DatasetDict` folder: name one of its splits' folders)."""
    import datasets

    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise DataError(
            f"{path}: a DatasetDict folder (splits: {', '.join(splits)}); give one split's folder, e.g. {path / 'train'}"
        )
    return datasets.load_from_disk(str(path))


def read_saved_dataset(path: Path, **_) -> Records:
    dataset = _saved_dataset(path)
    state = json.loads((path / "state.json").read_text())
    key = hashlib.sha256(json.dumps([READER_VERSION, "saved", str(path.resolve()), state.get("_fingerprint")]).encode())
    return _from_tables(
        str(path), key.hexdigest()[:24], lambda: dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)
    )


READERS: dict[str, Callable[..., Records]] = {
    "jsonl": read_jsonl,
    "json": read_json,
    "csv": read_csv,
    "tsv": read_tsv,
    "conll": read_conll,
    "parquet": read_parquet,
    "arrow": read_arrow,
    "saved": read_saved_dataset,
}
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".conll": "conll",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
}


def detect_format(path: Path) -> str:
    """By extension, a `save_to_disk` folder by its `state.json`, else by the first non-blank line (CoNLL files
    are often `eng.train`, `x.txt`)."""
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "saved"
        raise DataError(f"{path}: a folder, but not one written by `datasets`' save_to_disk (no state.json)")
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
        f"{', '.join(sorted(EXTENSIONS))}, a save_to_disk folder, or a CoNLL column file (`word ... tag` per line)"
    )


def read_file(path: str, **options) -> Records:
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"{path}: no such file")
    return READERS[detect_format(file)](file, **options)


# ---- streams: rows read as training consumes them (--streaming) ------------------------------------------------


class Stream:
    """A split read row by row each time it is iterated (`--streaming`): never converted, never held whole.
    Iterating gives (line or row number, row) pairs."""

    def __init__(
        self, source: str, unit: str, rows: Callable[[], Iterator[tuple[int, dict]]], limit: int | None = None
    ):
        self.source, self.unit, self._rows, self.limit = source, unit, rows, limit
        self.rows: int | None = None  # counted by the checking pass
        self.seed = 0  # of the shuffle buffer

    def __len__(self) -> int:
        if self.rows is None:
            raise TypeError(f"{self.source}: a stream's length is known once it has been read through")
        return self.rows

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        return itertools.islice(self._rows(), self.limit)

    def at(self, line: int) -> str:
        return locate(self.source, self.unit, line)

    def head(self, limit: int) -> Stream:
        """The first `limit` rows (`--max_train_samples`)."""
        return Stream(self.source, self.unit, self._rows, limit if self.limit is None else min(limit, self.limit))


def _table_rows(tables: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[tuple[int, dict]]:
    """The rows of a columnar source, numbered from 0 (as `dataset[i]` indexes them)."""
    number = 0
    for table in tables:
        for row in table.to_pylist():
            yield number, row
            number += 1


ROW_STREAMS: dict[str, Callable[..., Iterator[tuple[int, dict]]]] = {
    "jsonl": lambda path, **_: _jsonl_rows(path),
    "json": lambda path, **_: _json_rows(path),
    "csv": lambda path, **_: _delimited_rows(path, ","),
    "tsv": lambda path, **_: _delimited_rows(path, "\t"),
    "conll": lambda path, token_column=0, tag_column=-1, **_: _conll_rows(path, token_column, tag_column),
    "parquet": lambda path, **_: _table_rows(_parquet_batches(path)),
    "arrow": lambda path, **_: _table_rows(_arrow_batches(path)),
    "saved": lambda path, **_: _table_rows(_saved_dataset(path).with_format("arrow").iter(batch_size=BATCH_ROWS)),
}
"""How each format yields its rows one by one, for `stream_file`."""
UNITS = {"json": "record", "parquet": "row", "arrow": "row", "saved": "row"}


def stream_file(path: str, **options) -> Stream:
    """`path` as a `Stream` (the formats of `read_file`); nothing is read until it is iterated."""
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"{path}: no such file")
    form = detect_format(file)
    return Stream(str(file), UNITS.get(form, "line"), lambda: ROW_STREAMS[form](file, **options))


# ---- Hub datasets -------------------------------------------------------------------------------------------------


def _class_names(features) -> dict[str, tuple[list[str], bool]]:
    """Columns holding class ids (`ClassLabel`, or lists of them): their names, and whether a list."""
    import datasets

    names = {}
    for column, feature in features.items():
        if isinstance(feature, datasets.ClassLabel):
            names[column] = (feature.names, False)
        elif isinstance(feature, (datasets.Sequence, datasets.List)) and isinstance(
            getattr(feature, "feature", None), datasets.ClassLabel
        ):
            names[column] = (feature.feature.names, True)
    return names


def _named(tables: Iterable[pa.Table], class_names: dict[str, tuple[list[str], bool]]) -> Iterator[pa.Table]:
    """Class-id columns as their names (Arrow `take`, no Python loop over rows)."""
    import pyarrow.compute as pc

    for table in tables:
        for column, (names, is_list) in class_names.items():
            names_array = pa.array(names, pa.string())
            values = table.column(column).combine_chunks()
            if is_list:
                named = pa.ListArray.from_arrays(
                    values.offsets, pc.take(names_array, values.flatten()), mask=values.is_null()
                )
            else:
                named = pc.take(names_array, values)
            table = table.set_column(table.column_names.index(column), column, named)
        yield table


def read_hub_dataset(name: str, config: str | None = None, splits: dict[str, str] | None = None) -> dict[str, Records]:
    """A Hub dataset (or a local folder of data files) read with `datasets.load_dataset`; class-id columns become
    their names. `splits` maps a split of ours to a `datasets` split expression (`train[:90%]`); without it every
    split the dataset has is read."""
    import datasets

    label = f"dataset {name}" + (f" ({config})" if config else "")
    if splits:
        loaded = {}
        for ours, expression in splits.items():
            try:
                loaded[ours] = datasets.load_dataset(name, config, split=expression)
            except ValueError as err:
                raise DataError(f"{label}: split {expression!r} (for {ours}): {err}") from None
    else:
        loaded = dict(datasets.load_dataset(name, config))
    records = {}
    for split, data in loaded.items():
        source = f"{label} split {splits[split] if splits else split}"
        key = hashlib.sha256(json.dumps([READER_VERSION, "hub", data._fingerprint]).encode()).hexdigest()[:24]
        class_names = _class_names(data.features)
        tables = lambda data=data, class_names=class_names: _named(  # noqa: E731
            data.with_format("arrow").iter(batch_size=BATCH_ROWS), class_names
        )
        records[split] = _from_tables(source, key, tables)
    return records
