"""The Arrow data path: every input format lands in a memory-mapped `datasets.Dataset` with its line numbers,
a column that mixes kinds keeps each value as given, a second read and a second tokenization come from the
cache, bad rows are reported by file and line from any format and from `map` worker processes, and the
training order needs no Python copy of the rows."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from nlptransfer.batching import EpochSampler, Extended, feature_lengths
from nlptransfer.config import DataArguments
from nlptransfer.data import encode_splits, load_splits, parse_dataset_split
from nlptransfer.errors import ConfigError, DataError
from nlptransfer.readers import read_file
from nlptransfer.tasks import TaskSpec

from conftest import write_jsonl

datasets = pytest.importorskip("datasets")
ROWS = [{"text": f"goal number {i}", "label": ["sport", "food"][i % 2]} for i in range(30)]


@pytest.fixture
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own `datasets` cache: what a test finds cached, it wrote."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def test_every_format_reads_the_same_rows(tmp_path):
    dataset = datasets.Dataset.from_list(ROWS)
    dataset.to_parquet(str(tmp_path / "d.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    (tmp_path / "d.arrow").write_bytes(arrow.read_bytes())
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in ROWS))
    for name in ("d.parquet", "saved", "d.arrow", "d.jsonl", "d.csv"):
        records = read_file(str(tmp_path / name))
        assert records.rows == ROWS, name
        assert isinstance(records.data, datasets.Dataset) and records.data.cache_files, name  # on disk, mapped
    assert read_file(str(tmp_path / "d.jsonl")).where(3) == f"{tmp_path / 'd.jsonl'}:4"
    assert read_file(str(tmp_path / "d.parquet")).where(3) == f"{tmp_path / 'd.parquet'}, row 3"


def test_a_dataset_dict_folder_asks_for_one_split(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: a DatasetDict folder \(splits: train\); give one split's folder"):
        read_file(str(tmp_path / "dd"))
    assert len(read_file(str(tmp_path / "dd" / "train"))) == len(ROWS)


def test_a_column_of_mixed_kinds_keeps_each_value_as_given(tmp_path):
    rows = [{"text": "a", "labels": ["x", "y"]}, {"text": "b", "labels": "x, z"}, {"text": "c", "labels": 3}]
    records = read_file(str(write_jsonl(tmp_path / "m.jsonl", rows)))
    assert records.rows == rows


def test_types_widen_across_batches_and_mixed_kinds_are_found_late(tmp_path, monkeypatch):
    import nlptransfer.readers as readers

    monkeypatch.setattr(readers, "BATCH_ROWS", 4)  # several batches from a small file
    rows = [{"text": f"t{i}", "score": i} for i in range(9)] + [{"text": "late", "score": 2.5}]
    assert [r["score"] for r in read_file(str(write_jsonl(tmp_path / "w.jsonl", rows))).rows][-2:] == [8, 2.5]
    rows = [{"text": f"t{i}", "label": i} for i in range(9)] + [{"text": "late", "label": "ten"}]
    assert read_file(str(write_jsonl(tmp_path / "k.jsonl", rows))).rows[-1] == {"text": "late", "label": "ten"}


def test_a_bad_row_deep_in_a_big_file_is_reported_by_its_line(tmp_path, tokenizer, monkeypatch):
    import nlptransfer.readers as readers

    monkeypatch.setattr(readers, "BATCH_ROWS", 1000)
    path = tmp_path / "big.jsonl"
    with path.open("w") as out:
        for i in range(5000):
            row = {"text": f"row {i}", "label": "a" if i % 3 else "b"}
            if i == 4321:
                row["text"] = ""
            out.write(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"big\.jsonl:4322: field 'text' is empty or not text: ''"):
        encode_splits({"train": read_file(str(path))}, TaskSpec(), tokenizer, 16)


def test_a_bad_row_is_reported_from_map_worker_processes(tmp_path, tokenizer):
    rows = [{"text": f"row {i}", "label": "a"} for i in range(40)]
    rows[33]["label"] = ""
    records = read_file(str(write_jsonl(tmp_path / "train.jsonl", rows)))
    with pytest.raises(DataError, match=r"train\.jsonl:34: field 'label' is empty"):
        encode_splits({"train": records}, TaskSpec(), tokenizer, 16, num_proc=2)


def test_workers_and_one_process_encode_the_same(tmp_path, tokenizer):
    records = read_file(str(write_jsonl(tmp_path / "train.jsonl", ROWS)))
    one = encode_splits({"train": records}, TaskSpec(), tokenizer, 16)["train"]
    two = encode_splits({"train": records}, TaskSpec(), tokenizer, 16, num_proc=2)["train"]
    assert one.features.to_list() == two.features.to_list()
    assert one.row_of_feature.tolist() == two.row_of_feature.tolist() == list(range(len(ROWS)))


def test_second_read_and_tokenization_come_from_the_cache(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    first = encode_splits({"train": read_file(str(path))}, TaskSpec(), tokenizer, 16)["train"]
    again = encode_splits({"train": read_file(str(path))}, TaskSpec(), tokenizer, 16)["train"]
    assert first.table.cache_files == again.table.cache_files  # the same Arrow file, not a second one
    files = {f.name for f in (tmp_path / "hf_cache").rglob("*.arrow")}
    other = encode_splits({"train": read_file(str(path))}, TaskSpec(), tokenizer, 12)["train"]  # new settings
    assert other.table.cache_files != first.table.cache_files
    assert len({f.name for f in (tmp_path / "hf_cache").rglob("*.arrow")} - files) == 1
    write_jsonl(path, ROWS[:10])  # the file changed: read again
    assert len(encode_splits({"train": read_file(str(path))}, TaskSpec(), tokenizer, 16)["train"].features) == 10


def test_hub_style_dataset_split_selection(tmp_path):
    folder = tmp_path / "hub_ds"
    folder.mkdir()
    datasets.Dataset.from_list(ROWS).to_parquet(str(folder / "train.parquet"))
    args = DataArguments(dataset_name=str(folder), dataset_split="train=train[:20],validation=train[20:]")
    splits = load_splits(args, seed=0)
    assert {name: len(records) for name, records in splits.items()} == {"train": 20, "validation": 10}
    assert splits["validation"].rows[0] == ROWS[20]
    with pytest.raises(ConfigError, match="--dataset_split 'dev=train'"):
        parse_dataset_split("dev=train")


def test_length_grouping_and_lengths_need_no_row_copies(tmp_path, tokenizer):
    records = read_file(str(write_jsonl(tmp_path / "train.jsonl", ROWS)))
    encoded = encode_splits({"train": records}, TaskSpec(), tokenizer, 16)["train"]
    lengths = feature_lengths(Extended(encoded.features, task_ids=0))
    assert lengths.tolist() == [len(f["input_ids"]) for f in encoded.features] == encoded.lengths().tolist()
    sampler = EpochSampler(lengths, batch_size=4, seed=3, group_by_length=True)
    order = list(sampler)
    assert sorted(order) == list(range(len(ROWS))) and order == list(sampler)  # a permutation, the same again
    sampler.set_epoch(1)
    assert list(sampler) != order
    assert isinstance(sampler.indices(), np.ndarray)


def test_the_cache_is_written_in_record_batches_of_batch_rows(tmp_path, tokenizer, monkeypatch):
    """Loading a cached Arrow file reads one header per record batch, and the pages around each are mapped too: at
    `map`'s default 1,000 rows per batch that touched the whole file, so the cache is written in big batches."""
    import pyarrow as pa

    import nlptransfer.preprocessing as preprocessing

    monkeypatch.setattr(preprocessing, "BATCH_ROWS", 7)
    records = read_file(str(write_jsonl(tmp_path / "train.jsonl", ROWS)))
    encoded = encode_splits({"train": records}, TaskSpec(), tokenizer, 16)["train"]
    (cache,) = {f["filename"] for f in encoded.table.cache_files}
    with pa.memory_map(cache) as source:
        batches = [len(batch) for batch in pa.ipc.open_stream(source)]
    assert batches == [7, 7, 7, 7, 2]


def test_tokenizer_key_ignores_call_state_and_sees_the_definition(tokenizer):
    """The cache key of a tokenizer is the same after calls that leave truncation/padding set, and changes with
    what the tokenizer does (an added token)."""
    from nlptransfer.preprocessing import tokenizer_key

    before = tokenizer_key(tokenizer)
    tokenizer(["a b c", "d"], truncation=True, max_length=7, padding="max_length")
    assert tokenizer.backend_tokenizer.truncation is not None  # the precondition: the call left its state
    assert tokenizer_key(tokenizer) == before
    tokenizer.add_tokens(["zzzqqq"])
    assert tokenizer_key(tokenizer) != before


def test_a_row_without_the_label_others_have_is_named_by_its_line(tmp_path, tokenizer):
    """Arrow reads a field one row lacks as null: the error says both, with the row's line."""
    rows = [dict(row) for row in ROWS]
    del rows[2]["label"]
    records = read_file(str(write_jsonl(tmp_path / "train.jsonl", rows)))
    with pytest.raises(DataError, match=r"train.jsonl:3: field 'label' is missing or null; expected a class name"):
        encode_splits({"train": records}, TaskSpec(), tokenizer, 16)
