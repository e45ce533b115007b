"""Writes `multitask_v1/`: a tiny `MultiTaskModel` folder in format 1, and the logits it gives for two texts.

It was run against the code before issue #23 (commit 3ddac17, whose `MultiTaskModel` keeps its weights under
`heads.<task>.`, `layer_mix.<task>.` and `private.<task>.`), from the repository root of that checkout:

    PYTHONPATH=<checkout of 3ddac17> python tests/data/make_multitask_v1.py tests/data/multitask_v1

`tests/test_multitask.py` loads the folder with today's code and expects the same logits.
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizer  # noqa: E402

from nlptransfer.multitask import FORMAT_VERSION, MultiTaskModel  # noqa: E402
from nlptransfer.tasks import TaskSpec  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "anna", "bob", "paris", "rome", "visited", "met"]
VOCAB += ["in", "the", "good", "pasta", "match", "chip", "today", "and", "a", "new"]
TEXTS = ["anna visited paris today .", "the good pasta and a new chip"]
TASKS = [
    TaskSpec(name="topic", kind="classification", labels=["food", "sport", "tech"]),  # reads a layer mix
    TaskSpec(name="ner", kind="ner", labels=["O", "B-LOC", "B-PER"]),  # its own copy of the top layer
    TaskSpec(name="mood", kind="classification", labels=["neg", "pos"]),  # the shared last layer
]


def main(out: Path) -> None:
    assert FORMAT_VERSION == 1, "run this against the code before issue #23"
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = MultiTaskModel(
        BertModel(config),
        TASKS,
        loss_weighting="uncertainty",
        task_weights={"ner": 2.0},
        base_model="tiny-bert",
        tokenizer=BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)}),
        layer_mix=["topic"],
        private_layers={"ner": 1},
    )
    with (
        torch.no_grad()
    ):  # move every weight off its initial value (mixes and log-variances start flat), as training would
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.eval()
    model.save_pretrained(out)
    inputs = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = {task.name: model(**inputs, task=task.name).logits[task.name].tolist() for task in TASKS}
    expected = {"texts": TEXTS, "logits": logits, "predictions": model.predict(TEXTS)}
    (out / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
