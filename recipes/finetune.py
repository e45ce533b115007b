"""Entry point of the `finetune` recipe in a checkout (`accelerate launch recipes/finetune.py ...`); the recipe itself is
`nlptransfer.recipes.finetune`, which `nlptransfer run finetune` and `accelerate launch -m nlptransfer.recipes.finetune` run."""

from nlptransfer.errors import run_main
from nlptransfer.recipes.finetune import main

if __name__ == "__main__":
    run_main(main)
