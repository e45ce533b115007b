"""Load a pretrained encoder with the head a task kind needs (and a saved adapter run with its head)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from nlptransfer.resolve import load_error, resolve_model
from nlptransfer.runs import ADAPTER_CONFIG_FILE, MERGED_DIR, TASK_FILE
from nlptransfer.sharding import numel
from nlptransfer.tasks import TASK_KINDS, TaskSpec


def load_tokenizer(model_args) -> PreTrainedTokenizerBase:
    name = model_args.tokenizer_name or model_args.model_name_or_path
    try:
        return AutoTokenizer.from_pretrained(
            resolve_model(name), revision=model_args.revision, trust_remote_code=model_args.trust_remote_code
        )
    except OSError as err:
        raise load_error(name, err) from err


def load_model_for_task(model_args, spec: TaskSpec) -> PreTrainedModel:
    """The encoder plus a fresh head sized for the task (`kind.num_outputs`, its label names and
    problem_type); a head of another size is replaced."""
    path = resolve_model(model_args.model_name_or_path)
    common = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
    attention = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    kind = TASK_KINDS[spec.kind]
    try:
        config = AutoConfig.from_pretrained(path, **kind.model_config(spec), **common)
        return kind.auto_model.from_pretrained(path, config=config, ignore_mismatched_sizes=True, **common, **attention)
    except OSError as err:
        raise load_error(model_args.model_name_or_path, err) from err


def load_adapter_model(path: str, revision: str | None = None) -> PeftModel:
    """Reload a saved adapter run (local folder or Hub repo) with its head and label names, in one call."""
    from huggingface_hub import hf_hub_download

    def fetch(name: str) -> Path:
        if Path(path).is_dir():
            return Path(path) / name
        return Path(hf_hub_download(path, name, revision=revision))

    task = json.loads(fetch(TASK_FILE).read_text())
    base = json.loads(fetch(ADAPTER_CONFIG_FILE).read_text())["base_model_name_or_path"]
    kind = TASK_KINDS[task["task_type"]]
    spec = TaskSpec(kind=task["task_type"], labels=task["labels"])
    model = kind.auto_model.from_pretrained(resolve_model(base), **kind.model_config(spec))
    return PeftModel.from_pretrained(model, path, revision=revision)


def save_merged(path: str | Path, tokenizer=None) -> Path:
    """The adapter run saved at `path`, read back and folded into a plain transformers model, saved in
    `path/merged` (with the tokenizer). Merging what was saved, not the training processes' model, makes
    it right under every engine (a ZeRO-3 or FSDP process holds only shards)."""
    out = Path(path) / MERGED_DIR
    load_adapter_model(str(path)).merge_and_unload().save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a ZeRO-3 partitioned parameter counts its whole size (`ds_numel`)."""
    sizes = [(numel(p), p.requires_grad) for p in model.parameters()]
    return sum(size for size, trainable in sizes if trainable), sum(size for size, _ in sizes)
