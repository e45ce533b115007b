"""Entry point of the `meta` recipe in a checkout (`accelerate launch recipes/meta.py ...`); the recipe itself is
`nlptransfer.recipes.meta`, which `nlptransfer run meta` and `accelerate launch -m nlptransfer.recipes.meta` run."""

from nlptransfer.errors import run_main
from nlptransfer.recipes.meta import main

if __name__ == "__main__":
    run_main(main)
