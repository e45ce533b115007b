"""Sharded engines on two CPU processes (gloo): DeepSpeed ZeRO-3 runs of the fine-tuning recipe (full, LoRA)
really are ZeRO-3 at world size 2, best-model selection happens, and the saved folder, reloaded by the test process
(which never held the model), scores the recorded test score; a ZeRO-2 run follows DDP's LR schedule, saves DDP's
weights and resumes exactly; an engine that would not really run (FSDP on CPU, use_cpu with DeepSpeed) stops the
run. ZeRO-2 keeps whole weights on every process and saves as DDP does: its full and LoRA twins of the ZeRO-3 runs
(96 s of a worker in CI) were dropped for the resume test's save and test_sharded_recipes' per-task adapters. The
multi-task and distillation recipes under ZeRO: test_sharded_recipes.py (a file of its own, so that the two
pytest-xdist workers share these minutes-long tests). The engines' behaviour behind each test:
docs/guides/distributed.md."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ACCELERATE_CONFIGS, launch, recipe_args
from test_adapters import LORA

deepspeed = pytest.importorskip("deepspeed")
pytestmark = pytest.mark.distributed


def reloaded_accuracy(run: Path, test_file: str) -> float:
    """The saved folder through transformers' `pipeline`, here: this process never held the model (two
    `accelerate launch` processes trained and saved it), so it sees only what was written."""
    from transformers import pipeline

    rows = [json.loads(line) for line in open(test_file)]
    predictions = pipeline("text-classification", model=str(run), device="cpu")([r["text"] for r in rows])
    return sum(p["label"] == r["label"] for p, r in zip(predictions, rows)) / len(rows)


def reloaded_topic_accuracy(run: Path, test_file: str) -> float:
    """The saved multi-task folder through `MultiTaskModel.from_pretrained`, here (see `reloaded_accuracy`)."""
    from nlptransfer import MultiTaskModel

    model = MultiTaskModel.from_pretrained(run)
    rows = [json.loads(line) for line in open(test_file)]
    predictions = model.predict([r["text"] for r in rows], tasks=["topic"])
    return sum(p["topic"]["label"] == r["label"] for p, r in zip(predictions, rows)) / len(rows)


def zero3_partitioning_everything(tmp_path) -> Path:
    """The shipped ZeRO-3 set-up with every weight partitioned: DeepSpeed keeps weights under 100k values whole on
    every process (`stage3_param_persistence_threshold`), which would be all of the tiny test model's."""
    ds_config = {
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        **dict.fromkeys(["train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"], "auto"),
    }
    (tmp_path / "ds_zero3.json").write_text(json.dumps(ds_config))
    config = yaml.safe_load((ACCELERATE_CONFIGS / "deepspeed_zero3.yaml").read_text())
    config["deepspeed_config"] = {"deepspeed_config_file": str(tmp_path / "ds_zero3.json"), "zero3_init_flag": False}
    del config["mixed_precision"]  # the DeepSpeed file decides (accelerate refuses both)
    (tmp_path / "zero3.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "zero3.yaml"


def check_engine(results: dict, stdout: str, stage: int) -> None:
    """The engine the run really had (not plain DDP, not two "main" processes of one), and selection happened
    with the restored model being the one selection saw."""
    assert results["train_distributed_type"] == "DEEPSPEED" and results["train_zero_stage"] == stage
    assert results["train_num_processes"] == 2 and stdout.count("saved to") == 1
    assert results["best_step"] and "loaded the best model" in stdout


# 48 updates of 2 x 16 rows: test accuracy 1.0 under ZeRO-2 and ZeRO-3, selected at step 36 (6 epochs of 2 x 8 rows
# took 23 s more per run); the LoRA runs set their own batch, LR and epochs (12: at 8 they reach 0.69)
EPOCHS = ["--per_device_train_batch_size", "16", "--num_train_epochs", "4"]


@pytest.mark.parametrize("adapter", [[], [*LORA, "--num_train_epochs", "12"]], ids=["full", "lora"])
def test_zero3_finetune_on_two_cpu_processes_selects_saves_and_reloads(adapter, tiny_model, cls_files, tmp_path):
    config = zero3_partitioning_everything(tmp_path)
    out = tmp_path / "zero3"
    args = recipe_args(tiny_model, cls_files, out, "--learning_rate", "4e-3", *EPOCHS, "--warmup_ratio", "0.1")
    args += ["--cpu_threads", "1", "--mixed_precision", "no", *adapter]
    args += ["--merge", "true"] if adapter else []  # the adapter folded into a plain model: what reloads below
    done = launch("finetune.py", args, config)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    check_engine(results, done.stdout, 3)
    assert results["best_metric_name"] == "accuracy" and results["eval_accuracy"] == results["best_metric"]
    assert results["test_accuracy"] >= 0.8  # learned: chance is 1/3
    folder = out / "merged" if adapter else out
    assert reloaded_accuracy(folder, cls_files["test"]) == results["test_accuracy"]


def test_zero2_follows_ddp_lr_schedule_and_resumes_from_its_checkpoint_exactly(tiny_model, cls_files, tmp_path):
    """One 12-step run (linear warm-up and decay) under DDP and under ZeRO-2, and the ZeRO-2 run again from its
    step-6 checkpoint (DeepSpeed engine, optimizer partitions, scheduler, RNG, data position):
    - DeepSpeed steps the LR scheduler once per update where accelerate steps it once per process; the ZeRO-2
      run ends with DDP's weights, up to float rounding;
    - the resumed run ends bit-identical to the run it was checkpointed from."""
    from safetensors.torch import load_file

    args = ["--learning_rate", "2e-3", "--per_device_train_batch_size", "16", "--max_steps", "12"]
    args += ["--warmup_ratio", "0.25", "--eval_strategy", "no", "--cpu_threads", "1", "--mixed_precision", "no"]
    runs = {
        "ddp": ("ddp.yaml", []),
        "zero2": ("deepspeed_zero2.yaml", ["--checkpointing_steps", "6"]),
        "resumed": ("deepspeed_zero2.yaml", ["--resume_from_checkpoint", str(tmp_path / "zero2/checkpoints/step_6")]),
    }
    for name, (config, extra) in runs.items():
        run_args = recipe_args(tiny_model, cls_files, tmp_path / name, *args, *extra)
        done = launch("finetune.py", run_args, config)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    assert "resumed from" in done.stdout and "step_6" in done.stdout
    resumed = json.loads((tmp_path / "resumed" / "all_results.json").read_text())
    assert resumed["train_zero_stage"] == 2 and resumed["train_num_processes"] == 2 and resumed["train_steps"] == 12
    ddp, zero2, again = (load_file(tmp_path / name / "model.safetensors") for name in runs)
    assert max((ddp[k] - zero2[k]).abs().max().item() for k in ddp) < 1e-4
    assert zero2.keys() == again.keys() and all(torch.equal(zero2[k], again[k]) for k in zero2)


@pytest.mark.parametrize(
    "config, engine, cpu",
    [("fsdp.yaml", "FSDP", False), ("fsdp.yaml", "FSDP", True), ("deepspeed_zero2.yaml", "DEEPSPEED", True)],
    ids=["fsdp-gloo", "fsdp-use-cpu", "deepspeed-use-cpu"],
)
def test_engine_that_would_not_run_is_refused_not_run_unsharded(config, engine, cpu, tiny_model, cls_files, tmp_path):
    """accelerate 1.15 applies FSDP only on accelerators: on CPU processes it ran as distributed type NO (two
    ranks, no gradient sync) or, with ACCELERATE_USE_CPU=1, as plain DDP, as DeepSpeed does with that variable.
    The run stops with one line instead."""
    done = launch("finetune.py", recipe_args(tiny_model, cls_files, tmp_path / "run"), config, cpu=cpu)
    assert done.returncode != 0
    assert f"error: accelerate was launched for {engine} but the processes run as" in done.stderr
    assert ("ACCELERATE_USE_CPU=1 makes accelerate drop it" in done.stderr) == cpu
    assert not (tmp_path / "run" / "all_results.json").exists()
