"""The fine-tuning recipe end to end on the tiny model: learning, outputs, reload, resume, guards."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, killed_at_batch, recipe_args, run_script

RECIPE = str(REPO / "recipes" / "finetune.py")


def run_recipe(args: list[str]) -> dict:
    """Run recipes/finetune.py as a script, the way `python recipes/finetune.py ...` does."""
    run_script(RECIPE, args)
    return json.loads((Path(args[args.index("--output_dir") + 1]) / "all_results.json").read_text())


FAST = ["--learning_rate", "2e-3", "--warmup_ratio", "0.1", "--per_device_train_batch_size", "16"]


def test_classification_learns_and_reloads_in_pipeline(tiny_model, cls_files, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    out = tmp_path / "cls"
    results = run_recipe(recipe_args(tiny_model, cls_files, out, *FAST, "--num_train_epochs", "6"))
    assert results["test_accuracy"] >= 0.8  # chance is 1/3
    assert results["eval_accuracy"] >= 0.8
    history_loss = results["train_loss"]
    assert history_loss < 1.0986  # below the loss of a uniform guess over 3 classes
    for key in (
        "eval_accuracy",
        "test_accuracy",
        "test_f1",
        "test_precision",
        "test_recall",
        "train_runtime",
        "train_samples_per_second",
    ):
        assert key in results
    assert (out / "model.safetensors").is_file() and (out / "run_config.yaml").is_file()
    assert yaml.safe_load((out / "run_config.yaml").read_text())["learning_rate"] == 2e-3

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "food", 1: "sport", 2: "tech"}
    classify = pipeline("text-classification", model=str(out), device="cpu")
    assert classify("the new pasta story today")[0]["label"] == "food"
    assert classify("a good match with the coach")[0]["label"] == "sport"


def test_ner_from_conll_file_learns_and_tags_words(tiny_model, ner_files, tmp_path):
    from transformers import AutoModelForTokenClassification, pipeline

    conll = {}
    for split, path in ner_files.items():
        lines = ["-DOCSTART- -X- O O", ""]
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            # IOB1, as in the original CoNLL-2003 files: the reader must turn it into IOB2
            lines += [
                f"{tok} NNP I-NP {'I-' + tag[2:] if tag != 'O' else 'O'}"
                for tok, tag in zip(row["tokens"], row["ner_tags"])
            ]
            lines.append("")
        conll[split] = str(tmp_path / f"eng.{split}")
        Path(conll[split]).write_text("\n".join(lines))
    out = tmp_path / "ner"
    results = run_recipe(recipe_args(tiny_model, conll, out, "--task_type", "ner", *FAST, "--num_train_epochs", "6"))
    assert results["test_f1"] >= 0.8
    for key in (
        "test_precision",
        "test_recall",
        "test_strict_f1",
        "test_PER_f1",
        "test_LOC_f1",
        "test_PER_number",
        "test_accuracy",
    ):
        assert key in results
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert set(model.config.id2label.values()) == {"O", "B-PER", "B-LOC"}
    tagger = pipeline("token-classification", model=str(out), device="cpu")
    tags = {item["word"]: item["entity"] for item in tagger("Anna visited Rome today .")}
    assert tags.get("anna") == "B-PER" and tags.get("rome") == "B-LOC"


def test_kill_and_resume_matches_uninterrupted_run(tiny_model, cls_files, tmp_path):
    common = [*FAST, "--max_steps", "20", "--checkpointing_steps", "5", "--eval_strategy", "steps", "--eval_steps", "4"]
    full = run_recipe(recipe_args(tiny_model, cls_files, tmp_path / "full", *common))

    out = tmp_path / "killed"
    with killed_at_batch(8):
        run_recipe(recipe_args(tiny_model, cls_files, out, *common))
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_5"]  # 24 batches/epoch: mid-epoch

    resumed = run_recipe(recipe_args(tiny_model, cls_files, out, *common, "--resume_from_checkpoint", "latest"))
    for key in ("test_accuracy", "test_loss", "eval_accuracy", "eval_loss"):
        assert resumed[key] == full[key], key
    full_weights, resumed_weights = (
        load_file(tmp_path / "full" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)


def test_best_model_selection_and_early_stopping(tiny_model, cls_files, tmp_path):
    # learning rate 0: validation never improves after the first evaluation, so patience 2 stops at the third
    args = [
        "--learning_rate",
        "0",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--early_stopping_patience",
        "2",
        "--max_steps",
        "50",
    ]
    results = run_recipe(recipe_args(tiny_model, cls_files, tmp_path / "run", *args))
    assert results["train_steps"] == 6


def test_restored_best_model_scores_the_recorded_best_not_the_last(tiny_model, cls_files, tmp_path, capsys):
    """A run whose best validation loss is not its last: the restored model scores exactly the recorded best, and
    not what the last evaluation saw (a high constant LR makes validation loss go back up)."""
    args = ["--learning_rate", "2e-2", "--lr_scheduler_type", "constant", "--warmup_ratio", "0"]
    args += ["--eval_strategy", "steps", "--eval_steps", "5", "--max_steps", "60", "--metric_for_best_model", "loss"]
    results = run_recipe(recipe_args(tiny_model, cls_files, tmp_path / "run", *args))
    evaluations = re.findall(r"step (\d+): .*eval_loss=([0-9.]+)", capsys.readouterr().out)
    last_step, last_loss = int(evaluations[-1][0]), float(evaluations[-1][1])
    assert results["best_metric_name"] == "loss" and last_step == results["train_steps"] == 60
    assert results["best_step"] < last_step  # the precondition: selection had something to restore
    assert results["eval_loss"] == results["best_metric"]  # scored again after the restore: the same weights
    assert abs(results["eval_loss"] - last_loss) > 1e-3  # ...and not the last weights
    assert results["test_accuracy"] > 0.5  # it learned (chance: 1/3)


def test_tensorboard_tracker_logs_eval_metrics(tiny_model, cls_files, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    run_recipe(
        recipe_args(
            tiny_model,
            cls_files,
            out,
            "--max_steps",
            "4",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--logging_steps",
            "2",
            "--report_to",
            "tensorboard",
        )
    )
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 0


def test_bf16_autocast_on_cpu_trains_and_saves_fp32(tiny_model, cls_files, tmp_path):
    out = tmp_path / "bf16"
    results = run_recipe(
        recipe_args(tiny_model, cls_files, out, *FAST, "--max_steps", "6", "--mixed_precision", "bf16")
    )
    assert results["train_steps"] == 6 and "test_accuracy" in results
    assert all(t.dtype == torch.float32 for t in load_file(out / "model.safetensors").values())
