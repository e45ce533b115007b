import json

import pytest

from nlptransfer.readers import DataError, detect_format, iob1_to_iob2, read_file


def test_jsonl_keeps_line_numbers_and_skips_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n')
    records = read_file(str(path))
    assert [r["text"] for r in records.rows] == ["a", "b"]
    assert records.where(1) == f"{path}:3"


def test_json_list_and_data_key(tmp_path):
    rows = [{"text": "a", "label": "x"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    assert read_file(str(tmp_path / "a.json")).rows == rows
    assert read_file(str(tmp_path / "b.json")).rows == rows


def test_csv_and_tsv(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"hello, world",pos\nbye,neg\n')
    (tmp_path / "d.tsv").write_text("text\tlabel\nhello\tpos\n")
    csv_records = read_file(str(tmp_path / "d.csv"))
    assert csv_records.rows[0] == {"text": "hello, world", "label": "pos"}
    assert csv_records.where(1) == f"{tmp_path / 'd.csv'}:3"
    assert read_file(str(tmp_path / "d.tsv")).rows == [{"text": "hello", "label": "pos"}]


def test_conll_skips_docstart_and_converts_iob1(tmp_path):
    path = tmp_path / "eng.train"
    path.write_text(
        "-DOCSTART- -X- O O\n\n"
        "EU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\n\n"
        "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\nParis NNP I-NP B-PER\n"
    )
    records = read_file(str(path))
    assert records.rows == [
        {"tokens": ["EU", "rejects", "German"], "ner_tags": ["B-ORG", "O", "B-MISC"]},
        {"tokens": ["Peter", "Blackburn", "Paris"], "ner_tags": ["B-PER", "I-PER", "B-PER"]},
    ]
    assert records.where(1) == f"{path}:7"


def test_conll_tag_column_choice(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text("EU NNP B-NP I-ORG\n")
    assert read_file(str(path), tag_column=2).rows[0]["ner_tags"] == ["B-NP"]


def test_iob1_to_iob2_is_idempotent_and_leaves_other_schemes():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
        "B-ORG",
    ]
    assert iob1_to_iob2(["B-PER", "I-PER", "O"]) == ["B-PER", "I-PER", "O"]
    assert iob1_to_iob2(["S-PER", "E-LOC"]) == ["S-PER", "E-LOC"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_file(str(tmp_path / "nope.jsonl"))


def test_unknown_format_says_what_was_expected(tmp_path):
    path = tmp_path / "data.bin"
    path.write_text("just some words\n")
    with pytest.raises(DataError, match=r"data\.bin: cannot tell the file format.*\.jsonl.*CoNLL"):
        read_file(str(path))


def test_format_sniffing_for_conll_and_jsonl_without_extension(tmp_path):
    (tmp_path / "a.train").write_text("EU NNP I-NP I-ORG\n")
    (tmp_path / "b.data").write_text('{"text": "x"}\n')
    assert detect_format(tmp_path / "a.train") == "conll"
    assert detect_format(tmp_path / "b.data") == "jsonl"


def test_bad_json_line_names_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", label}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        read_file(str(path))


def test_malformed_conll_line_names_line(tmp_path):
    path = tmp_path / "eng.conll"
    path.write_text("EU NNP I-NP I-ORG\nrejects\n")
    with pytest.raises(DataError, match=r"eng\.conll:2: malformed CoNLL line 'rejects': expected at least 2"):
        read_file(str(path))


def test_csv_row_with_extra_fields(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,b,c\n")
    with pytest.raises(DataError, match=r"d\.csv:2: more fields than the 2 header columns"):
        read_file(str(path))
