"""Entry point of the `distill` recipe in a checkout (`accelerate launch recipes/distill.py ...`); the recipe itself is
`nlptransfer.recipes.distill`, which `nlptransfer run distill` and `accelerate launch -m nlptransfer.recipes.distill` run."""

from nlptransfer.errors import run_main
from nlptransfer.recipes.distill import main

if __name__ == "__main__":
    run_main(main)
