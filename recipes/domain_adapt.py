"""Entry point of the `domain-adapt` recipe in a checkout (`accelerate launch recipes/domain_adapt.py ...`); the recipe itself is
`nlptransfer.recipes.domain_adapt`, which `nlptransfer run domain-adapt` and `accelerate launch -m nlptransfer.recipes.domain_adapt` run."""

from nlptransfer.errors import run_main
from nlptransfer.recipes.domain_adapt import main

if __name__ == "__main__":
    run_main(main)
