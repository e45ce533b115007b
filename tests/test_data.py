import pytest
from transformers import AutoTokenizer

from nlptransfer.config import DataArguments
from nlptransfer.data import carve_validation, encode_splits, load_splits
from nlptransfer.readers import DataError, Records, read_file
from nlptransfer.tasks import TaskSpec

from conftest import write_jsonl


def encode(tmp_path, tokenizer, kind, splits, max_length=32, **spec_kwargs):
    records = {name: read_file(str(write_jsonl(tmp_path / f"{name}.jsonl", rows))) for name, rows in splits.items()}
    spec = TaskSpec(kind=kind, **spec_kwargs)
    return spec, encode_splits(records, spec, tokenizer, max_length)


@pytest.fixture
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_string_labels_sorted_and_ids_stable(tmp_path, tokenizer):
    rows = [{"text": "goal", "label": "sport"}, {"text": "chip", "label": "food"}, {"text": "code", "label": "tech"}]
    spec, encoded = encode(tmp_path, tokenizer, "classification", {"train": rows})
    assert spec.labels == ["food", "sport", "tech"]
    assert [f["labels"] for f in encoded["train"].features] == [1, 0, 2]


def test_integer_labels_keep_numeric_order(tmp_path, tokenizer):
    rows = [{"text": "goal", "label": 10}, {"text": "chip", "label": 2}, {"text": "code", "label": 0}]
    spec, encoded = encode(tmp_path, tokenizer, "classification", {"train": rows})
    assert spec.labels == ["0", "2", "10"]
    assert [f["labels"] for f in encoded["train"].features] == [2, 1, 0]


def test_sentence_pairs_get_segment_ids(tmp_path, tokenizer):
    rows = [{"text_a": "goal team", "text_b": "chip", "label": 1}]
    _, encoded = encode(
        tmp_path, tokenizer, "classification", {"train": rows}, text_column="text_a", text_pair_column="text_b"
    )
    feature = encoded["train"].features[0]
    assert feature["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert tokenizer.decode(feature["input_ids"]) == "[CLS] goal team [SEP] chip [SEP]"


def test_ner_labels_first_subword_only(tmp_path, tokenizer):
    rows = [{"tokens": ["Anna", "Abcd", "Rome"], "ner_tags": ["B-PER", "B-ORG", "B-LOC"]}]
    spec, encoded = encode(tmp_path, tokenizer, "ner", {"train": rows})
    feature = encoded["train"].features[0]
    assert tokenizer.convert_ids_to_tokens(feature["input_ids"]) == [
        "[CLS]",
        "anna",
        "ab",
        "##c",
        "##d",
        "rome",
        "[SEP]",
    ]
    assert spec.labels == ["B-LOC", "B-ORG", "B-PER"]  # no "O" in this train file
    names = [spec.labels[i] if i != -100 else None for i in feature["labels"]]
    assert names == [None, "B-PER", "B-ORG", None, None, "B-LOC", None]
    assert encoded["train"].words_of_feature == [[0, 1, 2]]


def test_long_ner_sentence_is_split_not_dropped(tmp_path, tokenizer):
    words = ["anna", "met", "bob", "in", "paris"] * 6  # 30 words, one piece each
    tags = ["B-PER", "O", "B-PER", "O", "B-LOC"] * 6
    spec, encoded = encode(tmp_path, tokenizer, "ner", {"train": [{"tokens": words, "ner_tags": tags}]}, max_length=12)
    train = encoded["train"]
    assert len(train.features) == 3  # 10 words per window of 12 tokens
    assert all(len(f["input_ids"]) <= 12 for f in train.features)
    assert sorted(w for ws in train.words_of_feature for w in ws) == list(range(30))
    labelled = [spec.labels[i] for f in train.features for i in f["labels"] if i != -100]
    assert labelled == tags


def test_carve_validation_is_seeded_and_disjoint():
    records = Records("x", [{"i": i} for i in range(100)], list(range(1, 101)))
    train_a, held_a = carve_validation(records, 10, seed=1)
    train_b, held_b = carve_validation(records, 10, seed=1)
    assert held_a.rows == held_b.rows and len(held_a) == 10 and len(train_a) == 90
    assert not {r["i"] for r in held_a.rows} & {r["i"] for r in train_a.rows}
    assert carve_validation(records, 10, seed=2)[1].rows != held_a.rows


def test_validation_split_percentage_in_load_splits(tmp_path, cls_files):
    args = DataArguments(train_file=cls_files["train"], validation_split_percentage=25, max_test_samples=5)
    splits = load_splits(args, seed=0)
    assert len(splits["validation"]) == 96 and len(splits["train"]) == 288


# ---- bad input: every message names the file, line and field ------------------------------------


def test_missing_column(tmp_path, tokenizer):
    with pytest.raises(
        DataError, match=r"train\.jsonl:1: no field 'text' \(fields: 'sentence', 'label'\); set --text_column_name"
    ):
        encode(tmp_path, tokenizer, "classification", {"train": [{"sentence": "a", "label": 1}]})


def test_empty_text(tmp_path, tokenizer):
    rows = [{"text": "goal", "label": "a"}, {"text": "  ", "label": "b"}]
    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'text' is empty"):
        encode(tmp_path, tokenizer, "classification", {"train": rows})


def test_eval_label_not_seen_in_train(tmp_path, tokenizer):
    splits = {
        "train": [{"text": "goal", "label": "sport"}],
        "test": [{"text": "a", "label": "sport"}, {"text": "b", "label": "art"}],
    }
    with pytest.raises(
        DataError,
        match=r"test\.jsonl:2: label 'art' in field 'label' was not seen in the training data \(known: sport\)",
    ):
        encode(tmp_path, tokenizer, "classification", splits)


def test_eval_tag_not_seen_in_train(tmp_path, tokenizer):
    splits = {"train": [{"tokens": ["a"], "ner_tags": ["O"]}], "validation": [{"tokens": ["b"], "ner_tags": ["B-PER"]}]}
    with pytest.raises(DataError, match=r"validation\.jsonl:1: label 'B-PER' in field 'ner_tags' was not seen"):
        encode(tmp_path, tokenizer, "ner", splits)


def test_tokens_tags_length_mismatch(tmp_path, tokenizer):
    rows = [{"tokens": ["a", "b"], "ner_tags": ["O", "O"]}, {"tokens": ["a", "b", "c"], "ner_tags": ["O", "O"]}]
    with pytest.raises(DataError, match=r"train\.jsonl:2: 'tokens' has 3 items but 'ner_tags' has 2"):
        encode(tmp_path, tokenizer, "ner", {"train": rows})


def test_label_column_on_ner_task(tmp_path, tokenizer):
    with pytest.raises(
        DataError,
        match=r"train\.jsonl:1: task 'ner' needs a word list 'tokens'.*single label 'label'.*--task_type classification",
    ):
        encode(tmp_path, tokenizer, "ner", {"train": [{"text": "a b", "label": "x"}]})


def test_token_lists_on_classification_task(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"train\.jsonl:1: this row has token/tag lists.*--task_type ner"):
        encode(tmp_path, tokenizer, "classification", {"train": [{"tokens": ["a"], "ner_tags": ["O"]}]})


def test_non_class_label(tmp_path, tokenizer):
    with pytest.raises(
        DataError, match=r"train\.jsonl:1: field 'label' holds 0\.5; expected a class name or an integer"
    ):
        encode(tmp_path, tokenizer, "classification", {"train": [{"text": "a", "label": 0.5}]})


def test_empty_ner_sentence(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"train\.jsonl:1: field 'tokens' is an empty sentence"):
        encode(tmp_path, tokenizer, "ner", {"train": [{"tokens": [], "ner_tags": []}]})


def test_hub_style_dataset_class_labels_become_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    folder = tmp_path / "hub_ds"
    folder.mkdir()
    for split, rows in (
        ("train", {"text": ["good", "bad"], "label": [1, 0]}),
        ("test", {"text": ["fine"], "label": [1]}),
    ):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    splits = load_splits(DataArguments(dataset_name=str(folder)), seed=0)
    assert [r["label"] for r in splits["train"].rows] == ["pos", "neg"]
    assert splits["test"].where(0).endswith("split test, row 0")
