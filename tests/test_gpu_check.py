"""benchmarks/gpu_check.py: the runner records every check (failures and time-outs too) and goes on, and its dry run
(`scripts/gpu_check.sh --dry_run`) passes on this CPU, with the GPU-only checks skipped, never passed."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

import gpu_check
from conftest import REPO


def fake(outcome):
    def run(ctx):
        if outcome == "sleep":
            ctx.run([sys.executable, "-c", "import time; time.sleep(30)"])
        if outcome == "fail":
            raise RuntimeError("boom")
        return {"summary": "fine"}

    return run


def test_runner_records_failures_time_outs_and_skips_and_goes_on(tmp_path, monkeypatch):
    checks = {
        "fails": gpu_check.Check(fake("fail"), 10),
        "too_slow": gpu_check.Check(fake("sleep"), 1),
        "gpu_only": gpu_check.Check(fake("ok"), 10, needs_gpu=True),
        "fine": gpu_check.Check(fake("ok"), 10),
        "fine_again": gpu_check.Check(fake("fail"), 10, dry_run_as="fine"),  # not run: it would fail
    }
    monkeypatch.setattr(gpu_check, "CHECKS", checks)
    mode = dataclasses.replace(gpu_check.DRY, limit_scale=1.0)  # the limits as the GPU machine has them
    ctx = gpu_check.Context(True, mode, tmp_path, tmp_path, {}, "cpu")
    saved = []
    start = time.monotonic()
    outcomes = gpu_check.run_checks(ctx, list(checks), budget_s=60, save=saved.append)
    assert time.monotonic() - start < 15  # the sleeping process was killed at its limit
    assert [o["status"] for o in outcomes.values()] == ["failed", "failed", "skipped", "passed", "skipped"]
    assert outcomes["fails"]["error"] == "RuntimeError: boom"
    assert outcomes["too_slow"]["error"].startswith("TimeoutError: over its time limit")
    assert outcomes["gpu_only"]["reason"] == "dry run: needs a GPU" and len(saved) == 5
    assert outcomes["fine_again"]["reason"] == "dry run: fine with the same tiny model"
    table = gpu_check.table(outcomes)
    assert "| gpu_only | skipped (dry run: needs a GPU) |" in table and "| fine | passed | 0 / 10 | fine |" in table
    # a dry run on a CPU checks the bookkeeping, not the time: its limits are wider; the GPU run's are as written
    assert gpu_check.DRY.limit_scale > 1 and gpu_check.REAL.limit_scale == 1


@pytest.mark.slow  # 176 s on one core of an AVX2 EPYC (CI, under xdist): five checks, each in fresh processes
def test_dry_run_passes_on_a_cpu(tmp_path):
    output = tmp_path / "gpu_check_dry.json"
    command = [str(REPO / "scripts" / "gpu_check.sh"), "--dry_run", "--output", str(output)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}  # the script must not pass it on (it would drop DeepSpeed)
    done = subprocess.run([*command, "--workdir", str(tmp_path / "runs")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert report["command"].startswith("python benchmarks/gpu_check.py --dry_run")
    checks = report["checks"]
    assert list(checks) == list(gpu_check.CHECKS)
    for name, check in checks.items():
        skip = gpu_check.CHECKS[name].needs_gpu or gpu_check.CHECKS[name].dry_run_as
        expected = "skipped" if skip else "passed"
        assert check["status"] == expected, f"{name}: {check}"
        assert check["commands"] or expected == "skipped"
    assert checks["fsdp"]["reason"] == "dry run: needs a GPU"
    assert checks["speed_mpnet"]["reason"] == "dry run: speed_minilm with the same tiny model"
    zero3 = checks["zero3"]
    assert (zero3["train_distributed_type"], zero3["train_zero_stage"], zero3["train_num_processes"]) == (
        "DEEPSPEED",
        3,
        1,
    )
    assert "--num_processes 1" in zero3["commands"][0] and "deepspeed_zero3.yaml" in zero3["commands"][0]
    assert zero3["reloaded_accuracy"] == zero3["test_accuracy"]
    assert "| fsdp | skipped (dry run: needs a GPU) |" in done.stdout
