"""Push runs to the local Hub-protocol server and load them back in fresh processes."""

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO, recipe_args
from hub_server import HubServer, run_client
from test_adapters import TEXTS

SECRET = "hf_secret_token_that_must_never_show"
RECIPES = REPO / "recipes"


def push(hub, tmp_path, run_dir, repo_id, *extra):
    code = f"""
        import sys
        from nlptransfer.cli import main
        sys.exit(main(["push", {str(run_dir)!r}, {repo_id!r}, *{list(extra)!r}]))
    """
    return run_client(hub, tmp_path / "push_home", code, env={"HF_TOKEN": SECRET})


def logits_code(loader: str, source: str) -> str:
    return f"""
        import json, torch
        from transformers import AutoTokenizer
        {loader}
        model = model.eval()
        tokenizer = AutoTokenizer.from_pretrained({source!r})
        with torch.no_grad():
            print(json.dumps(model(**tokenizer({TEXTS!r}, padding=True, return_tensors="pt")).logits.tolist()))
    """


def remote_then_local(hub: HubServer, home: Path, remote_code: str, local_code: str) -> tuple:
    """One fresh interpreter prints the logits of the model loaded from the Hub, then of the run folder it was
    pushed from (the reference; one interpreter instead of two: each costs ~10 s of imports)."""
    done = run_client(hub, home, textwrap.dedent(remote_code) + textwrap.dedent(local_code))
    assert done.returncode == 0, done.stderr[-2000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith(("{", "["))]  # libraries print too
    remote, local = (json.loads(line) for line in printed[-2:])
    return remote, local


def front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def lora_run(trained_runs):
    """The session's LoRA run (conftest.py's `trained_runs`, the recipe with test_adapters' LORA settings); the
    tests below check that pushing leaves it as it was."""
    return trained_runs["lora"]


def snapshot(folder) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_push_adapter_then_load_from_hub_in_fresh_process(lora_run, tmp_path):
    with HubServer() as hub:
        before = snapshot(lora_run)
        hub.fail_next("POST", "/commit/", status=503)  # a transient error is retried
        done = push(hub, tmp_path, lora_run, "me/tiny-lora")
        assert done.returncode == 0, done.stderr[-2000:]
        assert hub.faults[0]["times"] == 0  # the injected 503 happened and the push went on
        assert SECRET not in done.stdout + done.stderr
        assert snapshot(lora_run) == before  # nothing written into the run (the card is uploaded from memory)

        files = hub.files("me/tiny-lora")
        assert {
            "adapter_model.safetensors",
            "adapter_config.json",
            "nlptransfer_task.json",
            "tokenizer.json",
            "README.md",
        } <= set(files)
        adapter_oid = hashlib.sha256(files["adapter_model.safetensors"]).hexdigest()
        assert adapter_oid in hub.lfs_uploads  # weights went through the LFS path
        assert not any(p.startswith("checkpoints/") for p in files)

        card = front_matter(files["README.md"])
        assert card["library_name"] == "peft" and card["pipeline_tag"] == "text-classification"
        assert "lora" in card["tags"]
        results = card["model-index"][0]["results"]
        metrics = {(r["dataset"]["split"], m["type"]): m["value"] for r in results for m in r["metrics"]}
        recorded = json.loads((lora_run / "all_results.json").read_text())
        assert metrics[("test", "accuracy")] == pytest.approx(recorded["test_accuracy"])
        readme = files["README.md"].decode()
        assert "`food`, `sport`, `tech`" in readme and 'load_adapter_model("me/tiny-lora")' in readme
        assert "trainable parameters" in readme

        local_code = logits_code(
            f"from nlptransfer import load_adapter_model; model = load_adapter_model({str(lora_run)!r})", str(lora_run)
        )
        remote_code = logits_code(
            'from nlptransfer import load_adapter_model; model = load_adapter_model("me/tiny-lora")', "me/tiny-lora"
        )
        remote, local = remote_then_local(hub, tmp_path / "fresh", remote_code, local_code)
        assert remote == local


def test_push_full_model_loads_with_auto_class(trained_runs, tmp_path):
    run = trained_runs["classification"]  # a fine-tuning run of the whole model (the session's)
    with HubServer() as hub:
        before = snapshot(run)
        assert push(hub, tmp_path, run, "me/tiny-full", "--private").returncode == 0
        assert snapshot(run) == before
        assert hub.get_repo("me/tiny-full").private
        card = front_matter(hub.files("me/tiny-full")["README.md"])
        assert card["library_name"] == "transformers"
        load = "from transformers import AutoModelForSequenceClassification as A; model = A.from_pretrained('{}')"
        remote, local = remote_then_local(
            hub,
            tmp_path / "fresh",
            logits_code(load.format("me/tiny-full"), "me/tiny-full"),
            logits_code(load.format(run), str(run)),
        )
        assert remote == local


def test_failed_push_keeps_run_and_says_what_to_rerun(lora_run, tmp_path):
    with HubServer() as hub:
        before = snapshot(lora_run)
        hub.fail_next("POST", "/commit/", status=500, times=10)
        done = push(hub, tmp_path, lora_run, "me/broken")
        assert done.returncode == 1
        assert f"the run folder is unchanged. Re-run: nlptransfer push {lora_run} me/broken" in done.stderr
        assert SECRET not in done.stdout + done.stderr
        assert snapshot(lora_run) == before


def test_recipe_push_to_hub_flag(tiny_model, cls_files, tmp_path):
    run = tmp_path / "pushed-by-recipe"
    args = recipe_args(tiny_model, cls_files, run, "--peft", "lora", "--max_steps", "3")
    args += ["--push_to_hub", "true", "--hub_model_id", "me/from-recipe", "--hub_private", "true"]
    code = f"""
        import sys
        sys.path.insert(0, {str(RECIPES)!r})
        from finetune import main
        main({args!r})
    """
    with HubServer() as hub:
        done = run_client(hub, tmp_path / "home", code, env={"HF_TOKEN": SECRET})
        assert done.returncode == 0, done.stderr[-2000:]
        assert "pushed to" in done.stdout and SECRET not in done.stdout + done.stderr
        assert hub.get_repo("me/from-recipe").private
        assert {"adapter_model.safetensors", "README.md", "all_results.json"} <= set(hub.files("me/from-recipe"))


def test_retry_only_transient_errors_and_merged_card_is_plain_model(lora_run):
    from nlptransfer.hub import _is_transient, build_model_card, with_retries

    assert _is_transient(ConnectionError()) and not _is_transient(FileNotFoundError("x"))
    calls = []

    def missing_file():
        calls.append(1)
        raise FileNotFoundError("weights.bin")

    with pytest.raises(FileNotFoundError):
        with_retries(missing_file, wait=0)
    assert len(calls) == 1  # not retried
    assert build_model_card(lora_run, "me/x").data.library_name == "peft"
    merged = build_model_card(lora_run, "me/x", merged=True)
    assert merged.data.library_name == "transformers" and "AutoModelForSequenceClassification" in merged.text


MTL_LOGITS = """
    import json, torch
    from nlptransfer import MultiTaskModel
    model = MultiTaskModel.from_pretrained({source!r})
    batch = model.tokenizer(["the coach and the team", "Anna visited Paris today ."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = {{task: model(**batch, task=task).logits[task].tolist() for task in model.task_names}}
    print(json.dumps(out))
"""


def test_multitask_recipe_pushes_one_artifact_that_reloads_from_the_hub(tiny_model, cls_files, ner_files, tmp_path):
    from test_mtl_recipe import mtl_config

    config = mtl_config(tmp_path, tiny_model, cls_files, ner_files, max_steps=8)
    run = tmp_path / "mtl"
    code = f"""
        import sys
        sys.path.insert(0, {str(RECIPES)!r})
        from mtl import main
        main(["--config", {str(config)!r}, "--push_to_hub", "true", "--hub_model_id", "me/tiny-mtl"])
    """
    with HubServer() as hub:
        done = run_client(hub, tmp_path / "home", code, env={"HF_TOKEN": SECRET})
        assert done.returncode == 0, done.stderr[-2000:]
        assert SECRET not in done.stdout + done.stderr
        files = hub.files("me/tiny-mtl")
        assert {"model.safetensors", "nlptransfer_multitask.json", "tokenizer.json", "README.md"} <= set(files)
        assert hashlib.sha256(files["model.safetensors"]).hexdigest() in hub.lfs_uploads
        card = front_matter(files["README.md"])
        assert card["library_name"] == "nlptransfer" and "multi-task" in card["tags"]
        results = json.loads((run / "all_results.json").read_text())
        reported = {
            (r["dataset"]["name"], r["dataset"]["split"], m["type"]): m["value"]
            for r in card["model-index"][0]["results"]
            for m in r["metrics"]
        }
        assert reported[("topic", "test", "accuracy")] == pytest.approx(results["test_topic_accuracy"])
        assert reported[("people", "test", "f1")] == pytest.approx(results["test_people_f1"])
        assert 'MultiTaskModel.from_pretrained("me/tiny-mtl")' in files["README.md"].decode()

        remote, local = remote_then_local(
            hub, tmp_path / "fresh", MTL_LOGITS.format(source="me/tiny-mtl"), MTL_LOGITS.format(source=str(run))
        )
        assert remote == local
