"""What a run folder holds, decided in one place: its file names, its kind, and how a finished run is saved.

A leaf: it imports nothing of ours. Everything that reads a run folder (predict, push, teacher loading,
`MultiTaskModel.from_pretrained`) asks `run_kind(path)` what it is instead of probing files itself.

    model      config.json (+ weights): a fine-tuned, distilled or domain-adapted task model; loads in `pipeline`
    adapter    adapter_config.json + nlptransfer_task.json: a LoRA (or any peft) adapter with its head
    multitask  nlptransfer_multitask.json: a `MultiTaskModel` (shared encoder or adapters, every head)
    encoder    config.json + nlptransfer_meta.json: a meta-learned encoder without a head

Every kind also holds the tokenizer, `all_results.json` and the resolved arguments (`run_config.yaml`).
An ONNX export of a run (`nlptransfer export onnx`) is a folder of its own kind, `onnx`: model.onnx (and a
quantized graph beside it), the tokenizer and `nlptransfer_onnx.json`; only the onnx backend reads it.
A multi-task folder's format is versioned (`MULTITASK_FORMAT_VERSION`): older folders' weights load renamed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file

TASK_FILE = "nlptransfer_task.json"
"""Task kind, label names and base model of a single-task run."""
MULTITASK_FILE = "nlptransfer_multitask.json"
"""The configuration of a `MultiTaskModel`: tasks, heads, adapters, loss weighting, format version."""
META_FILE = "nlptransfer_meta.json"
"""A meta-learned encoder: algorithm, the meta-train and meta-test class groups, settings."""
RESULTS_FILE = "all_results.json"
CONFIG_FILE = "run_config.yaml"
ADAPTER_CONFIG_FILE = "adapter_config.json"
MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "nlptransfer_onnx.json"
"""The manifest of an ONNX export: tasks with their labels, input and output names, files, source run, versions."""
ONNX_MODEL_FILE = "model.onnx"
ONNX_FORMAT_VERSION = 1
MERGED_DIR = "merged"
"""`--merge`: the adapter folded into a plain model, beside the adapter."""

RUN_KINDS = {
    # the first whose marker file exists wins: a multi-task folder also has no config.json, an adapter no model
    "onnx": ONNX_FILE,
    "multitask": MULTITASK_FILE,
    "adapter": ADAPTER_CONFIG_FILE,
    "encoder": META_FILE,
    "model": MODEL_CONFIG_FILE,
}


def run_kind(path: str | Path) -> str | None:
    """`multitask`, `adapter`, `encoder`, `model` (or `onnx`, an export) for a local folder; None when it is none."""
    folder = Path(path)
    return next((kind for kind, marker in RUN_KINDS.items() if (folder / marker).is_file()), None)


def read_json(path: str | Path, default: Any = None) -> Any:
    """A JSON file's content, or `default` when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


def write_json(path: str | Path, content: Any) -> None:
    Path(path).write_text(json.dumps(content, indent=2, sort_keys=True))


def write_results(output_dir: str | Path, results: dict) -> None:
    write_json(Path(output_dir) / RESULTS_FILE, results)


def task_info(kind: str, labels: list[str] | None, base_model: str | None, **settings) -> dict:
    """The content of `nlptransfer_task.json`: the kind, label names, base model and what inference needs
    besides (`TaskSpec.inference_settings`: a multi-label task's thresholds, long-text chunking, the window)."""
    return {"task_type": kind, "labels": labels, "base_model": base_model, **settings}


def read_task_info(path: str | Path) -> dict:
    """`nlptransfer_task.json` of a run folder ({} for a model saved elsewhere: a plain transformers folder)."""
    return read_json(Path(path) / TASK_FILE, {})


def multitask_task_names(path: str | Path) -> list[str]:
    """The task names of a multi-task run folder, without loading the model."""
    return [task["name"] for task in read_json(Path(path) / MULTITASK_FILE, {}).get("tasks", [])]


def save_model_folder(output_dir: str | Path, model, tokenizer, state_dict: dict | None = None) -> dict:
    """`save_pretrained` of a model (with the gathered `state_dict`) or of a peft adapter with its head,
    and the tokenizer. Returns what the folder adds to the results (the adapter's size)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    added = {}
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):  # a PeftModel
        model.save_pretrained(output_dir, state_dict=state_dict)  # adapter weights plus modules_to_save (the head)
        added["adapter_size_bytes"] = (output_dir / "adapter_model.safetensors").stat().st_size
    else:
        model.save_pretrained(output_dir, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    return added


def model_to_save(model, state_dict: dict):
    """The model a run folder holds, with its part of `state_dict`: a training wrapper (distillation,
    domain-adversarial, born-again) names the model it trains in the class attribute `saved_attribute`."""
    while attribute := getattr(type(model), "saved_attribute", None):
        prefix = f"{attribute}."
        model = getattr(model, attribute)
        state_dict = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    return model, state_dict


def save_model(accelerator, output_dir: str | Path, model, tokenizer=None) -> dict:
    """The weights of a prepared model (gathered from every process: all of them call this), saved by the
    main process as the model inside any training wrapper. Returns what the folder adds to the results."""
    state_dict = accelerator.get_state_dict(model)  # gathers sharded (FSDP/DeepSpeed) parameters
    added = {}
    if accelerator.is_main_process:
        inner, state_dict = model_to_save(accelerator.unwrap_model(model), state_dict)
        added = save_model_folder(output_dir, inner, tokenizer, state_dict)
    accelerator.wait_for_everyone()
    return added


def save_run(accelerator, output_dir: str | Path, model, tokenizer, spec, base_model: str) -> dict:
    """A single-task run folder: the gathered weights (or the adapter with its head), the tokenizer and the
    task's label names (`nlptransfer_task.json`). Every process calls it; returns what the folder adds to the
    results (`lifecycle.finish_run` writes them)."""
    added = save_model(accelerator, output_dir, model, tokenizer)
    if accelerator.is_main_process:
        write_json(
            Path(output_dir) / TASK_FILE, task_info(spec.kind, spec.labels, base_model, **spec.inference_settings())
        )
    accelerator.wait_for_everyone()
    return added


# ---- a multi-task model's folder (`MultiTaskModel.save_pretrained` / `from_pretrained`) --------------
MULTITASK_FORMAT_VERSION = 2
"""The layout of a `MultiTaskModel` folder's weights, written into its `nlptransfer_multitask.json`.

0 (no version written) and 1: per part, then task: `heads.<task>.`, `layer_mix.<task>.`, `private.<task>.<i>.`.
2: per task route: `routes.<task>.head.`, `routes.<task>.mix.`, `routes.<task>.private.<i>.`.
The encoder (`encoder.`) and the loss weighting (`loss_weighting.`) keep their keys in every version."""

_V1_ROUTE_PARTS = {"heads": "head", "layer_mix": "mix", "private": "private"}
"""Format 1's top-level parts and the name each has inside a task route (format 2)."""


def upgrade_multitask_state(state: dict, version: int) -> dict:
    """Weights saved in format `version`, with the keys of the current format."""
    if version >= 2:
        return state
    upgraded = {}
    for key, value in state.items():
        part, task, rest = (key.split(".", 2) + ["", ""])[:3]
        if part in _V1_ROUTE_PARTS and rest:
            key = f"routes.{task}.{_V1_ROUTE_PARTS[part]}.{rest}"
        upgraded[key] = value
    return upgraded


def multitask_folder(path: str | Path, revision: str | None = None, token: str | None = None) -> Path:
    """A multi-task model's folder: `path` itself, or the Hub repo `path` downloaded."""
    folder = Path(path)
    if not folder.is_dir():
        folder = Path(snapshot_download(str(path), revision=revision, token=token))
    if not (folder / MULTITASK_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {MULTITASK_FILE}; not a MultiTaskModel folder")
    return folder


def read_multitask_config(folder: str | Path) -> dict:
    """`nlptransfer_multitask.json`, with its `format_version` (0 when none was written) and the defaults of
    fields older formats lack; a folder from a newer nlptransfer is refused."""
    config = json.loads((Path(folder) / MULTITASK_FILE).read_text())
    config.setdefault("format_version", 0)
    if config["format_version"] > MULTITASK_FORMAT_VERSION:
        raise ValueError(f"{folder}: saved with a newer nlptransfer (format {config['format_version']})")
    for key, default in (("layer_mix", []), ("private_layers", {}), ("adapter_per_task", False)):
        config.setdefault(key, default)
    return config


def read_multitask_weights(folder: str | Path, version: int) -> dict:
    """The folder's weights, keyed as the current format keys them (`upgrade_multitask_state`)."""
    return upgrade_multitask_state(load_file(str(Path(folder) / WEIGHTS_FILE)), version)


def write_multitask_folder(
    output_dir: str | Path, config: dict, state: dict, encoder_config=None, tokenizer=None
) -> None:
    """The weights (`state`), the encoder's config, `nlptransfer_multitask.json` (`config` and the format
    version) and the tokenizer."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / WEIGHTS_FILE))
    if encoder_config is not None:
        encoder_config.save_pretrained(out)
    content = {"format_version": MULTITASK_FORMAT_VERSION, **config}
    (out / MULTITASK_FILE).write_text(json.dumps(content, indent=2, default=_jsonable))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def _jsonable(value):
    """peft configs hold sets (target_modules) and enums: lists and strings in JSON."""
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)
