"""The `nlptransfer` command: `run` (train with a recipe), `models`, `predict`, `export`, `serve`, `push`, `rank-models`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from nlptransfer.errors import (
    ConfigError,
    NlptransferError,
    debug_requested,
    report_user_error,
    without_debug_flag,
)


def cmd_models(args: argparse.Namespace) -> int:
    """List the Hub ids that resolve to an installed package, and where they are."""
    from nlptransfer.resolve import MODEL_ALIASES

    for name, model in sorted(MODEL_ALIASES.items()):
        path = model.path()
        print(f"{name:45} {path if path else 'not installed: ' + model.install}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Run a run's model (`--backend torch`) or its ONNX export (`--backend onnx`) on texts (arguments or stdin
    lines) and print one JSON line each: {"text", "prediction"}, the prediction of a single-task run's task, or
    {task: prediction} for a multi-task run. Sentence-pair models read FIRST<TAB>SECOND."""
    from nlptransfer.inference import load_predictor

    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {args.batch_size}")
    predictor = load_predictor(args.model, backend=args.backend, device=args.device)
    if unknown := [name for name in args.tasks or [] if name not in predictor.task_names]:
        raise ConfigError(f"--tasks {' '.join(unknown)}: not tasks of this model ({', '.join(predictor.task_names)})")
    # read after the model loads: a bad folder is reported before stdin is waited on
    lines = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    inputs: list = lines
    if predictor.pair_input:
        if untabbed := [line for line in lines if "\t" not in line]:
            raise ConfigError(f"this model reads sentence pairs: give FIRST<TAB>SECOND, not {untabbed[0]!r}")
        inputs = [tuple(line.split("\t", 1)) for line in lines]
    single = predictor.kind != "multitask"
    for start in range(0, len(lines), args.batch_size):
        batch = predictor.predict(inputs[start : start + args.batch_size], tasks=args.tasks)
        for text, prediction in zip(lines[start : start + args.batch_size], batch):
            print(
                json.dumps({"text": text, "prediction": prediction[predictor.task_names[0]] if single else prediction})
            )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run to a deployable format (ONNX: one graph with every task's output, its tokenizer, a manifest)."""
    from nlptransfer.export import EXPORT_FORMATS

    options = {"opset": args.opset} if args.opset is not None else {}
    out = EXPORT_FORMATS[args.format](args.run, args.out, quantize=args.quantize, **options)
    print(f"exported {args.run} to {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Push a run folder (adapter or model, tokenizer, results) with a generated model card."""
    from nlptransfer.hub import push_run

    url = push_run(args.run_dir, args.repo_id, private=args.private, merged=args.merged)
    print(f"pushed {args.run_dir} to {url}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve runs over HTTP (FastAPI on uvicorn) with dynamic micro-batching until SIGTERM/SIGINT."""
    from nlptransfer.serving import config_from_args
    from nlptransfer.serving.server import serve

    return serve(args.runs, config_from_args(args))


def cmd_run(args: argparse.Namespace) -> int:
    """Train with a recipe of the installed package (in this process, or through `accelerate launch`)."""
    from nlptransfer.launch import run_recipe

    return run_recipe(args.recipe, args.recipe_args)


def cmd_rank_models(args: argparse.Namespace) -> int:
    """Rank candidate encoders for a task by a transferability score (LogME, H-score), no fine-tuning."""
    from nlptransfer.config import DataArguments
    from nlptransfer.transferability import TRANSFERABILITY_SCORES, Candidate, rank_models

    if args.score not in TRANSFERABILITY_SCORES:
        raise ConfigError(f"--score {args.score!r} is not known; choose one of {', '.join(TRANSFERABILITY_SCORES)}")
    if not Path(args.train_file).expanduser().is_file():
        raise ConfigError(f"--train_file {args.train_file}: no such file")
    if args.max_examples is not None and args.max_examples < 2:
        raise ConfigError(f"--max_examples must be at least 2, got {args.max_examples}")
    try:  # a ValueError of a candidate's option is the user's too
        candidates = [Candidate.parse(name) for name in args.models]
        data_args = DataArguments(
            task_type=args.task_type,
            train_file=args.train_file,
            text_column_name=args.text_column_name,
            text_pair_column_name=args.text_pair_column_name,
            label_column_name=args.label_column_name,
            tokens_column_name=args.tokens_column_name,
            tags_column_name=args.tags_column_name,
            max_seq_length=args.max_seq_length,
        )
        ranking = rank_models(candidates, data_args, args.score, args.max_examples, args.batch_size)
    except ValueError as err:
        if isinstance(err, NlptransferError):
            raise
        raise ConfigError(str(err)) from err
    width = max(len("model"), *(len(r.candidate) for r in ranking))
    print(f"{'rank':>4}  {'model':<{width}}  {args.score:>10}  {'seconds':>8}")
    for rank, row in enumerate(ranking, start=1):
        print(f"{rank:>4}  {row.candidate:<{width}}  {row.score:>10.4f}  {row.seconds:>8.1f}")
    if args.output:
        results = {
            "score": args.score,
            "train_file": args.train_file,
            "task_type": args.task_type,
            "max_examples": args.max_examples,
            "ranking": [
                {"rank": rank, "model": row.candidate, "score": row.score, "seconds": row.seconds}
                for rank, row in enumerate(ranking, start=1)
            ],
        }
        try:
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
        except OSError as err:
            raise ConfigError(f"--output {args.output}: {err.strerror or err}") from err
        print(f"written to {args.output}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "run": (cmd_run, "train: run a recipe (finetune, mtl, distill, domain-adapt, meta) from any directory"),
    "models": (cmd_models, "list offline model aliases and whether their packages are installed"),
    "predict": (cmd_predict, "predict with a saved run (--backend torch) or its ONNX export (--backend onnx)"),
    "export": (cmd_export, "export a run to ONNX (one graph for every task; --quantize int8)"),
    "push": (cmd_push, "push a run folder to the Hub with a model card"),
    "serve": (cmd_serve, "serve runs over HTTP: TEI-compatible /predict, every task from one pass, batching"),
    "rank-models": (cmd_rank_models, "rank candidate encoders for a task without fine-tuning (LogME, H-score)"),
}


def build_parser() -> argparse.ArgumentParser:
    from nlptransfer.serving import add_serve_arguments  # flags from ServeConfig; no web framework imported

    parser = argparse.ArgumentParser(prog="nlptransfer", description="Adapt pretrained encoders to new NLP tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help=COMMANDS["run"][1],
        description="Run a training recipe. One process: in this process (like `python -m "
        "nlptransfer.recipes.NAME`); --num_processes N or --accelerate_config F (a file, or a shipped name: "
        "ddp, deepspeed_zero2, deepspeed_zero3, fsdp, two_nodes_ddp): through `accelerate launch`, with gloo "
        "CPU ranks where there is no GPU. Every other flag is the recipe's (`nlptransfer run mtl --help`); "
        "`--config NAME` finds a shipped configuration (trec_sst2_conll, meta_trec) by name.",
    )
    run.add_argument("recipe", help="finetune, mtl, distill, domain-adapt or meta")
    run.add_argument("recipe_args", nargs=argparse.REMAINDER, help="the recipe's flags, and the launcher's")
    sub.add_parser("models", help=COMMANDS["models"][1])
    predict = sub.add_parser("predict", help=COMMANDS["predict"][1])
    predict.add_argument("model", help="output_dir of a run (or a Hub id)")
    predict.add_argument("texts", nargs="*", help="texts to classify or tag; read from stdin when none")
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--tasks", nargs="+", default=None, help="multi-task runs: which tasks (default: all)")
    predict.add_argument(
        "--backend", default="torch", help="torch (a run folder) or onnx (an `nlptransfer export onnx` folder)"
    )
    predict.add_argument("--batch_size", type=int, default=32, help="texts per forward pass")
    export = sub.add_parser("export", help=COMMANDS["export"][1])
    formats = export.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser(
        "onnx",
        help="one ONNX graph (every task's output, dynamic batch and sequence axes), tokenizer, manifest",
        description="Export a run folder (fine-tuned, LoRA or multi-task) to the new or empty folder OUT: "
        "model.onnx, the tokenizer and nlptransfer_onnx.json. Predict with `nlptransfer predict OUT --backend onnx`.",
    )
    onnx.add_argument("run", help="output_dir of a run")
    onnx.add_argument("out", help="new (or empty) folder for the export; never overwritten")
    onnx.add_argument(
        "--quantize", default=None, help="int8: also write model_int8.onnx (dynamic quantization), the default graph"
    )
    onnx.add_argument("--opset", type=int, default=None, help="ONNX opset (default: export.DEFAULT_OPSET, 18)")
    push = sub.add_parser("push", help=COMMANDS["push"][1])
    push.add_argument("run_dir", help="output_dir of a run")
    push.add_argument("repo_id", help="namespace/name on the Hub")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument(
        "--merged", action="store_true", help="push run_dir/merged (a --merge export) instead of the adapter"
    )
    serve = sub.add_parser("serve", help=COMMANDS["serve"][1], description=COMMANDS["serve"][1])
    add_serve_arguments(serve)
    rank = sub.add_parser(
        "rank-models",
        help=COMMANDS["rank-models"][1],
        description="Score each candidate's frozen features on the training data; best first. A candidate is "
        "a Hub id or folder, optionally with options after ':': layers=K (keep the bottom K layers), random "
        "(random initialisation of the same shape), seed=S (its seed), e.g. "
        "sentence-transformers/all-MiniLM-L6-v2:layers=2 or sentence-transformers/all-MiniLM-L6-v2:random.",
    )
    rank.add_argument("--models", nargs="+", required=True, help="candidates: MODEL[:layers=K][,random][,seed=S]")
    rank.add_argument("--train_file", required=True, help="labelled training data (.jsonl/.json/.csv/.tsv or CoNLL)")
    rank.add_argument("--task_type", default="classification", help="classification, pair_classification or ner")
    rank.add_argument("--score", default="logme", help="logme (default) or hscore")
    rank.add_argument(
        "--max_examples", type=int, default=1000, help="score on the first N examples (sentences for ner)"
    )
    rank.add_argument("--max_seq_length", type=int, default=128)
    rank.add_argument("--batch_size", type=int, default=32)
    rank.add_argument("--text_column_name", default="text")
    rank.add_argument("--text_pair_column_name", default=None)
    rank.add_argument("--label_column_name", default="label")
    rank.add_argument("--tokens_column_name", default="tokens")
    rank.add_argument("--tags_column_name", default="ner_tags")
    rank.add_argument("--output", default=None, help="also write the ranking to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user-facing error is one `error: ...` line and exit status 2 (--debug: traceback)."""
    debug = debug_requested(argv)
    argv = without_debug_flag(argv)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][0](args)
    except NlptransferError as err:
        return report_user_error(err, debug)


if __name__ == "__main__":
    sys.exit(main())
