"""`nlptransfer run RECIPE ...`: start a recipe of the installed package from any directory.

One process and no launcher configuration: the recipe runs in this process, exactly as
`python -m nlptransfer.recipes.NAME ...` would. Anything else goes through `accelerate launch --module`,
so each process runs the same module: `--accelerate_config` (a file or a shipped name: ddp,
deepspeed_zero2, deepspeed_zero3, fsdp, two_nodes_ddp) and `--num_processes N`. Several processes on a
machine without CUDA become gloo CPU ranks (`--multi_gpu` with ACCELERATE_USE_CPU=1): accelerate's own
`--cpu --num_processes N` silently runs one. Without a launcher configuration, `--mixed_precision auto` keeps
its meaning there too (bf16 where the hardware is fast at it): `accelerate launch` alone would pass "no".
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

from nlptransfer.errors import ConfigError, run_main
from nlptransfer.recipes import RECIPES

LAUNCHER = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
LAUNCHER.add_argument("--accelerate_config", "--accelerate-config", default=None)
LAUNCHER.add_argument("--num_processes", "--num-processes", type=int, default=None)


def split_launcher_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the launcher's own flags, the recipe's flags), in any order on the command line."""
    try:
        return LAUNCHER.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ConfigError(f"nlptransfer run: {err}") from None


def launch_command(
    recipe: str, launcher: argparse.Namespace, recipe_args: list[str], cuda: bool
) -> tuple[list[str], dict[str, str]]:
    """(the `accelerate launch` command line, extra environment) for a multi-process or configured run."""
    from nlptransfer.config import config_file
    from nlptransfer.training import resolve_mixed_precision

    command, env = [sys.executable, "-m", "accelerate.commands.launch"], {}
    if launcher.accelerate_config:
        path = config_file(launcher.accelerate_config, "--accelerate_config", kind="accelerate")
        command += ["--config_file", str(Path(path).resolve())]
    if launcher.num_processes is not None:
        if launcher.num_processes < 1:
            raise ConfigError(f"--num_processes must be at least 1, got {launcher.num_processes}")
        command += ["--num_processes", str(launcher.num_processes)]
        if launcher.num_processes > 1 and not launcher.accelerate_config:
            command += ["--multi_gpu"]
            if not cuda:  # gloo ranks on the CPU
                env["ACCELERATE_USE_CPU"] = "1"
    if not launcher.accelerate_config:  # `accelerate launch` would say "no" for the recipe's --mixed_precision auto
        command += ["--mixed_precision", resolve_mixed_precision("auto") or "no"]
    return [*command, "--module", RECIPES[recipe], *recipe_args], env


def run_recipe(recipe: str, argv: list[str]) -> int:
    """Run `recipe` with `argv` (launcher flags and the recipe's); the exit status of the run."""
    if recipe not in RECIPES:
        raise ConfigError(f"no recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    launcher, recipe_args = split_launcher_args(argv)
    if launcher.accelerate_config is None and launcher.num_processes in (None, 1):
        module = importlib.import_module(RECIPES[recipe])
        try:
            run_main(module.main, recipe_args)
        except SystemExit as done:
            return done.code if isinstance(done.code, int) else 0
        return 0
    import torch

    command, env = launch_command(recipe, launcher, recipe_args, cuda=torch.cuda.is_available())
    print("launching:", " ".join(command[1:]), flush=True)
    return subprocess.run(command, env={**os.environ, **env}).returncode
