"""PEFT adapters (LoRA, DoRA, IA3, or any peft config file) on a task model, head always included.

The task head is new, so it must train and be saved with the adapter (`modules_to_save`); we find
it by structure (every top-level child with weights that is not the pretrained base model), not by
a name list, so a reloaded classifier never comes back with a random head.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from peft import IA3Config, LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model

from nlptransfer.errors import ConfigError

# every linear layer of attention and feed-forward, per architecture. On CoNLL-2003 (MiniLM, 3 epochs,
# lr 1e-3, eng.testa F1): attention-only r=8 (0.65% trainable) 0.849, all-linear r=4 (0.74%) 0.877
_BERT_LIKE = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
LORA_TARGET_MODULES: dict[str, list[str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "mpnet": ["attn.q", "attn.k", "attn.v", "attn.o", "intermediate.dense", "output.dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": [
        "query_proj",
        "key_proj",
        "value_proj",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ],
}
PEFT_TASK_TYPES = {
    "classification": TaskType.SEQ_CLS,
    "pair_classification": TaskType.SEQ_CLS,
    "regression": TaskType.SEQ_CLS,
    "ner": TaskType.TOKEN_CLS,
}


@dataclass
class AdapterArguments:
    """Parameter-efficient fine-tuning with any peft method: LoRA/DoRA and IA3 by flags, any other method
    (prefix tuning, LoHa, ...) through --peft_config_file. Without --peft the whole model trains."""

    peft: str | None = field(
        default=None, metadata={"help": "Adapter method: lora or ia3 (default: full fine-tuning)."}
    )
    lora_r: int = field(default=4, metadata={"help": "LoRA rank (4 on every linear layer: 0.7%% of MiniLM)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=list, metadata={"help": "Module name suffixes to adapt (default: per architecture)."}
    )
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    peft_config_file: str | None = field(
        default=None, metadata={"help": "JSON/YAML peft config (any peft method: {peft_type: IA3, ...})."}
    )
    merge: bool = field(default=False, metadata={"help": "Also export a plain merged model to output_dir/merged."})

    def __post_init__(self):
        if self.peft is not None and self.peft not in PEFT_METHODS:
            raise ConfigError(f"--peft {self.peft!r} is not known; choose one of {sorted(PEFT_METHODS)}")
        if self.lora_r < 1:
            raise ConfigError(f"--lora_r must be at least 1, got {self.lora_r}")

    @property
    def enabled(self) -> bool:
        return self.peft is not None or self.peft_config_file is not None


def head_modules(model: torch.nn.Module) -> list[str]:
    """Names of the top-level modules with weights outside the pretrained base (the task head)."""
    base = getattr(model, "base_model_prefix", None)
    return [name for name, child in model.named_children() if name != base and any(True for _ in child.parameters())]


def _lora_config(args: AdapterArguments, model: torch.nn.Module, task_type: TaskType) -> LoraConfig:
    model_type = getattr(model.config, "model_type", "")
    targets = args.lora_target_modules or LORA_TARGET_MODULES.get(model_type)
    if not targets:
        raise ConfigError(
            f"no default LoRA target modules for model type {model_type!r}; pass --lora_target_modules "
            f"(known defaults: {', '.join(sorted(LORA_TARGET_MODULES))})"
        )
    return LoraConfig(
        task_type=task_type,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        use_dora=args.use_dora,
        modules_to_save=head_modules(model),
    )


def _ia3_config(args: AdapterArguments, model: torch.nn.Module, task_type: TaskType) -> IA3Config:
    # peft knows IA3 targets for common architectures; explicit targets win
    targets = args.lora_target_modules or None
    return IA3Config(
        task_type=task_type,
        target_modules=targets,
        modules_to_save=head_modules(model),
        feedforward_modules=[] if targets else None,
    )


PEFT_METHODS: dict[str, Callable[[AdapterArguments, torch.nn.Module, TaskType], PeftConfig]] = {
    "lora": _lora_config,
    "ia3": _ia3_config,
}


def config_from_file(path: str, model: torch.nn.Module, task_type: TaskType) -> PeftConfig:
    """A peft config from JSON/YAML (`peft_type` names the method); the head is added to modules_to_save."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--peft_config_file {path}: no such file")
    values = yaml.safe_load(file.read_text()) if file.suffix in (".yaml", ".yml") else json.loads(file.read_text())
    if not isinstance(values, dict) or "peft_type" not in values:
        raise ConfigError(f"--peft_config_file {path}: expected a mapping with a 'peft_type' field (e.g. LORA, IA3)")
    values.setdefault("task_type", task_type)
    values["modules_to_save"] = sorted(set(values.get("modules_to_save") or []) | set(head_modules(model)))
    try:
        return PeftConfig.from_peft_type(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--peft_config_file {path}: {err}") from err


def apply_adapter(model: torch.nn.Module, args: AdapterArguments, task_kind: str, base_model: str) -> PeftModel:
    """Wrap `model` with the configured adapter; only adapter weights and the head stay trainable.

    `base_model` is the id the user gave (e.g. a Hub id), recorded in adapter_config.json instead
    of the local folder it resolved to, so the saved adapter reloads anywhere.
    """
    task_type = PEFT_TASK_TYPES[task_kind]
    if args.peft_config_file:
        config = config_from_file(args.peft_config_file, model, task_type)
    else:
        config = PEFT_METHODS[args.peft](args, model, task_type)
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base_model
    return peft_model


def encoder_adapter_config(args: AdapterArguments, encoder: torch.nn.Module) -> PeftConfig:
    """The configured adapter for a bare encoder (the multi-task model's heads live outside it)."""
    if args.peft_config_file:
        config = config_from_file(args.peft_config_file, encoder, TaskType.FEATURE_EXTRACTION)
    else:
        config = PEFT_METHODS[args.peft](args, encoder, TaskType.FEATURE_EXTRACTION)
    config.modules_to_save = None
    config.task_type = None
    return config


def merge_adapter(model: PeftModel) -> torch.nn.Module:
    """A plain transformers model with the adapter folded into the weights (the original is left as is)."""
    import copy

    return copy.deepcopy(model).merge_and_unload()


LoraArgs = AdapterArguments  # the name before it covered every peft method; kept so old imports work
