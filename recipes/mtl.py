"""Entry point of the `mtl` recipe in a checkout (`accelerate launch recipes/mtl.py ...`); the recipe itself is
`nlptransfer.recipes.mtl`, which `nlptransfer run mtl` and `accelerate launch -m nlptransfer.recipes.mtl` run."""

from nlptransfer.errors import run_main
from nlptransfer.recipes.mtl import main

if __name__ == "__main__":
    run_main(main)
