"""--cpu_allocator: `reuse` spares the page faults of a step's large buffers and changes no result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nlptransfer import TrainArguments
from nlptransfer.allocator import ALLOCATORS, reuse_freed_memory
from nlptransfer.errors import ConfigError

from conftest import concurrently, recipe_args

REPO = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None

# 32 MiB buffers, one after the other, as a training step's word-embedding gradient comes and goes: the page
# faults of four of them, after two (the heap grows to hold them)
FAULTS = """
import resource, sys
import torch
from nlptransfer.allocator import ALLOCATORS
applied = ALLOCATORS[sys.argv[1]]()
for _ in range(2):
    torch.zeros(8 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.zeros(8 << 20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_reuse_maps_a_large_buffer_once_not_at_every_allocation():
    def faults(choice: str):
        return lambda: subprocess.run(
            [sys.executable, "-c", FAULTS, choice], capture_output=True, text=True, check=True
        )

    system, reuse = (done.stdout.split() for done in concurrently(faults("system"), faults("reuse")))
    assert system[0] == "False" and reuse[0] == "True"
    pages = (32 << 20) // os.sysconf("SC_PAGE_SIZE")
    faults = {"system": int(system[1]), "reuse": int(reuse[1]), "pages per buffer": pages}
    assert faults["system"] >= 2 * pages, faults  # mapped and faulted in afresh each time (4 buffers)
    assert faults["reuse"] <= faults["system"] / 4, faults  # reused


def test_the_choice_is_checked_and_reuse_is_the_default():
    assert TrainArguments(output_dir="x").cpu_allocator == "reuse"
    with pytest.raises(ConfigError, match="--cpu_allocator must be one of \\['reuse', 'system'\\], got 'jemalloc'"):
        TrainArguments(output_dir="x", cpu_allocator="jemalloc")
    assert set(ALLOCATORS) == {"reuse", "system"} and ALLOCATORS["reuse"] is reuse_freed_memory


def test_a_run_trains_to_the_same_weights_with_either_allocator(tiny_model, cls_files, tmp_path):
    """Fresh processes (the allocator is set once per process): bit-identical weights and scores."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(choice: str):
        args = [sys.executable, str(REPO / "recipes" / "finetune.py"), "--cpu_threads", "1", "--max_steps", "6"]
        args += recipe_args(tiny_model, cls_files, tmp_path / choice, "--cpu_allocator", choice)
        return lambda: subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=True)

    concurrently(run("system"), run("reuse"))
    system, reuse = (load_file(tmp_path / choice / "model.safetensors") for choice in ("system", "reuse"))
    assert system.keys() == reuse.keys() and all(torch.equal(system[k], reuse[k]) for k in system)
    system, reuse = (json.loads((tmp_path / choice / "all_results.json").read_text()) for choice in ("system", "reuse"))
    scores = [key for key in system if key.endswith(("_accuracy", "_loss"))]
    assert "test_accuracy" in scores and all(system[key] == reuse[key] for key in scores)
