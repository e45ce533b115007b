"""DeepSpeed on two CPU processes (gloo): the run really is ZeRO at world size 2, best-model selection
happens, and the saved folder reloads in a fresh process to the recorded test score."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, recipe_args
from test_adapters import LORA

deepspeed = pytest.importorskip("deepspeed")
pytestmark = pytest.mark.distributed
CONFIGS = REPO / "recipes" / "configs" / "accelerate"

RELOAD = """
import json, sys
from transformers import pipeline
run, test_file = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(test_file)]
predictions = pipeline("text-classification", model=run, device="cpu")([r["text"] for r in rows])
print(json.dumps(sum(p["label"] == r["label"] for p, r in zip(predictions, rows)) / len(rows)))
"""


def launch(config: str, recipe: str, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config)]
    command += ["--main_process_port", "29517", str(REPO / "recipes" / recipe), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "DS_ACCELERATOR")}
    return subprocess.run(command, capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"}, timeout=600)


# LoRA gets twice the epochs of its single-process test: two processes halve the updates per epoch
@pytest.mark.parametrize(
    "stage, adapter", [(2, []), (2, [*LORA, "--num_train_epochs", "12"])], ids=["zero2", "zero2-lora"]
)
def test_zero_finetune_on_two_cpu_processes_selects_saves_and_reloads(stage, adapter, tiny_model, cls_files, tmp_path):
    out = tmp_path / f"zero{stage}"
    args = recipe_args(tiny_model, cls_files, out, "--learning_rate", "2e-3", "--per_device_train_batch_size", "16")
    args += ["--num_train_epochs", "3", "--cpu_threads", "1", "--mixed_precision", "no", *adapter]
    args += ["--merge", "true"] if adapter else []  # the adapter folded into a plain model: what reloads below
    done = launch(f"deepspeed_zero{stage}.yaml", "finetune.py", args)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    # the engine the run really had: not plain DDP, not two "main" processes of one
    assert results["train_distributed_type"] == "DEEPSPEED" and results["train_zero_stage"] == stage
    assert results["train_num_processes"] == 2 and done.stdout.count("saved to") == 1
    # selection happened and the restored model is the one selection saw
    assert results["best_metric_name"] == "accuracy" and results["eval_accuracy"] == results["best_metric"]
    assert results["test_accuracy"] >= 0.8  # learned: chance is 1/3
    reload = [sys.executable, "-c", RELOAD, str(out / "merged" if adapter else out), cls_files["test"]]
    reloaded = subprocess.run(reload, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert reloaded.returncode == 0, reloaded.stderr[-2000:]
    assert json.loads(reloaded.stdout.strip().splitlines()[-1]) == results["test_accuracy"]


def test_zero2_run_resumed_from_its_checkpoint_ends_with_the_same_weights(tiny_model, cls_files, tmp_path):
    """Stopped right after its step-6 checkpoint (DeepSpeed engine, optimizer partitions, RNG, data position) and
    resumed, a ZeRO-2 run ends bit-identical to one that never stopped. A constant LR keeps the schedule
    independent of --max_steps, which the two halves differ in."""
    from safetensors.torch import load_file

    common = ["--learning_rate", "2e-3", "--per_device_train_batch_size", "16", "--lr_scheduler_type", "constant"]
    common += ["--warmup_ratio", "0", "--eval_strategy", "no", "--cpu_threads", "1", "--mixed_precision", "no"]
    runs = {
        "whole": ["--max_steps", "12"],
        "first half": ["--max_steps", "6", "--checkpointing_steps", "6"],
        "resumed": ["--max_steps", "12", "--resume_from_checkpoint", "latest"],
    }
    for name, extra in runs.items():
        out = tmp_path / ("whole" if name == "whole" else "stopped")
        done = launch("deepspeed_zero2.yaml", "finetune.py", recipe_args(tiny_model, cls_files, out, *common, *extra))
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    assert "resumed from" in done.stdout and "step_6" in done.stdout
    whole, resumed = (json.loads((tmp_path / run / "all_results.json").read_text()) for run in ("whole", "stopped"))
    assert resumed["train_zero_stage"] == 2 and resumed["train_num_processes"] == 2 and resumed["train_steps"] == 12
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "stopped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
