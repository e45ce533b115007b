"""Offline test fixtures: a tiny BERT and WordPiece tokenizer built locally, and small data files."""

import hashlib
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before any HF import: tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# scripts/install.sh compiles DeepSpeed's CPU shared-memory op (deepspeed_shm_comm) at install. A DeepSpeed
# installed without it compiles it on first use (~2 min on one core of a busy machine) into
# ~/.cache/torch_extensions, one folder for every environment: a run from another virtualenv (a CI clone, a
# second worktree) changes the compiler command and the next DeepSpeed process compiles it again. One folder
# per virtualenv: compiled once per environment, inherited by every process the tests start.
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    str(Path.home() / ".cache" / "torch_extensions" / f"env-{hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]}"),
)
# The suite runs on pytest-xdist workers, one per core (`-n logical` in pyproject.toml). Each worker is pinned to a
# core of its own, and so is every process it starts: a recipe sizes its torch threads by its affinity mask
# (`cpu_cores`), so it takes one thread. Two unpinned workers each starting a two-thread recipe on two cores made
# every OpenMP barrier wait for a descheduled sibling: 15-50x slower steps (see `one_torch_thread`).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and hasattr(os, "sched_setaffinity"):
    _cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {_cores[int(_WORKER[2:]) % len(_cores)]})

import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
from collections import Counter  # noqa: E402

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


LONG = ("slow", "integration", "distributed")


def pytest_collection_modifyitems(config, items):
    """The long tests first, files with more of them first, and with them their files, so that no worker starts
    a minutes-long file while the other runs out of work: pytest-xdist's `--dist loadfile --no-loadscope-reorder`
    hands out whole files in the order of their first test (without `--no-loadscope-reorder`, the files with the
    most tests first: the 3-minute gpu_check dry run started last, 16 minutes in). test_sharded.py and
    test_sharded_recipes.py, ~8 min each on one core, are two files so that both workers take one. (`--dist
    loadgroup`, a group per module fixture, would spread the rest too: pytest-xdist 3.8 does not apply its groups
    under pytest 9.2, whose nodes keep their id in `_id`.)"""
    long = [any(item.get_closest_marker(mark) for mark in LONG) for item in items]
    per_file = Counter(item.path for item, is_long in zip(items, long) if is_long)
    order = {id(item): (not is_long, -per_file[item.path]) for item, is_long in zip(items, long)}
    items.sort(key=lambda item: order[id(item)])


def pytest_terminal_summary(terminalreporter):
    """How long each pytest-xdist worker was busy (setup, call and teardown of its tests): the suite's wall time
    is the busier worker's, so a gap between them is time the file order could win back."""
    busy = Counter()
    for reports in terminalreporter.stats.values():
        for report in reports:
            gateway = getattr(getattr(report, "node", None), "gateway", None)
            if gateway is not None and hasattr(report, "duration"):
                busy[gateway.id] += report.duration
    if busy:
        terminalreporter.write_line("busy: " + ", ".join(f"{w} {busy[w]:.0f} s" for w in sorted(busy)))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tiny models train and predict on one torch thread in this process (and in the recipes it runs, see
    `run_script`). On two: 3-4x slower on an idle two-core machine (a 6-epoch tiny run: 4.3-6.3 s against 1.4 s;
    its matrices are too small to split, every op pays for the hand-over), 20-40x slower when any other process
    runs (a spinning OpenMP thread holds the core its sibling waits for). Processes the tests start choose their
    own threads, as a user's would."""
    import torch

    torch.set_num_threads(1)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, filled by `build(folder)` once per test session: under pytest-xdist the first worker to
    ask builds it under a file lock and the other waits for it and reuses it (pytest-xdist's recipe for session
    fixtures; each worker's temporary folder lies in the session's). The session fixtures below are deterministic
    and their tests only read them, so one copy serves both workers: trained_runs (~50 s of training on a worker
    in CI) and cls_teacher were built by each worker whose tests asked for them."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 BERT and its fast WordPiece tokenizer, saved like any Hub model."""

    def build(folder):
        import torch
        from transformers import BertModel, BertTokenizer

        tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})
        tokenizer.save_pretrained(folder)
        torch.manual_seed(0)
        BertModel(tiny_bert_config()).save_pretrained(folder)

    return str(built_once(tmp_path_factory, "tiny-bert", build))


def data_files(tmp_path_factory, name: str, make_rows, splits) -> dict[str, str]:
    """`splits` ((split, rows, seed), ...) of `make_rows` as JSON-lines files, one folder per session."""

    def build(folder):
        for split, n, seed in splits:
            write_jsonl(folder / f"{split}.jsonl", make_rows(n, seed))

    folder = built_once(tmp_path_factory, name, build)
    return {split: str(folder / f"{split}.jsonl") for split, _, _ in splits}


@pytest.fixture(scope="session")
def cls_files(tmp_path_factory) -> dict[str, str]:
    splits = (("train", 384, 1), ("validation", 48, 2), ("test", 48, 3))
    return data_files(tmp_path_factory, "cls-data", make_classification_rows, splits)


@pytest.fixture(scope="session")
def ner_files(tmp_path_factory) -> dict[str, str]:
    return data_files(
        tmp_path_factory, "ner-data", make_ner_rows, (("train", 320, 4), ("validation", 40, 5), ("test", 40, 6))
    )


def recipe_args(model: str, files: dict[str, str], output_dir, *extra: str) -> list[str]:
    args = ["--model_name_or_path", model, "--output_dir", str(output_dir), "--disable_tqdm", "true"]
    for split in ("train", "validation", "test"):
        if split in files:
            args += [f"--{split}_file", files[split]]
    return args + list(extra)


def run_script(path: str, args: list[str], exit_status: int = 0) -> None:
    """Run a recipe as a script (runpy), the way `python recipes/<name>.py ...` does; it must exit with
    `exit_status`. When a run expected to succeed stops on a user error (exit 2, one `error:` line), the
    error behind it is raised, so a test can match on its type and message. Without a `--cpu_threads` of its
    own, the run gets `--cpu_threads 1` (see `one_torch_thread`); this process's thread count is kept."""
    import runpy

    import torch
    from accelerate.state import AcceleratorState

    from nlptransfer.errors import NlptransferError

    AcceleratorState._reset_state(reset_partial_state=True)  # each real run is a fresh process
    saved, threads = sys.argv, torch.get_num_threads()
    sys.argv = [path, *args, *([] if "--cpu_threads" in args else ["--cpu_threads", "1"])]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = saved
        torch.set_num_threads(threads)
    error = exit_info.value.__context__  # run_main exits `from None`: the error is still its context
    if exit_status == 0 and isinstance(error, NlptransferError):
        raise error
    assert exit_info.value.code == exit_status


ACCELERATE_CONFIGS = REPO / "recipes" / "configs" / "accelerate"


def launch(recipe: str, args: list[str], config: str | Path = "ddp.yaml", cpu: bool | None = None):
    """`accelerate launch --config_file <config> recipes/<recipe> args` on two processes of this machine (the
    shipped configs' `num_processes`), its CompletedProcess. `cpu` (default: for ddp.yaml) sets
    ACCELERATE_USE_CPU=1, which DDP on CPU processes needs (gloo) and DeepSpeed must not see: with it, accelerate
    runs plain DDP instead, silently. (`--cpu --num_processes 2` would run ONE process.)"""
    import subprocess

    from _common import free_port

    cpu = str(config) == "ddp.yaml" if cpu is None else cpu
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config)]
    command += ["--main_process_port", str(free_port()), str(REPO / "recipes" / recipe), *args]  # xdist: no fixed port
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "DS_ACCELERATOR")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **({"ACCELERATE_USE_CPU": "1"} if cpu else {}))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def concurrently(*calls):
    """Call the zero-argument callables, as many at a time as this process has cores, and return their results in
    order. For independent fresh processes (each its own interpreter, nothing shared): two cores import torch and
    transformers for two of them at once instead of one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    from nlptransfer.encoders import cpu_cores

    with ThreadPoolExecutor(max(1, min(len(calls), cpu_cores()))) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


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

    names = {"classification": "cls", "ner": "ner", "lora": "lora", "multitask": "mtl"}

    def build(root):
        finetune, runs = str(REPO / "recipes" / "finetune.py"), {kind: root / name for kind, name in names.items()}
        epochs = ["--num_train_epochs", "4"]
        run_script(finetune, recipe_args(tiny_model, cls_files, runs["classification"], *FAST, *epochs))
        run_script(finetune, recipe_args(tiny_model, ner_files, runs["ner"], *FAST, "--task_type", "ner", *epochs))
        run_script(finetune, recipe_args(tiny_model, cls_files, runs["lora"], *LORA, "--num_train_epochs", "6"))
        config = mtl_config(root, tiny_model, cls_files, ner_files, num_train_epochs=4)  # output_dir: root / "mtl"
        run_script(str(REPO / "recipes" / "mtl.py"), ["--config", str(config)])
        for folder in runs.values():
            assert (folder / RESULTS_FILE).is_file()

    root = built_once(tmp_path_factory, "runs", build)
    return {kind: root / name for kind, name in names.items()}


@pytest.fixture(scope="session")
def cls_teacher(tiny_model, cls_files, tmp_path_factory) -> str:
    """A confident topic classifier (tests/test_distill.py's TEACHER settings), trained once per session: the
    distillation tests, test_sharded_recipes' ZeRO distillation runs and test_mtl_recipe's single-task teacher
    teach with it."""
    from test_distill import FINETUNE, TEACHER, run

    def build(folder):
        results = run(FINETUNE, recipe_args(tiny_model, cls_files, folder / "cls", *TEACHER))
        assert results["test_accuracy"] >= 0.9

    return str(built_once(tmp_path_factory, "cls-teacher", build) / "cls")
