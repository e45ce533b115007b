"""recipes/mtl.py as two "machines" on loopback, one process each: accelerate's multi-node path.

Each machine is its own `accelerate launch --num_machines 2 --machine_rank 0|1`, as a user starts one per
host. torchrun's static rendezvous (accelerate's default `--rdzv_backend static`, at the endpoint
`--main_process_ip:--main_process_port`) joins them, so neither `--same_network` nor `--rdzv_backend` is
needed. Each process is then rank 0 of its machine (`is_local_main_process`, so `accelerator.print`
prints on both machines) while only machine 0's is the global main process. Anything that guards a
write with the machine-local test instead of the global one shows up here and not in the
single-machine two-process tests (tests/test_distributed.py).

Output folder: the main test gives both machines the SAME `--output_dir`, as multi-node jobs usually run
(a shared filesystem: NFS, Lustre, a mounted bucket). In that folder the run must be written once, by the
global main process only: one "saved to", and the saved folder is the trained model. Both folders are
legitimate setups, though, and a folder shared by both machines cannot show a file written twice, so the
second test gives each machine its own folder: machine 0's holds the run, machine 1's stays empty.

Both select the best model on validation: the main process decides whether a best copy exists and sends
its weights to the other machine, which need not see the file (`Trainer.load_best`).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _common import free_port
from conftest import REPO

pytestmark = pytest.mark.distributed

TIMEOUT_S = 240  # both machines together; a run takes 15-30 s on two cores
EPOCHS = {"num_train_epochs": 8, "per_device_train_batch_size": 8}  # as tests/test_distributed.py


def launch_machine(rank: int, port: int, config: Path, logs: Path) -> tuple[subprocess.Popen, Path, Path]:
    """`accelerate launch` of one machine (one process) in its own process group; output into files (a
    pipe nobody reads while we wait on the other machine could fill up and stall it)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        # the shipped two-machine config (MULTI_GPU: with ACCELERATE_USE_CPU=1, gloo ranks; `--cpu --num_processes 2`
        # would silently run ONE process), with this machine's rank and loopback for the address
        "--config_file",
        str(REPO / "recipes" / "configs" / "accelerate" / "two_nodes_ddp.yaml"),
        "--num_processes",
        "2",  # in all, over the machines: one each
        "--machine_rank",
        str(rank),
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO / "recipes" / "mtl.py"),
        "--config",
        str(config),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out, err = logs / f"machine{rank}.out", logs / f"machine{rank}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True)
    return process, out, err


def run_two_machines(configs: list[Path], logs: Path) -> list[tuple[str, str]]:
    """Start machine 0 and 1 at once (with `configs[rank]`) and wait for both; on timeout, or as soon as
    one fails, kill every process of both. Both must exit 0. Returns each machine's (stdout, stderr)."""
    port = free_port()
    machines = [launch_machine(rank, port, config, logs) for rank, config in enumerate(configs)]
    processes = [process for process, _, _ in machines]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(process.poll() is None for process in processes):
            if any(process.poll() for process in processes):  # one failed: the other would wait for it forever
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the two machines did not finish in {TIMEOUT_S}s:\n{tails(machines)}")
            time.sleep(0.5)
    finally:
        for process in processes:
            kill_tree(process)
    for rank, process in enumerate(processes):
        assert process.returncode == 0, f"machine {rank} exited {process.returncode}:\n{tails(machines)}"
    return [(out.read_text(), err.read_text()) for _, out, err in machines]


def kill_tree(process: subprocess.Popen) -> None:
    """Kill a launcher that is still running and everything under it. torchrun starts each worker in a session
    of its own, so killing the launcher's process group would leave the workers running."""
    import psutil  # a dependency of accelerate

    if process.poll() is None:
        try:
            workers = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            workers = []
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tails(machines) -> str:
    return "\n".join(f"--- machine {rank}:\n{err.read_text()[-2000:]}" for rank, (_, _, err) in enumerate(machines))


def check_run(results: dict, stdouts: list[str], out: Path) -> None:
    """One DDP run over both machines, reported and saved once, by machine 0."""
    assert results["train_num_processes"] == 2
    assert results["train_distributed_type"] == "MULTI_CPU"
    assert results["parameters_in_sync"] is True  # DDP across the machines kept both ranks identical
    # each machine's process is its machine's local main: accelerator.print prints on both...
    assert all("trainable parameters:" in stdout for stdout in stdouts), stdouts
    # ...but only the global main process (machine 0) reports and saves
    assert sum(stdout.count("saved to") for stdout in stdouts) == 1, stdouts
    assert f"saved to {out}" in stdouts[0] and "test_topic_accuracy:" not in stdouts[1]
    # every labelled row scored exactly once across the machines
    assert results["test_topic_samples"] == 48 and results["test_people_samples"] == 40


def test_two_machines_sharing_a_folder_train_one_multitask_model(tiny_model, cls_files, ner_files, tmp_path):
    from test_mtl_recipe import mtl_config

    config = mtl_config(tmp_path, tiny_model, cls_files, ner_files, **EPOCHS)
    out = tmp_path / "mtl"  # one folder for both machines (see the module docstring)
    stdouts = [stdout for stdout, _ in run_two_machines([config, config], tmp_path)]
    results = json.loads((out / "all_results.json").read_text())
    check_run(results, stdouts, out)
    assert results["best_step"]  # selected on validation: both machines read machine 0's best weights
    assert results["test_topic_accuracy"] >= 0.8 and results["test_people_f1"] >= 0.8  # chance: 1/3 and 0

    # the folder is the trained model: reloaded here (this process never held it: the machines' processes trained
    # and saved it), it reproduces the recorded test accuracy
    from nlptransfer import MultiTaskModel

    texts = [json.loads(line)["text"] for line in Path(cls_files["test"]).read_text().splitlines()]
    predicted = [row["topic"]["label"] for row in MultiTaskModel.from_pretrained(out).predict(texts, tasks=["topic"])]
    gold = [json.loads(line)["label"] for line in Path(cls_files["test"]).read_text().splitlines()]
    assert sum(p == g for p, g in zip(predicted, gold)) / len(gold) == results["test_topic_accuracy"]


def test_machines_without_a_shared_folder_save_on_machine_0_only(tiny_model, cls_files, ner_files, tmp_path):
    from test_mtl_recipe import mtl_config

    configs = []
    for rank in (0, 1):  # each machine its own disk
        (tmp_path / f"machine{rank}").mkdir()
        configs.append(mtl_config(tmp_path / f"machine{rank}", tiny_model, cls_files, ner_files, **EPOCHS))
    assert yaml.safe_load(configs[1].read_text())["output_dir"] == str(tmp_path / "machine1" / "mtl")
    stdouts = [stdout for stdout, _ in run_two_machines(configs, tmp_path)]
    out = tmp_path / "machine0" / "mtl"
    results = json.loads((out / "all_results.json").read_text())
    check_run(results, stdouts, out)
    assert results["best_step"]  # selected: machine 1 got the best weights from machine 0, not from its disk
    assert results["test_topic_accuracy"] >= 0.8 and results["test_people_f1"] >= 0.8
    assert (out / "model.safetensors").is_file() and (out / "nlptransfer_multitask.json").is_file()
    written_by_machine_1 = sorted((tmp_path / "machine1").rglob("*"))
    assert written_by_machine_1 == [configs[1]], written_by_machine_1  # only the config this test put there
