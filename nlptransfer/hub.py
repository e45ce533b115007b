"""Model cards and Hub pushes: the only module that talks to `HfApi`.

The token comes from the usual places (`HF_TOKEN`, the login cache) through `huggingface_hub`
itself and is never printed. Transient HTTP errors are retried; a failed push leaves the run
folder as it was (the card is uploaded from memory, never written into the run).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError

from nlptransfer.errors import PushError, RunFolderError
from nlptransfer.runs import (
    ADAPTER_CONFIG_FILE,
    CONFIG_FILE,
    MODEL_CONFIG_FILE,
    MULTITASK_FILE,
    RESULTS_FILE,
    TASK_FILE,
    read_json,
    run_kind,
)
from nlptransfer.tasks import TASK_KINDS

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
SKIP_PATTERNS = ("checkpoints/", "runs/", "merged/", "single_task/", ".tmp-")
PIPELINE_TAGS = {
    "classification": "text-classification",
    "pair_classification": "text-classification",
    "regression": "text-classification",
    "ner": "token-classification",
}
HEADLINE_METRICS = {
    "classification": ("accuracy", "f1"),
    "pair_classification": ("accuracy", "f1"),
    "regression": ("pearson", "spearman", "mse"),
    "ner": ("f1", "precision", "recall", "strict_f1"),
}

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

## Labels

{{ labels }}

## Results

| split | metric | value |
|---|---|---|
{{ results_table }}

## How to load

```python
{{ loading_snippet }}
```

## Training

{{ training }}

Trained with nlptransfer's `recipes/finetune.py`; the full resolved configuration is in `run_config.yaml`.
"""


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level errors of whichever HTTP client this huggingface_hub uses (httpx2, httpx or requests)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        if importlib.util.find_spec(name) is not None:
            errors.append(importlib.import_module(name).TransportError)
    if importlib.util.find_spec("requests") is not None:
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    return tuple(errors)


def _is_transient(err: Exception) -> bool:
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        return status in RETRY_STATUS
    return isinstance(err, _transport_errors())  # not every OSError: a missing file must fail at once


def with_retries(call: Callable[[], T], attempts: int = 4, wait: float = 1.0) -> T:
    """Retry transient HTTP/network errors with exponential back-off; other errors raise at once."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - filtered by _is_transient, re-raised otherwise
            if attempt == attempts or not _is_transient(err):
                raise
            logger.warning("transient Hub error (%s), retry %d/%d", type(err).__name__, attempt, attempts - 1)
            time.sleep(wait * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def read_run(run_dir: str | Path) -> dict:
    """What a card needs from a run folder: config, results, labels, whether it is an adapter."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunFolderError(f"{run_dir}: no such run folder")

    def read(name: str, parse: Callable[[str], dict] = json.loads) -> dict:
        return parse((run / name).read_text()) if (run / name).is_file() else {}

    config, results = read(CONFIG_FILE, yaml.safe_load), read(RESULTS_FILE)
    task, model_config = read(TASK_FILE), read(MODEL_CONFIG_FILE)
    labels = task.get("labels") or [
        model_config.get("id2label", {})[k] for k in sorted(model_config.get("id2label", {}), key=int)
    ]
    return {
        "config": config,
        "results": results,
        "labels": labels,
        "adapter": (run / ADAPTER_CONFIG_FILE).is_file(),
        "task_type": task.get("task_type") or config.get("task_type", "classification"),
        "base_model": task.get("base_model") or config.get("model_name_or_path"),
    }


def build_model_card(run_dir: str | Path, repo_id: str, merged: bool = False) -> ModelCard:
    run = read_run(run_dir)
    run["adapter"] = run["adapter"] and not merged  # a merged export is a plain model
    config, results, kind = run["config"], run["results"], run["task_type"]
    datasets = [config[k] for k in ("dataset_name", "train_file") if config.get(k)]
    dataset_name = (
        Path(datasets[0]).parent.name
        if datasets and not config.get("dataset_name")
        else (datasets[0] if datasets else "custom")
    )
    eval_results = [
        EvalResult(
            task_type=PIPELINE_TAGS[kind],
            dataset_type=config.get("dataset_name") or dataset_name,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric,
            metric_value=float(results[f"{prefix}_{metric}"]),
        )
        for prefix, split in (("test", "test"), ("eval", "validation"))
        for metric in HEADLINE_METRICS[kind]
        if f"{prefix}_{metric}" in results
    ]
    card_data = ModelCardData(
        base_model=run["base_model"],
        datasets=[dataset_name] if datasets else None,
        library_name="peft" if run["adapter"] else "transformers",
        pipeline_tag=PIPELINE_TAGS[kind],
        tags=["nlptransfer", kind] + (["lora", "peft"] if run["adapter"] else []),
        eval_results=eval_results or None,
        model_name=repo_id.split("/")[-1],
        metrics=sorted({r.metric_type for r in eval_results}) or None,
    )
    rows = [
        f"| {'test' if key.startswith('test_') else 'validation'} | {key.split('_', 1)[1]} | {value:.4f} |"
        for key, value in sorted(results.items())
        if key.split("_", 1)[0] in ("test", "eval")
        and isinstance(value, float)
        and key.split("_", 1)[1] in HEADLINE_METRICS[kind] + ("accuracy",)
    ]
    hyper = [
        "learning_rate",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
        "max_steps",
        "warmup_ratio",
        "weight_decay",
        "lr_scheduler_type",
        "max_seq_length",
        "seed",
        "peft",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "use_dora",
    ]
    training = "\n".join(f"- `{k}`: {config[k]}" for k in hyper if config.get(k) not in (None, [], ""))
    for key in ("trainable_parameters", "total_parameters", "adapter_size_bytes"):
        if key in results:
            training += f"\n- {key.replace('_', ' ')}: {int(results[key]):,}"
    plain = TASK_KINDS[kind].auto_model.__name__  # e.g. AutoModelForTokenClassification
    auto = plain.replace("AutoModel", "AutoPeftModel")
    if run["adapter"]:
        labels = run["labels"]
        snippet = (
            f"from peft import {auto}\n\n"
            f'model = {auto}.from_pretrained(\n    "{repo_id}", num_labels={len(labels)},\n'
            f"    id2label={dict(enumerate(labels))!r},\n)\n\n"
            f"# or, resolving the base model offline when it ships as a package:\n"
            f'from nlptransfer import load_adapter_model\nmodel = load_adapter_model("{repo_id}")'
        )
    else:
        snippet = f'from transformers import pipeline\n\nclassifier = pipeline("{PIPELINE_TAGS[kind]}", model="{repo_id}")\n# or {plain}.from_pretrained("{repo_id}")'
    what = "LoRA adapter (with its task head)" if run["adapter"] else "fine-tuned model"
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        model_name=repo_id.split("/")[-1],
        summary=f"A {what} for {kind} on top of `{run['base_model']}`, trained on {dataset_name}.",
        labels=", ".join(f"`{label}`" for label in run["labels"]) or "(none recorded)",
        results_table="\n".join(rows) or "| - | - | - |",
        loading_snippet=snippet,
        training=training or "(not recorded)",
    )


MULTITASK_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

## Tasks

| task | kind | labels |
|---|---|---|
{{ tasks_table }}

## Results

| task | split | metric | value |
|---|---|---|---|
{{ results_table }}

## How to load

```python
{{ loading_snippet }}
```

## Training

{{ training }}
"""


def build_multitask_card(run_dir: str | Path, repo_id: str) -> ModelCard:
    """A card for a `MultiTaskModel` folder: every task with its labels and per-task metrics as a model-index."""
    run = Path(run_dir)
    model = json.loads((run / MULTITASK_FILE).read_text())
    results = read_json(run / RESULTS_FILE, {})
    config = yaml.safe_load((run / CONFIG_FILE).read_text()) if (run / CONFIG_FILE).is_file() else {}
    tasks = model["tasks"]
    eval_results, rows = [], []
    for task in tasks:
        name, kind = task["name"], task["kind"]
        for prefix, split in (("test", "test"), ("eval", "validation")):
            for metric in HEADLINE_METRICS[kind]:
                value = results.get(f"{prefix}_{name}_{metric}")
                if value is None:
                    continue
                rows.append(f"| {name} | {split} | {metric} | {value:.4f} |")
                eval_results.append(
                    EvalResult(
                        task_type=PIPELINE_TAGS[kind],
                        dataset_type=name,
                        dataset_name=name,
                        dataset_split=split,
                        metric_type=metric,
                        metric_value=float(value),
                    )
                )
    card_data = ModelCardData(
        base_model=model["base_model"],
        library_name="nlptransfer",
        tags=["nlptransfer", "multi-task", *sorted({task["kind"] for task in tasks})]
        + (["lora", "peft"] if model.get("adapter") else []),
        eval_results=eval_results or None,
        model_name=repo_id.split("/")[-1],
        metrics=sorted({r.metric_type for r in eval_results}) or None,
    )
    names = [task["name"] for task in tasks]
    snippet = (
        "from nlptransfer import MultiTaskModel\n\n"
        f'model = MultiTaskModel.from_pretrained("{repo_id}")\n'
        f'model.predict(["Who wrote Hamlet in London ?"], tasks={names!r})'
    )
    hyper = (
        "learning_rate",
        "per_device_train_batch_size",
        "num_train_epochs",
        "max_steps",
        "warmup_ratio",
        "task_sampling",
        "sampling_temperature",
        "loss_weighting",
        "seed",
        "peft",
        "lora_r",
        "lora_alpha",
    )
    training = "\n".join(f"- `{k}`: {config[k]}" for k in hyper if config.get(k) not in (None, [], ""))
    for key in ("trainable_parameters", "total_parameters"):
        if key in results:
            training += f"\n- {key.replace('_', ' ')}: {int(results[key]):,}"
    what = "shared LoRA adapter" if model.get("adapter") else "shared encoder"
    return ModelCard.from_template(
        card_data,
        template_str=MULTITASK_CARD_TEMPLATE,
        model_name=repo_id.split("/")[-1],
        summary=f"One {what} on `{model['base_model']}` with a head per task ({', '.join(names)}), "
        "trained together with nlptransfer's `MultiTaskModel`; one forward pass serves every task.",
        tasks_table="\n".join(
            f"| {t['name']} | {t['kind']} | {', '.join(f'`{label}`' for label in t['labels']) or '(score)'} |"
            for t in tasks
        ),
        results_table="\n".join(rows) or "| - | - | - | - |",
        loading_snippet=snippet,
        training=training or "(not recorded)",
    )


def push_run(
    run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None, merged: bool = False
) -> str:
    """Create the repo and upload the run (adapter or model, tokenizer, config, results) plus a card, in one commit."""
    run = Path(run_dir)
    source = run / "merged" if merged else run
    if not source.is_dir():
        raise RunFolderError(f"{source}: nothing to push" + (" (train with --merge first)" if merged else ""))
    api = HfApi(token=token)
    if run_kind(source) == "multitask":
        card = build_multitask_card(source, repo_id)
    else:
        card = build_model_card(run, repo_id, merged=merged)
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and not any(s in p.relative_to(source).as_posix() for s in SKIP_PATTERNS)
    )
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(source).as_posix(), path_or_fileobj=str(p)) for p in files
    ]
    if merged:
        operations += [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(run / name))
            for name in (RESULTS_FILE, CONFIG_FILE)
            if (run / name).is_file()
        ]
    operations = [op for op in operations if op.path_in_repo != "README.md"]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    try:
        url = with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True))
        commit = with_retries(
            lambda: api.create_commit(
                repo_id, operations=operations, commit_message=f"Upload {run.name} with nlptransfer"
            )
        )
    except Exception as err:
        raise PushError(
            f"pushing {run_dir} to {repo_id} failed ({type(err).__name__}: {err}); the run folder is unchanged. "
            f"Re-run: nlptransfer push {run_dir} {repo_id}"
            + (" --private" if private else "")
            + (" --merged" if merged else "")
        ) from err
    return getattr(commit, "commit_url", None) or str(url)
