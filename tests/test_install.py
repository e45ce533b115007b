"""`pip install` (not editable) into a fresh virtualenv, then train from an empty directory outside the
checkout with `nlptransfer run`, as a user who never cloned the repository would.

The new environment reuses this one's third-party packages (a path file lists its site-packages: torch
and friends are not downloaded again), but nlptransfer itself is built and installed from a copy of the
source tree, so a module or shipped file missing from the package fails here.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from nlptransfer.training import resolve_mixed_precision

from conftest import REPO, recipe_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with nlptransfer pip-installed from a copy of the sources; its bin folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "nlptransfer", source / "nlptransfer", ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)  # this environment's pip installs into it (`--python`): no ensurepip
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    # this environment's packages (third-party ones) after the new environment's own: nlptransfer comes from the
    # new one, torch & co from here; plain path lines, so this environment's editable install stays invisible
    Path(purelib, "_reuse_test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # the wheel is built here (this setuptools), installed there: `pip install .` without the download
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root, source],
        check=True,
    )
    (wheel,) = root.glob("nlptransfer-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel], check=True)
    return env_dir / "bin"


def run_in(folder: Path, command: list, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(
        command, cwd=folder, env={**clean, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True, timeout=600
    )


def test_installed_package_is_not_the_checkout_and_ships_its_configs(installed, tmp_path):
    code = (
        "import nlptransfer, nlptransfer.recipes as r; from nlptransfer.config import config_file;"
        "print(nlptransfer.__file__); print(sorted(r.shipped_configs())); print(sorted(r.shipped_configs('accelerate')));"
        "print(config_file('trec_sst2_conll'))"
    )
    done = run_in(tmp_path, [installed / "python", "-c", code])
    assert done.returncode == 0, done.stderr
    where, configs, launchers, found = done.stdout.splitlines()
    assert str(REPO) not in where and "site-packages" in where
    assert configs == "['meta_trec', 'trec_sst2_conll']"
    assert {"ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"} <= set(json.loads(launchers.replace("'", '"')))
    assert "site-packages" in found


def test_train_from_an_empty_directory_with_nlptransfer_run(installed, tiny_model, cls_files, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    fast = ["--learning_rate", "2e-3", "--warmup_ratio", "0.1", "--per_device_train_batch_size", "16"]
    args = recipe_args(tiny_model, cls_files, "out", *fast, "--num_train_epochs", "4")
    done = run_in(work, [installed / "nlptransfer", "run", "finetune", *args])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((work / "out" / "all_results.json").read_text())
    assert results["test_accuracy"] >= 0.8  # chance is 1/3: it learned
    predicted = run_in(work, [installed / "nlptransfer", "predict", "out", "the new pasta story today"])
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(predicted.stdout.splitlines()[0])["text"] == "the new pasta story today"


@pytest.mark.distributed
def test_run_launches_two_processes_through_accelerate(installed, tiny_model, cls_files, tmp_path):
    """`--num_processes 2` on a machine without a GPU: two gloo ranks of `accelerate launch -m`, with the precision
    `--mixed_precision auto` picks in one process."""
    work = tmp_path / "empty"
    work.mkdir()
    args = recipe_args(tiny_model, cls_files, "out", "--max_steps", "6", "--per_device_train_batch_size", "8")
    done = run_in(work, [installed / "nlptransfer", "run", "finetune", "--num_processes", "2", *args])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--module nlptransfer.recipes.finetune" in done.stdout
    results = json.loads((work / "out" / "all_results.json").read_text())
    assert results["train_num_processes"] == 2 and results["train_distributed_type"] == "MULTI_CPU"
    # `--mixed_precision auto` means what it means in one process (accelerate launch alone would say "no")
    assert results["train_mixed_precision"] == (resolve_mixed_precision("auto") or "no")


def test_a_bad_recipe_name_is_one_error_line(installed, tmp_path):
    done = run_in(tmp_path, [installed / "nlptransfer", "run", "train"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: no recipe 'train'; choose one of finetune, mtl, distill, domain-adapt, meta"
    )
