"""The `nlptransfer` command: `models`, `predict`, `push`. Training runs through the recipes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path


def cmd_models(args: argparse.Namespace) -> int:
    """List the Hub ids that resolve to an installed package, and where they are."""
    from nlptransfer.resolve import MODEL_ALIASES

    for name, model in sorted(MODEL_ALIASES.items()):
        path = model.path()
        print(f"{name:45} {path if path else 'not installed: ' + model.install}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Run a saved run's model on texts (arguments or stdin lines) and print one JSON line each."""
    from transformers import AutoConfig, pipeline

    from nlptransfer.multitask import CONFIG_FILE, MultiTaskModel
    from nlptransfer.resolve import resolve_model

    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if (Path(args.model) / CONFIG_FILE).is_file():  # a multi-task run: every task (or --tasks) per text
        multi = MultiTaskModel.from_pretrained(args.model).to(args.device)
        for text, prediction in zip(texts, multi.predict(texts, tasks=args.tasks)):
            print(json.dumps({"text": text, "prediction": prediction}))
        return 0
    model = resolve_model(args.model)
    architectures = AutoConfig.from_pretrained(model).architectures or []
    is_tagger = any(name.endswith("ForTokenClassification") for name in architectures)
    task = "token-classification" if is_tagger else "text-classification"
    options = {"aggregation_strategy": "first"} if is_tagger else {}
    runner = pipeline(task, model=model, device=args.device, **options)
    for text, prediction in zip(texts, runner(texts)):
        if is_tagger:
            prediction = [{**item, "score": float(item["score"])} for item in prediction]
        print(json.dumps({"text": text, "prediction": prediction}))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Push a run folder (adapter or model, tokenizer, results) with a generated model card."""
    from nlptransfer.hub import PushError, push_run

    try:
        url = push_run(args.run_dir, args.repo_id, private=args.private, merged=args.merged)
    except (PushError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.run_dir} to {url}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "models": (cmd_models, "list offline model aliases and whether their packages are installed"),
    "predict": (cmd_predict, "predict with a saved model folder"),
    "push": (cmd_push, "push a run folder to the Hub with a model card"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlptransfer", description="Adapt pretrained encoders to new NLP tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help=COMMANDS["models"][1])
    predict = sub.add_parser("predict", help=COMMANDS["predict"][1])
    predict.add_argument("model", help="output_dir of a run (or a Hub id)")
    predict.add_argument("texts", nargs="*", help="texts to classify or tag; read from stdin when none")
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--tasks", nargs="+", default=None, help="multi-task runs: which tasks (default: all)")
    push = sub.add_parser("push", help=COMMANDS["push"][1])
    push.add_argument("run_dir", help="output_dir of a run")
    push.add_argument("repo_id", help="namespace/name on the Hub")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument(
        "--merged", action="store_true", help="push run_dir/merged (a --merge export) instead of the adapter"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][0](args)


if __name__ == "__main__":
    sys.exit(main())
