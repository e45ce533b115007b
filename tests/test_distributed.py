"""The recipe under `accelerate launch` with two CPU processes (gloo)."""

import json

import pytest

from conftest import launch, recipe_args


@pytest.mark.distributed
def test_two_process_run_counts_each_example_once(tiny_model, cls_files, tmp_path):
    out = tmp_path / "ddp"
    done = launch(
        "finetune.py",
        recipe_args(
            tiny_model,
            cls_files,
            out,
            "--learning_rate",
            "2e-3",
            "--warmup_ratio",
            "0.1",
            "--per_device_train_batch_size",
            "8",
            "--num_train_epochs",
            "6",
        ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_num_processes"] == 2
    # 48 test rows over 2 ranks with eval batch 64: padding duplicates must not be scored
    assert results["test_samples"] == 48 and results["eval_samples"] == 48
    assert results["test_accuracy"] >= 0.8


@pytest.mark.distributed
def test_two_process_multitask_run_keeps_ranks_identical(tiny_model, cls_files, ner_files, tmp_path):
    from test_mtl_recipe import mtl_config

    # batches of one task per rank and step: the other rank's head must still sync (no find_unused_parameters)
    config = mtl_config(tmp_path, tiny_model, cls_files, ner_files, num_train_epochs=8, per_device_train_batch_size=8)
    done = launch("mtl.py", ["--config", str(config)])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "mtl" / "all_results.json").read_text())
    assert results["train_num_processes"] == 2
    assert results["parameters_in_sync"] is True
    # every labelled row scored exactly once, though 48 and 40 rows do not split evenly into the ranks' batches
    assert results["test_topic_samples"] == 48 and results["test_people_samples"] == 40
    assert results["test_topic_accuracy"] >= 0.8 and results["test_people_f1"] >= 0.8


@pytest.mark.distributed
def test_two_process_multitask_run_with_private_layers_keeps_ranks_identical(
    tiny_model, cls_files, ner_files, tmp_path
):
    """A rank whose batch is all `people` leaves the shared top layer unused: it must still sync."""
    import yaml

    from test_mtl_recipe import mtl_config

    config = yaml.safe_load(
        mtl_config(
            tmp_path, tiny_model, cls_files, ner_files, num_train_epochs=8, per_device_train_batch_size=8
        ).read_text()
    )
    config["tasks"][1]["private_layers"] = 1
    (tmp_path / "private.yaml").write_text(yaml.safe_dump(config))
    done = launch("mtl.py", ["--config", str(tmp_path / "private.yaml")])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "mtl" / "all_results.json").read_text())
    assert results["train_num_processes"] == 2 and results["parameters_in_sync"] is True
    assert results["test_topic_accuracy"] >= 0.8 and results["test_people_f1"] >= 0.8
