"""The multi-task and distillation recipes under DeepSpeed on two CPU processes (gloo), as test_sharded.py runs the
fine-tuning recipe: really ZeRO at world size 2, best-model selection, and the saved folder, reloaded by the test
process, scores the recorded test score; per-task adapters under ZeRO-2 learn every task, and are refused under
ZeRO-3. The plain runs go through ZeRO-3, the stage whose saving has to gather partitioned weights; ZeRO-2 keeps
whole weights on every process and saves as DDP does: its multi-task save is the per-task adapter test's, its
fine-tuning save test_sharded.py's resume test (ZeRO-2 twins of the two ZeRO-3 tests here, 112 s of a worker in
CI, were dropped)."""

import json

import pytest
from test_sharded import check_engine, reloaded_accuracy, reloaded_topic_accuracy, zero3_partitioning_everything

from conftest import launch
from test_distill import distill_args, narrow_model  # noqa: F401, F811 (a fixture)

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.distributed


def test_zero3_multitask_on_two_cpu_processes_selects_saves_and_reloads(tiny_model, cls_files, ner_files, tmp_path):
    from test_mtl_recipe import mtl_config

    config = zero3_partitioning_everything(tmp_path)
    # 88 updates of 2 x 16 rows: eval average 1.0 (8 epochs of 2 x 8 rows took 95 s more)
    epochs = dict(num_train_epochs=4, per_device_train_batch_size=16, learning_rate=4e-3)
    run = mtl_config(tmp_path, tiny_model, cls_files, ner_files, **epochs)
    done = launch("mtl.py", ["--config", str(run), "--cpu_threads", "1", "--mixed_precision", "no"], config)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "mtl" / "all_results.json").read_text())
    check_engine(results, done.stdout, 3)
    assert results["eval_average"] == results["best_metric"] and results["parameters_in_sync"] is True
    assert results["test_topic_accuracy"] >= 0.8 and results["test_people_f1"] >= 0.8  # chance: 1/3 and 0
    assert reloaded_topic_accuracy(tmp_path / "mtl", cls_files["test"]) == results["test_topic_accuracy"]


def test_zero3_distillation_student_saves_and_reloads(narrow_model, cls_teacher, cls_files, tmp_path):  # noqa: F811
    """A live teacher (loaded whole on every process, not partitioned) and a narrower student whose hidden-state
    projections train too: the saved student is the one that was scored."""
    config = zero3_partitioning_everything(tmp_path)
    out = tmp_path / "student"
    extra = ["--hidden_loss", "mse", "--per_device_train_batch_size", "8", "--num_train_epochs", "8"]
    extra += ["--temperature", "1", "--mixed_precision", "no"]
    done = launch("distill.py", distill_args(cls_teacher, narrow_model, cls_files, out, *extra), config)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    check_engine(results, done.stdout, 3)
    assert results["teacher_targets"] == "live" and results["parameters_in_sync"] is True
    assert results["test_accuracy"] >= 0.8
    assert reloaded_accuracy(out, cls_files["test"]) == results["test_accuracy"]


def test_zero2_multitask_with_per_task_adapters_learns_saves_and_reloads(tiny_model, cls_files, ner_files, tmp_path):
    """One LoRA adapter per task over a frozen encoder. Processes running different tasks in one step made ZeRO-2
    add one task's adapter gradients to the other's (it reduces gradients in the order backward produces them):
    the people adapter never moved. Under DeepSpeed every process now runs the same task at each step."""
    from safetensors.torch import load_file

    from test_mtl_recipe import mtl_config

    run = mtl_config(tmp_path, tiny_model, cls_files, ner_files, max_steps=120, learning_rate=1e-2)
    args = ["--config", str(run), "--peft", "lora", "--lora_r", "4", "--adapter_per_task", "true"]
    done = launch("mtl.py", [*args, "--cpu_threads", "1", "--mixed_precision", "no"], "deepspeed_zero2.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "mtl" / "all_results.json").read_text())
    check_engine(results, done.stdout, 2)
    assert results["test_people_f1"] >= 0.8 and results["eval_average"] >= 0.8  # 0.44 / 0.71 before the fix
    keys = load_file(tmp_path / "mtl" / "model.safetensors").keys()
    assert any(".lora_B.people." in k for k in keys)
    assert not any(k.startswith("encoder.") and "lora_" not in k for k in keys)  # the frozen base is not copied
    assert reloaded_topic_accuracy(tmp_path / "mtl", cls_files["test"]) == results["test_topic_accuracy"]


def test_per_task_adapters_under_zero3_are_refused(tiny_model, cls_files, ner_files, tmp_path):
    """Under ZeRO-3 they saved and reloaded exactly but trained worse than under ZeRO-2 (eval average 0.373 vs
    0.844, same run; cause not found): refused until it is."""
    from test_mtl_recipe import mtl_config

    run = mtl_config(tmp_path, tiny_model, cls_files, ner_files, max_steps=10)
    args = ["--config", str(run), "--peft", "lora", "--lora_r", "4", "--adapter_per_task", "true"]
    done = launch("mtl.py", args, zero3_partitioning_everything(tmp_path))
    assert done.returncode != 0 and "error: --adapter_per_task is not supported under ZeRO-3" in done.stderr
