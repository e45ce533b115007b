"""Offline test fixtures: a tiny BERT and WordPiece tokenizer built locally, and small data files."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any HF import: tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("NLPTRANSFER_DATA", REPO.parent / "shared" / "data"))

# Classification: the topic word decides the label, so a tiny model can learn it in a few steps.
TOPICS = {
    "sport": ["goal", "match", "team", "coach"],
    "tech": ["chip", "code", "robot", "laptop"],
    "food": ["pasta", "bread", "soup", "cake"],
}
FILLERS = ["the", "a", "new", "big", "small", "good", "today", "report", "about", "story", "on", "with"]
PEOPLE, PLACES = ["anna", "bob", "chen", "dana"], ["paris", "rome", "oslo", "lima"]
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *sorted({w for ws in TOPICS.values() for w in ws}),
    *FILLERS,
    *PEOPLE,
    *PLACES,
    "visited",
    "met",
    "in",
    "and",
    ".",
    "##s",
    "##ing",
    "ab",
    "##c",
    "##d",
    "x",
    "y",
    "z",
]


def make_classification_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(TOPICS))
        words = [*rng.sample(FILLERS, 3), rng.choice(TOPICS[label])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def make_ner_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        tokens = [person.capitalize(), "visited", place.capitalize(), "today", "."]
        tags = ["B-PER", "O", "B-LOC", "O", "O"]
        if rng.random() < 0.5:
            other = rng.choice(PEOPLE)
            tokens = [other.capitalize(), "and", *tokens]
            tags = ["B-PER", "O", *tags]
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_bert_config(**overrides):
    """Hidden 32, 2 layers: big enough to learn the toy tasks in a few dozen steps, small enough to be instant."""
    from transformers import BertConfig

    settings = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    return BertConfig(**{**settings, "intermediate_size": 37, "max_position_embeddings": 64, **overrides})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 BERT and its fast WordPiece tokenizer, saved like any Hub model."""
    import torch
    from transformers import BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})
    tokenizer.save_pretrained(folder)
    config = tiny_bert_config()
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def cls_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("cls-data")
    return {
        split: str(write_jsonl(folder / f"{split}.jsonl", make_classification_rows(n, seed)))
        for split, n, seed in (("train", 384, 1), ("validation", 48, 2), ("test", 48, 3))
    }


@pytest.fixture(scope="session")
def ner_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("ner-data")
    return {
        split: str(write_jsonl(folder / f"{split}.jsonl", make_ner_rows(n, seed)))
        for split, n, seed in (("train", 320, 4), ("validation", 40, 5), ("test", 40, 6))
    }


def recipe_args(model: str, files: dict[str, str], output_dir, *extra: str) -> list[str]:
    args = ["--model_name_or_path", model, "--output_dir", str(output_dir), "--disable_tqdm", "true"]
    for split in ("train", "validation", "test"):
        if split in files:
            args += [f"--{split}_file", files[split]]
    return args + list(extra)


def run_script(path: str, args: list[str], exit_status: int = 0) -> None:
    """Run a recipe as a script (runpy), the way `python recipes/<name>.py ...` does; it must exit with
    `exit_status`. When a run expected to succeed stops on a user error (exit 2, one `error:` line), the
    error behind it is raised, so a test can match on its type and message."""
    import runpy
    import sys

    from accelerate.state import AcceleratorState

    from nlptransfer.errors import NlptransferError

    AcceleratorState._reset_state(reset_partial_state=True)  # each real run is a fresh process
    saved = sys.argv
    sys.argv = [path, *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = saved
    error = exit_info.value.__context__  # run_main exits `from None`: the error is still its context
    if exit_status == 0 and isinstance(error, NlptransferError):
        raise error
    assert exit_info.value.code == exit_status


@contextlib.contextmanager
def killed_at_batch(n: int):
    """Inside the block, the Trainer raises KeyboardInterrupt on its n-th training batch, as a killed
    run would stop; the block must end with that interrupt. The Trainer is restored afterwards."""
    from nlptransfer.training import Trainer

    original, calls = Trainer.compute_loss, {"n": 0}

    def dies_at_batch_n(self, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return original(self, batch)

    Trainer.compute_loss = dies_at_batch_n
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        Trainer.compute_loss = original


@pytest.fixture(scope="session")
def trained_runs(tiny_model, cls_files, ner_files, tmp_path_factory) -> dict[str, Path]:
    """One trained run folder of each kind that serving and export handle, on the tiny model (~20 s):
    classification, NER, a LoRA classification adapter and a two-task (classification + NER) model."""
    from nlptransfer.runs import RESULTS_FILE

    from test_adapters import LORA  # the settings the recipes' own tests train with
    from test_mtl_recipe import mtl_config
    from test_recipe import FAST

    root = tmp_path_factory.mktemp("runs")
    finetune = str(REPO / "recipes" / "finetune.py")
    runs = {"classification": root / "cls", "ner": root / "ner", "lora": root / "lora", "multitask": root / "mtl"}
    run_script(finetune, recipe_args(tiny_model, cls_files, runs["classification"], *FAST, "--num_train_epochs", "4"))
    ner = ["--task_type", "ner", "--num_train_epochs", "4"]
    run_script(finetune, recipe_args(tiny_model, ner_files, runs["ner"], *FAST, *ner))
    run_script(finetune, recipe_args(tiny_model, cls_files, runs["lora"], *LORA, "--num_train_epochs", "6"))
    config = mtl_config(root, tiny_model, cls_files, ner_files, num_train_epochs=4)  # its output_dir: root / "mtl"
    run_script(str(REPO / "recipes" / "mtl.py"), ["--config", str(config)])
    for folder in runs.values():
        assert (folder / RESULTS_FILE).is_file()
    return runs
