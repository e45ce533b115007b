import subprocess
import sys

import nlptransfer


def test_public_api_is_sorted_and_importable():
    assert nlptransfer.__all__ == sorted(nlptransfer.__all__)
    assert all(hasattr(nlptransfer, name) for name in nlptransfer.__all__)


def test_import_has_no_side_effects():
    # third-party imports add their own warning filters; ours must add none and set up no logging
    code = (
        "import logging, warnings, torch, transformers, peft, accelerate, datasets, huggingface_hub, seqeval.metrics\n"
        "before = list(warnings.filters)\n"
        "import nlptransfer\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
        "assert warnings.filters == before, [f for f in warnings.filters if f not in before]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
