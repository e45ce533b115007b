"""GPU check (issue #24): the GPU paths of nlptransfer in one command, under 8 minutes on one H100.

    scripts/gpu_check.sh                  # on one GPU: writes benchmarks/results/gpu_check.json
    scripts/gpu_check.sh --dry_run        # on a CPU: tiny model, tiny data, fp32; writes gpu_check_dry.json
    scripts/gpu_check.sh --checks zero3 speed_minilm --workdir runs/gpu_check   # some checks, runs kept

Checks, in order, each in fresh processes with its own time limit (and all within --budget_s):
- finetune_bf16: recipes/finetune.py on TREC in bf16, best model selected on a held-out 10% of train;
- fsdp, zero3: the same through `accelerate launch --config_file <fsdp|deepspeed_zero3>.yaml --num_processes 1`
  (fp32, so that the reload can be exact): the run's engine is what was asked, and the saved folder reloads in a
  fresh process (transformers `pipeline`) to exactly the recorded test accuracy;
- lora_merge: LoRA with --merge true, the same reload check on `merged/`;
- mtl: recipes/mtl.py with the shipped recipes/configs/trec_sst2_conll.yaml, a fixed number of steps;
- speed_minilm, speed_mpnet: training tokens/s (non-pad tokens / train time, a fixed number of steps) of
  nlptransfer against a plain transformers Trainer at its best (benchmarks/trainer_baseline.py with bf16, dynamic
  padding and length grouping; SDPA attention where the model has it and fused AdamW are Trainer defaults).
A failed check is recorded with its error and the next one runs. The data folder is $NLPTRANSFER_DATA
(default ../shared/data). --dry_run exercises the bookkeeping on a CPU: every check runs with a 2-layer hidden-32
BERT built on the spot and slices of TREC, in fp32; FSDP (which accelerate does not apply to CPU processes) is
recorded as skipped, ZeRO-3 runs on the CPU (DS_ACCELERATOR=cpu), and speed_mpnet, which would repeat speed_minilm
with the same tiny model, is skipped.
"""

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import yaml

from nlptransfer.config import expand_variables

from _common import DATA, ROOT, benchmark_parser, free_port, markdown_table, results_path, write_results

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
ACCELERATE_CONFIGS = ROOT / "recipes" / "configs" / "accelerate"
MTL_CONFIG = ROOT / "recipes" / "configs" / "trec_sst2_conll.yaml"
RELOAD = """# tests/test_sharded.py's RELOAD: a saved run through transformers' pipeline, its test accuracy
import json, sys
from transformers import pipeline
run, test_file, device = sys.argv[1:4]
rows = [json.loads(line) for line in open(test_file)]
predictions = pipeline("text-classification", model=run, device=device)([r["text"] for r in rows])
print(json.dumps(sum(p["label"] == r["label"] for p, r in zip(predictions, rows)) / len(rows)))
"""


@dataclasses.dataclass(frozen=True)
class Mode:
    """How big each check is: the real GPU check, or the dry run on a CPU."""

    precision: str  # what finetune_bf16, mtl and the speed checks train in
    train_rows: int | None  # TREC train rows (None: all 5,452)
    test_rows: int | None  # TREC test rows (None: all 500)
    epochs: int  # finetune / sharded checks
    lora_epochs: int
    mtl_steps: int
    mtl_rows: int | None  # per task and split of the multi-task run (None: the config's)
    speed_steps: int  # optimizer steps of each speed run (batch 32, two passes over steps/2 batches of TREC)
    min_accuracy: float  # TREC test accuracy the finetune and sharded runs must reach
    min_lora_accuracy: float
    min_mtl: dict  # test score per multi-task task
    extra: tuple = ()  # flags of every finetune / sharded / LoRA / mtl run (dry: what the tiny model learns with)
    limit_scale: float = 1.0  # times each check's limit and the budget: they are sized for the GPU machine


REAL = Mode(
    precision="bf16",
    train_rows=None,
    test_rows=None,
    epochs=2,
    lora_epochs=4,
    mtl_steps=600,
    mtl_rows=None,
    speed_steps=300,
    min_accuracy=0.8,
    min_lora_accuracy=0.8,
    min_mtl={"trec": 0.5, "sst2": 0.6, "conll2003": 0.3},
)
# The tiny model (random weights) reaches about 0.45 on the 100 test rows (majority class: 0.29) when fully trained;
# LoRA on its frozen random encoder does not learn TREC (0.1-0.3), so there only the bookkeeping is checked.
DRY = Mode(
    precision="no",
    train_rows=600,
    test_rows=100,
    epochs=6,
    lora_epochs=6,
    mtl_steps=30,
    mtl_rows=200,
    speed_steps=20,
    min_accuracy=0.35,
    min_lora_accuracy=0.0,
    min_mtl={},
    extra=("--learning_rate", "3e-3", "--per_device_train_batch_size", "16"),
    # a CPU is not the machine the limits are sized for, and it may be shared (a test suite running beside it: the
    # lora_merge check once ran past its 90 s there); the dry run checks the bookkeeping, not the time
    limit_scale=5.0,
)


@dataclasses.dataclass
class Context:
    """What a check gets: the mode, where to work, which model, and a runner that enforces its time limit."""

    dry_run: bool
    mode: Mode
    workdir: Path
    data: Path  # holds trec/train.jsonl and trec/test.jsonl, sliced in a dry run
    models: dict  # MINILM / MPNET -> what the runs load (the tiny model in a dry run)
    device: str
    deadline: float = 0.0
    commands: list = dataclasses.field(default_factory=list)

    def run(self, command: list) -> str:
        """Run `command` in its own process group; kill the whole group once the check's time is up."""
        self.commands.append(shlex.join(str(part) for part in command))
        timeout = self.deadline - time.monotonic()
        if timeout <= 0:
            raise TimeoutError("no time left for this check")
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        env = base_env(self.dry_run)
        with subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, **pipes) as process:
            try:
                out, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # accelerate launch's children too
                process.communicate()
                raise TimeoutError(f"over its time limit: {self.commands[-1]}") from None
        if process.returncode:
            raise RuntimeError(f"exit {process.returncode}: {self.commands[-1]}\n{err[-2500:]}")
        return out


class Skipped(Exception):
    """A check that cannot run here; recorded as skipped, never as passed."""


def base_env(dry_run: bool) -> dict:
    # ACCELERATE_USE_CPU would make accelerate drop DeepSpeed/FSDP for plain DDP: never pass it on
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env |= {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if dry_run:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's ops on the CPU (start_run picks the gloo backend)
    return env


def launch(ctx: Context, recipe: str, args: list[str], config: str | None = None) -> dict:
    """`accelerate launch --num_processes 1 [--config_file ...] recipes/<recipe> args`; its all_results.json."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    if config:
        command += ["--config_file", ACCELERATE_CONFIGS / config, "--main_process_port", str(free_port())]
    else:
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    output_dir = Path(args[args.index("--output_dir") + 1])
    ctx.run([*command, ROOT / "recipes" / recipe, *args, "--disable_tqdm", "true"])
    return json.loads((output_dir / "all_results.json").read_text())


def trec_args(ctx: Context, name: str, *extra: str) -> list[str]:
    """finetune.py on TREC with a seeded 10% of train held out for best-model selection; the mode's flags last."""
    args = ["--model_name_or_path", ctx.models[MINILM], "--output_dir", str(ctx.workdir / name)]
    args += ["--train_file", str(ctx.data / "trec/train.jsonl"), "--test_file", str(ctx.data / "trec/test.jsonl")]
    args += ["--validation_split_percentage", "10", "--num_train_epochs", str(ctx.mode.epochs)]
    return [*args, *extra, *ctx.mode.extra]


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_learned(results: dict, floor: float) -> None:
    """Selection happened on validation, and the model learned TREC (to `floor`)."""
    expect(results.get("best_metric_name") == "accuracy", f"no best-model selection: {results.get('best_metric_name')}")
    expect(results["eval_accuracy"] == results["best_metric"], "the restored model is not the selected one")
    expect(results["test_accuracy"] >= floor, f"test accuracy {results['test_accuracy']} < {floor}: not learned")


def check_reload(ctx: Context, folder: Path, results: dict) -> float:
    """The saved folder, loaded by a fresh process through `pipeline`, scores exactly the recorded test accuracy."""
    script = ctx.workdir / "reload.py"
    script.write_text(RELOAD)
    out = ctx.run([sys.executable, script, folder, ctx.data / "trec/test.jsonl", ctx.device])
    reloaded = json.loads(out.strip().splitlines()[-1])
    expect(reloaded == results["test_accuracy"], f"reloaded {reloaded} != recorded {results['test_accuracy']}")
    return reloaded


def engine(results: dict) -> str:
    return f"{results['train_distributed_type']}/zero{results['train_zero_stage']}/x{results['train_num_processes']}"


# ---- the checks: each returns what it measured, with a one-line `summary`, or raises ---------------------------
def finetune_bf16(ctx: Context) -> dict:
    results = launch(ctx, "finetune.py", trec_args(ctx, "finetune", "--mixed_precision", ctx.mode.precision))
    expect(results["train_mixed_precision"] == ctx.mode.precision, f"ran in {results['train_mixed_precision']}")
    check_learned(results, ctx.mode.min_accuracy)
    summary = f"test acc {results['test_accuracy']:.4f} ({results['train_mixed_precision']})"
    summary += f", train {results['train_runtime']:.0f} s"
    return {"test_accuracy": results["test_accuracy"], "train_runtime_s": results["train_runtime"], "summary": summary}


def sharded(config: str, distributed_type: str, zero_stage: int | None, ctx: Context) -> dict:
    """finetune.py at world size 1 under an FSDP / DeepSpeed accelerate config, saved and reloaded exactly."""
    name = Path(config).stem
    results = launch(ctx, "finetune.py", trec_args(ctx, name, "--mixed_precision", "no"), config=config)
    asked = {"train_distributed_type": distributed_type, "train_zero_stage": zero_stage, "train_num_processes": 1}
    got = {key: results.get(key) for key in asked}
    expect(got == asked, f"asked {asked}, the run had {got}")
    check_learned(results, ctx.mode.min_accuracy)
    reloaded = check_reload(ctx, ctx.workdir / name, results)
    summary = f"{engine(results)}, test acc {results['test_accuracy']:.4f} = reloaded"
    return {**got, "test_accuracy": results["test_accuracy"], "reloaded_accuracy": reloaded, "summary": summary}


def lora_merge(ctx: Context) -> dict:
    lora = ["--peft", "lora", "--learning_rate", "2e-3", "--num_train_epochs", str(ctx.mode.lora_epochs)]
    args = trec_args(ctx, "lora", "--mixed_precision", "no", *lora, "--merge", "true")
    results = launch(ctx, "finetune.py", args)
    check_learned(results, ctx.mode.min_lora_accuracy)
    check_reload(ctx, ctx.workdir / "lora" / "merged", results)
    trainable = results["trainable_parameters"] / results["total_parameters"]
    summary = f"{100 * trainable:.2f}% trainable, test acc {results['test_accuracy']:.4f} = merged/ reloaded"
    return {"test_accuracy": results["test_accuracy"], "trainable_fraction": trainable, "summary": summary}


def mtl_config(ctx: Context) -> Path:
    """The shipped multi-task config with its data paths under $NLPTRANSFER_DATA (and, dry, small slices)."""
    os.environ["NLPTRANSFER_DATA"] = str(DATA)  # where the shipped config reads its data (${NLPTRANSFER_DATA:-...})
    config = expand_variables(yaml.safe_load(MTL_CONFIG.read_text()), str(MTL_CONFIG))
    for task in config["tasks"]:
        if ctx.mode.mtl_rows:
            task |= {f"max_{s}_samples": ctx.mode.mtl_rows for s in ("train", "eval", "test")}
    path = ctx.workdir / "mtl.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mtl(ctx: Context) -> dict:
    args = ["--config", str(mtl_config(ctx)), "--model_name_or_path", ctx.models[MINILM]]
    args += ["--output_dir", str(ctx.workdir / "mtl"), "--max_steps", str(ctx.mode.mtl_steps)]
    results = launch(ctx, "mtl.py", [*args, "--mixed_precision", ctx.mode.precision, *ctx.mode.extra])
    scores = {}
    for task in yaml.safe_load(MTL_CONFIG.read_text())["tasks"]:
        metric = "f1" if task["task_type"] == "ner" else "accuracy"
        scores[task["name"]] = results.get(f"test_{task['name']}_{metric}")
        expect(scores[task["name"]] is not None, f"no test_{task['name']}_{metric} in all_results.json")
        floor = ctx.mode.min_mtl.get(task["name"])
        expect(floor is None or scores[task["name"]] >= floor, f"{task['name']}: {scores[task['name']]} < {floor}")
    summary = ", ".join(f"{name} {score:.3f}" for name, score in scores.items()) + f" ({results['train_steps']} steps)"
    return {"test_scores": scores, "train_steps": results["train_steps"], "summary": summary}


def real_tokens(model: str, train_file: Path, rows: int) -> int:
    """Non-pad tokens of the first `rows` training texts (truncated at 128, as both systems do)."""
    from transformers import AutoTokenizer

    from nlptransfer.resolve import resolve_model

    texts = [json.loads(line)["text"] for line in train_file.read_text().splitlines()[:rows]]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"])


def attention_of(model: str) -> str:
    """The attention kernel transformers picks for `model` by default (what both systems get)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from nlptransfer.resolve import resolve_model

    with torch.device("meta"):
        return AutoModel.from_config(AutoConfig.from_pretrained(resolve_model(model))).config._attn_implementation


def speed(model: str, ctx: Context) -> dict:
    """Training tokens/s, nlptransfer vs the Trainer at its best: the same first rows of TREC, two epochs of
    steps/2 batches of 32, bf16 (fp32 dry); each process's own train time (model load and data excluded)."""
    path, batches = ctx.models[model], ctx.mode.speed_steps // 2
    rows, bf16 = 32 * batches, ctx.mode.precision == "bf16"
    tokens = 2 * real_tokens(path, ctx.data / "trec/train.jsonl", rows)
    folder = ctx.workdir / f"speed_{Path(model).name}"
    args = ["--model_name_or_path", path, "--output_dir", str(folder / "nlptransfer"), "--eval_strategy", "no"]
    args += ["--train_file", str(ctx.data / "trec/train.jsonl"), "--test_file", str(ctx.data / "trec/test.jsonl")]
    args += ["--max_train_samples", str(rows), "--max_test_samples", "64", "--num_train_epochs", "2"]
    args += ["--per_device_train_batch_size", "32", "--max_seq_length", "128", "--mixed_precision", ctx.mode.precision]
    ours = launch(ctx, "finetune.py", args)
    expect(ours["train_steps"] == 2 * batches, f"nlptransfer ran {ours['train_steps']} steps, not {2 * batches}")
    baseline = [sys.executable, ROOT / "benchmarks" / "trainer_baseline.py", "--task", "trec"]
    baseline += ["--model_name_or_path", path, "--data_dir", ctx.data, "--max_train_samples", str(rows)]
    baseline += ["--max_eval_samples", "64", "--epochs", "2", "--batch_size", "32", "--max_seq_length", "128"]
    baseline += ["--padding", "dynamic", "--group_by_length", *(["--bf16"] if bf16 else [])]
    ctx.run([*baseline, "--output_json", folder / "trainer.json"])
    trainer = json.loads((folder / "trainer.json").read_text())
    expect(2 * trainer["real_train_tokens_per_epoch"] == tokens, "the Trainer counts other tokens than nlptransfer")
    from transformers import TrainingArguments

    result = {
        "tokens": tokens,
        "steps": 2 * batches,
        "attention": attention_of(path),
        "trainer_optim": str(TrainingArguments.__dataclass_fields__["optim"].default),
        "nlptransfer_train_s": ours["train_runtime"],
        "trainer_train_s": trainer["train_runtime"],
        "nlptransfer_tokens_per_s": tokens / ours["train_runtime"],
        "trainer_tokens_per_s": tokens / trainer["train_runtime"],
    }
    result["speedup"] = result["nlptransfer_tokens_per_s"] / result["trainer_tokens_per_s"]
    result["summary"] = (
        f"nlptransfer {result['nlptransfer_tokens_per_s']:,.0f} tok/s vs Trainer {result['trainer_tokens_per_s']:,.0f} "
        f"tok/s ({result['speedup']:.2f}x; {result['steps']} steps, {result['attention']}, {ctx.mode.precision})"
    )
    return result


@dataclasses.dataclass(frozen=True)
class Check:
    run: Callable[[Context], dict]
    limit_s: float
    needs_gpu: bool = False  # skipped in a dry run
    dry_run_as: str | None = None  # skipped in a dry run, where it would repeat this check (the same tiny model)


CHECKS = {
    "finetune_bf16": Check(finetune_bf16, 90),
    "fsdp": Check(partial(sharded, "fsdp.yaml", "FSDP", None), 90, needs_gpu=True),
    "zero3": Check(partial(sharded, "deepspeed_zero3.yaml", "DEEPSPEED", 3), 120),
    "lora_merge": Check(lora_merge, 90),
    "mtl": Check(mtl, 100),
    "speed_minilm": Check(partial(speed, MINILM), 70),
    "speed_mpnet": Check(partial(speed, MPNET), 120, dry_run_as="speed_minilm"),
}


# ---- the dry run's model and data ----------------------------------------------------------------------------
def slice_trec(folder: Path, mode: Mode) -> Path:
    """trec/train.jsonl and trec/test.jsonl under `folder`: the first rows of each (all of them on a GPU)."""
    (folder / "trec").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", mode.train_rows), ("test", mode.test_rows)):
        lines = (DATA / "trec" / f"{split}.jsonl").read_text().splitlines(keepends=True)
        (folder / "trec" / f"{split}.jsonl").write_text("".join(lines[:rows]))
    return folder


def tiny_model(folder: Path, train_file: Path) -> str:
    """tests/conftest.py's tiny model (2 layers, hidden 32) with a WordPiece vocabulary of the TREC words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = Counter(w for line in train_file.read_text().splitlines() for w in re.findall(r"\w+|[^\w\s]", line.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(w for w, n in words.items() if n > 1)]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), max_position_embeddings=128, **sizes)).save_pretrained(folder)
    return str(folder)


# ---- running them --------------------------------------------------------------------------------------------
def run_checks(ctx: Context, names: list[str], budget_s: float, save: Callable[[dict], None]) -> dict:
    """Each check in turn within its limit (times `ctx.mode.limit_scale`) and all within `budget_s` (times the
    same); a failed or timed-out check is recorded and the next one runs."""
    scale = ctx.mode.limit_scale
    end, outcomes = time.monotonic() + budget_s * scale, {}
    for name in names:
        check, start = CHECKS[name], time.monotonic()
        ctx.commands, ctx.deadline = [], min(start + check.limit_s * scale, end)
        print(f"[{name}] ...", flush=True)
        try:
            if ctx.dry_run and check.needs_gpu:
                raise Skipped("dry run: needs a GPU")
            if ctx.dry_run and check.dry_run_as:
                raise Skipped(f"dry run: {check.dry_run_as} with the same tiny model")
            outcome = {"status": "passed", **check.run(ctx)}
        except Skipped as reason:
            outcome = {"status": "skipped", "reason": str(reason)}
        except Exception as error:  # recorded; the next check runs
            outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        outcome |= {"seconds": round(time.monotonic() - start, 1), "limit_s": check.limit_s * scale}
        outcome["commands"] = ctx.commands
        outcomes[name] = outcome
        print(f"[{name}] {outcome['status']} in {outcome['seconds']} s: {cell(outcome)}", flush=True)
        save(outcomes)  # after every check: a stopped run keeps what finished
    return outcomes


def cell(outcome: dict) -> str:
    text = outcome.get("summary") or outcome.get("reason") or outcome.get("error", "")
    return text.splitlines()[0][:160].replace("|", "/") if text else ""


def table(outcomes: dict) -> str:
    rows = []
    for name, o in outcomes.items():
        status = o["status"] + (f" ({o['reason']})" if o["status"] == "skipped" else "")
        rows.append(
            [name, status, f"{o['seconds']:.0f} / {o['limit_s']:.0f}", "" if o["status"] == "skipped" else cell(o)]
        )
    return markdown_table(["check", "status", "time / limit (s)", "result"], rows)


def main() -> None:
    parser = benchmark_parser(
        __doc__, workdir="keep every run's folder here (default: a temporary folder)", output="results JSON"
    )
    parser.add_argument("--dry_run", action="store_true", help="CPU, tiny model and data: the bookkeeping only")
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=list(CHECKS))
    parser.add_argument("--budget_s", type=float, default=480, help="all checks together stop after this")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no GPU here: run with --dry_run")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    output = results_path(args, "gpu_check_dry" if args.dry_run else "gpu_check")
    mode = DRY if args.dry_run else REAL
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        workdir = Path(args.workdir or scratch)
        data = slice_trec(workdir / "data", mode)
        tiny = tiny_model(workdir / "tiny-bert", data / "trec/train.jsonl") if args.dry_run else None
        models = {MINILM: tiny or MINILM, MPNET: tiny or MPNET}
        ctx = Context(args.dry_run, mode, workdir, data, models, "cuda" if torch.cuda.is_available() else "cpu")

        def save(outcomes: dict) -> None:
            payload = {"dry_run": args.dry_run, "device": device, "data": str(DATA), "models": models}
            payload |= {"mode": dataclasses.asdict(mode), "budget_s": args.budget_s}
            payload |= {"wall_s": round(time.monotonic() - start, 1), "checks": outcomes}
            write_results(output, payload)

        outcomes = run_checks(ctx, args.checks, args.budget_s, save)
    print(f"\n{device}{' (dry run)' if args.dry_run else ''}, {time.monotonic() - start:.0f} s\n\n{table(outcomes)}")
    print(f"\nwritten to {output}")
    sys.exit(1 if any(o["status"] == "failed" for o in outcomes.values()) else 0)


if __name__ == "__main__":
    main()
