"""Round trip through the in-memory Hub (tests/hub_server.py) with the real huggingface_hub / transformers / peft.

The clients run in subprocesses: huggingface_hub reads HF_ENDPOINT when it is imported, and conftest puts this
process in offline mode.
"""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from conftest import VOCAB, tiny_bert_config
from hub_server import HubServer, last_json_line, run_client

LABELS = {0: "a", 1: "b", 2: "c"}
TEXTS = ["the goal today", "a new chip with code"]


def local_logits(folder: Path) -> list[list[float]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.tolist()


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory) -> Path:
    """A tiny BERT sequence classifier (3 labels) with its fast WordPiece tokenizer, saved to a folder."""
    import torch
    from transformers import BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-cls")
    BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)}).save_pretrained(folder)
    config = tiny_bert_config(num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pushed(hub, tiny_cls, tmp_path_factory) -> dict:
    """Subprocess A: create_repo + upload_folder + ModelCard.push_to_hub, transformers and peft push_to_hub."""
    code = f"""
        import json
        from huggingface_hub import HfApi, ModelCard, ModelCardData
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        api = HfApi()
        out = {{"whoami": api.whoami()["name"]}}
        out["repo_url"] = str(api.create_repo("me/tiny", exist_ok=True))
        out["repo_url_again"] = str(api.create_repo("me/tiny", exist_ok=True))
        info = api.upload_folder(folder_path={str(tiny_cls)!r}, repo_id="me/tiny", commit_message="add model")
        out["upload_oid"] = info.oid
        card = ModelCard.from_template(
            ModelCardData(license="apache-2.0", library_name="transformers", tags=["nlptransfer", "test"]),
            model_id="me/tiny",
        )
        card.push_to_hub("me/tiny", commit_message="add card")
        out["files"] = sorted(api.list_repo_files("me/tiny"))
        out["tree"] = sorted(f.path for f in api.list_repo_tree("me/tiny", recursive=True))
        out["sha"] = api.model_info("me/tiny").sha
        # same folder again: every file unchanged => no new commit
        out["noop_oid"] = api.upload_folder(folder_path={str(tiny_cls)!r}, repo_id="me/tiny").oid

        model = AutoModelForSequenceClassification.from_pretrained({str(tiny_cls)!r})
        tokenizer = AutoTokenizer.from_pretrained({str(tiny_cls)!r})
        model.push_to_hub("me/tiny2")
        tokenizer.push_to_hub("me/tiny2")

        from peft import LoraConfig, get_peft_model
        lora = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
        lora.push_to_hub("me/tiny-lora")
        print(json.dumps(out))
    """
    proc = run_client(hub, tmp_path_factory.mktemp("hf_home_a"), code)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return last_json_line(proc.stdout)


def test_upload_goes_through_lfs_and_commits(hub, tiny_cls, pushed):
    assert pushed["whoami"] == "me"
    assert pushed["repo_url"] == pushed["repo_url_again"] == f"{hub.url}/me/tiny"

    files = hub.files("me/tiny")
    local = {p.name: p.read_bytes() for p in tiny_cls.iterdir() if p.is_file()}
    for name, data in local.items():
        assert files[name] == data, name
    # model.safetensors went through the LFS batch/PUT/verify path, config.json inline in the NDJSON commit
    weights_oid = hashlib.sha256(local["model.safetensors"]).hexdigest()
    assert weights_oid in hub.lfs_uploads and weights_oid in hub.lfs_verified
    # LFS storage is per repo: the same weights pushed to me/tiny2 are uploaded again
    assert ("model", "me/tiny", weights_oid) in hub.lfs_upload_log
    assert ("model", "me/tiny2", weights_oid) in hub.lfs_upload_log
    assert "model.safetensors" in hub.lfs_files("me/tiny")
    assert "config.json" not in hub.lfs_files("me/tiny")
    assert json.loads(files["config.json"])["id2label"] == {str(k): v for k, v in LABELS.items()}

    front = files["README.md"].decode().split("---")[1]
    meta = yaml.safe_load(front)
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert "nlptransfer" in meta["tags"]

    history = hub.commits("me/tiny")
    assert [c.title for c in history] == ["add card", "add model", "initial commit"]
    assert pushed["upload_oid"] == history[1].sha
    assert pushed["sha"] == pushed["noop_oid"] == history[0].sha  # unchanged re-upload: no new commit
    assert pushed["files"] == pushed["tree"] == sorted(files)

    assert "model.safetensors" in hub.files("me/tiny2")
    assert "tokenizer.json" in hub.files("me/tiny2")
    assert "adapter_model.safetensors" in hub.lfs_files("me/tiny-lora")
    assert json.loads(hub.files("me/tiny-lora")["adapter_config.json"])["r"] == 2
    assert hub.unknown_requests == []


def test_download_gives_identical_logits(hub, tiny_cls, pushed, tmp_path):
    """Subprocess B, fresh cache: from_pretrained from the server gives the same logits as the local folder."""
    code = f"""
        import hashlib, json, torch
        from pathlib import Path
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from peft import PeftModel

        torch.set_num_threads(1)
        out = {{}}
        for repo in ("me/tiny", "me/tiny2"):
            tokenizer = AutoTokenizer.from_pretrained(repo)
            model = AutoModelForSequenceClassification.from_pretrained(repo).eval()
            with torch.no_grad():
                out[repo] = model(**tokenizer({TEXTS!r}, padding=True, return_tensors="pt")).logits.tolist()
        base = AutoModelForSequenceClassification.from_pretrained("me/tiny")
        lora = PeftModel.from_pretrained(base, "me/tiny-lora")
        out["lora_r"] = lora.peft_config["default"].r

        from huggingface_hub import hf_hub_download, snapshot_download
        folder = snapshot_download("me/tiny")
        out["snapshot"] = sorted(p.name for p in Path(folder).iterdir())
        out["weights_sha"] = hashlib.sha256(Path(folder, "model.safetensors").read_bytes()).hexdigest()
        out["config_text"] = Path(hf_hub_download("me/tiny", "config.json", force_download=True)).read_text()
        print(json.dumps(out))
    """
    before = len(hub.requests)
    proc = run_client(hub, tmp_path / "hf_home_b", code)
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = last_json_line(proc.stdout)

    import torch

    expected = torch.tensor(local_logits(tiny_cls))
    for repo in ("me/tiny", "me/tiny2"):
        assert torch.allclose(torch.tensor(out[repo]), expected, rtol=0, atol=0), repo
    assert out["lora_r"] == 2
    assert out["snapshot"] == sorted(hub.files("me/tiny"))
    assert out["weights_sha"] == hashlib.sha256((tiny_cls / "model.safetensors").read_bytes()).hexdigest()
    assert out["config_text"] == (tiny_cls / "config.json").read_text()
    assert any(m == "GET" and "/me/tiny/resolve/" in p and "model.safetensors" in p for m, p in hub.requests[before:])
    assert hub.unknown_requests == []


def test_missing_repo_is_repository_not_found(hub, tmp_path):
    code = """
        import json
        from transformers import AutoModelForSequenceClassification
        try:
            AutoModelForSequenceClassification.from_pretrained("me/missing")
        except OSError as err:
            cause = type(err.__cause__).__name__
            print(json.dumps({"type": type(err).__name__, "cause": cause, "message": str(err)}))
        else:
            print(json.dumps({"type": None}))
    """
    proc = run_client(hub, tmp_path / "hf_home_c", code, timeout=60)
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = last_json_line(proc.stdout)
    assert out["type"] is not None
    assert out["cause"] == "RepositoryNotFoundError", out
    assert "not a valid model identifier" in out["message"] or "Repository Not Found" in out["message"], out


def test_server_introspection_and_errors(hub):
    import urllib.error
    import urllib.request

    hub.create_repo("me/direct", repo_type="dataset")
    assert hub.files("me/direct", repo_type="dataset") == {
        ".gitattributes": hub.files("me/direct", repo_type="dataset")[".gitattributes"]
    }
    for path, code in (
        ("/me/missing/resolve/main/config.json", "RepoNotFound"),
        ("/datasets/me/direct/resolve/main/nope.txt", "EntryNotFound"),
        ("/datasets/me/direct/resolve/nobranch/.gitattributes", "RevisionNotFound"),
    ):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(hub.url + path, timeout=10)
        assert err.value.code == 404 and err.value.headers["X-Error-Code"] == code
    req = urllib.request.Request(
        hub.url + "/datasets/me/direct/resolve/main/.gitattributes", headers={"Range": "bytes=0-9"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 206 and len(resp.read()) == 10
        assert len(resp.headers["X-Repo-Commit"]) == 40
