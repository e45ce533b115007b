import json

from nlptransfer.cli import main

from conftest import recipe_args
from test_recipe import FAST, run_recipe


def test_predict_prints_label_names(tiny_model, cls_files, tmp_path, capsys):
    out = tmp_path / "run"
    run_recipe(recipe_args(tiny_model, cls_files, out, *FAST, "--num_train_epochs", "6"))
    capsys.readouterr()
    assert main(["predict", str(out), "the new pasta story today", "a good match with the coach"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prediction"]["label"] for line in lines] == ["food", "sport"]


def test_models_lists_aliases(capsys):
    assert main(["models"]) == 0
    assert "sentence-transformers/all-minilm-l6-v2" in capsys.readouterr().out
