"""The training recipes, as modules of the package: `nlptransfer run NAME` and `accelerate launch -m
nlptransfer.recipes.MODULE` run them from any directory once the package is installed; `recipes/*.py` in a
checkout are thin entry points to the same code. Each module reads top to bottom: a `main(argv)`, and
`run_main(main)` when it is run as a program.

`configs/` ships the documented configurations (package data): `--config trec_sst2_conll` finds
`configs/trec_sst2_conll.yaml` by name, `--accelerate_config deepspeed_zero2` `configs/accelerate/...`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

RECIPES: dict[str, str] = {
    "finetune": "nlptransfer.recipes.finetune",
    "mtl": "nlptransfer.recipes.mtl",
    "distill": "nlptransfer.recipes.distill",
    "domain-adapt": "nlptransfer.recipes.domain_adapt",
    "meta": "nlptransfer.recipes.meta",
}
"""`nlptransfer run` name -> the recipe's module."""


def configs_folder() -> Path:
    """Where the shipped configurations are (inside the installed package)."""
    return Path(str(files("nlptransfer.recipes") / "configs"))


def shipped_configs(kind: str = "") -> dict[str, Path]:
    """Name -> file of the shipped recipe configurations (`kind="accelerate"`: the launcher configurations)."""
    folder = configs_folder() / kind
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}
