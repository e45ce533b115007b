"""Multi-source transfer: reuse LoRA adapters trained on other tasks for a new target task.

A source is a LoRA run folder of `recipes/finetune.py --peft lora` (adapter_config.json +
adapter_model.safetensors) on the same base encoder as the target. Its task head is left behind: only
the low-rank updates `s * B @ A` of the encoder's linear layers are read. Two ways to combine them,
both with the sources frozen and only the target's new head (plus, for `learned`, the mixing weights)
training:

- `merge`: one fixed weighted sum folded into the encoder, W + sum_i w_i s_i B_i A_i (weights given or
  uniform). This is exactly peft's `add_weighted_adapter(..., combination_type="cat")` followed by a
  merge, without loading every source as a live peft adapter.
- `learned`: each adapted linear layer outputs base(x) + sum_i softmax(a)_i s_i B_i A_i x with its own
  learned logits `a` (one per source, zero at the start: the uniform mix), so every layer picks its own
  blend of sources (static, input-independent mixing; AdapterFusion, Pfeiffer et al. 2021, uses
  attention over the adapters' outputs instead).

After training, `fold_fusion` folds the learned mix into plain weights, so the saved model is an
ordinary transformers folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from nlptransfer.adapters import head_modules
from nlptransfer.errors import ConfigError

PEFT_PREFIX = "base_model.model."


@dataclass
class FusionArguments:
    source_adapters: list[str] = field(
        default_factory=list,
        metadata={
            "help": "LoRA run folders (recipes/finetune.py --peft lora) on the same base model to transfer from."
        },
    )
    fusion: str = field(
        default="learned",
        metadata={"help": "How to combine --source_adapters: learned (per-layer mixing weights) or merge (fixed)."},
    )
    fusion_weights: list[float] = field(
        default_factory=list, metadata={"help": "With --fusion merge: one weight per source (default: 1/n each)."}
    )

    def __post_init__(self):
        if self.fusion not in FUSION_METHODS:
            raise ConfigError(f"--fusion must be one of {sorted(FUSION_METHODS)}, got {self.fusion!r}")
        if self.fusion_weights and len(self.fusion_weights) != len(self.source_adapters):
            raise ConfigError(
                f"--fusion_weights has {len(self.fusion_weights)} values for {len(self.source_adapters)} "
                "--source_adapters; give one per source"
            )
        if self.fusion_weights and self.fusion != "merge":
            raise ConfigError("--fusion_weights is for --fusion merge; --fusion learned learns them")

    @property
    def enabled(self) -> bool:
        return bool(self.source_adapters)


@dataclass
class SourceAdapter:
    """The low-rank updates of one LoRA run: module name -> (A [r, in], B [out, r]), and s = alpha / r."""

    path: str
    base_model: str | None
    scaling: float
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def delta(self, module: str) -> torch.Tensor:
        a, b = self.deltas[module]
        return self.scaling * (b @ a)


def read_source_adapter(folder: str | Path) -> SourceAdapter:
    """The LoRA updates saved in `folder`; the source's own head (modules_to_save) is not read."""
    folder = Path(folder)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise ConfigError(
            f"--source_adapters {folder}: expected a LoRA run folder with adapter_config.json and "
            "adapter_model.safetensors (from recipes/finetune.py --peft lora)"
        )
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise ConfigError(f"{config_file}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be fused")
    if config.get("use_dora"):
        raise ConfigError(f"{config_file}: DoRA adapters are not supported as fusion sources (use_dora: true)")
    r, alpha = config["r"], config["lora_alpha"]
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ConfigError(f"{config_file}: per-module ranks (rank_pattern/alpha_pattern) are not supported")
    scaling = alpha / r**0.5 if config.get("use_rslora") else alpha / r
    state = load_file(str(weights_file))
    deltas = {}
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix(PEFT_PREFIX)
        deltas[module] = (a.float(), state[key.replace(".lora_A.", ".lora_B.")].float())
    if not deltas:
        raise ConfigError(f"{weights_file}: no LoRA weights (keys ending in .lora_A.weight) found")
    return SourceAdapter(str(folder), config.get("base_model_name_or_path"), scaling, deltas)


def _linear(model: nn.Module, name: str) -> nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"a source adapter adapts {name!r}, which is not a linear layer of the target model")
    return module


def _same_model(a: str, b: str) -> bool:
    """Whether two model names/folders are the same model (an alias and the folder it resolves to are)."""
    from nlptransfer.resolve import resolve_model

    if a == b:
        return True
    try:
        return Path(resolve_model(a)).resolve() == Path(resolve_model(b)).resolve()
    except Exception:  # an id that cannot be resolved here is compared by name only
        return False


def check_sources(model: nn.Module, sources: list[SourceAdapter], base_model: str) -> None:
    """Every source fits the target (same base model, same layer shapes); errors name the one that does not."""
    for source in sources:
        if source.base_model and not _same_model(source.base_model, base_model):
            raise ConfigError(
                f"--source_adapters {source.path} was trained on {source.base_model!r}, the target starts from "
                f"{base_model!r}: LoRA updates only transfer between identical base models"
            )
        for name, (a, b) in source.deltas.items():
            weight = _linear(model, name).weight
            if (b.shape[0], a.shape[1]) != tuple(weight.shape):
                raise ConfigError(
                    f"--source_adapters {source.path}: {name} has shape {tuple(weight.shape)} in the target, "
                    f"the adapter expects {(b.shape[0], a.shape[1])}"
                )


class FusedLoRALinear(nn.Module):
    """base(x) + sum_i softmax(logits)_i * s_i * B_i A_i x over frozen source updates (None where a source
    does not adapt this layer: it then contributes nothing, and its weight still sums to one with the rest)."""

    def __init__(self, base: nn.Linear, updates: list[tuple[torch.Tensor, torch.Tensor, float] | None]):
        super().__init__()
        self.base = base
        self.present = [update is not None for update in updates]
        for i, update in enumerate(updates):
            if update is not None:
                a, b, scaling = update
                device, dtype = base.weight.device, base.weight.dtype
                self.register_buffer(f"lora_A_{i}", a.to(device, dtype), persistent=False)
                self.register_buffer(f"lora_B_{i}", (scaling * b).to(device, dtype), persistent=False)
        self.logits = nn.Parameter(torch.zeros(len(updates), device=base.weight.device))

    def mix(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        weights = self.mix()
        for i, present in enumerate(self.present):
            if present:
                a, b = getattr(self, f"lora_A_{i}"), getattr(self, f"lora_B_{i}")
                out = out + weights[i].to(out.dtype) * ((x @ a.t().to(x.dtype)) @ b.t().to(x.dtype))
        return out

    def folded(self) -> nn.Linear:
        """A plain linear layer with the current mix added to its weight."""
        with torch.no_grad():
            weights = self.mix()
            for i, present in enumerate(self.present):
                if present:
                    a, b = getattr(self, f"lora_A_{i}"), getattr(self, f"lora_B_{i}")
                    self.base.weight += (weights[i] * (b @ a)).to(self.base.weight.dtype)
        return self.base


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _train_only(model: nn.Module, keep: Callable[[str], bool]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name))


def merge_sources(model: nn.Module, sources: list[SourceAdapter], weights: list[float] | None = None) -> dict:
    """Fold sum_i w_i s_i B_i A_i into the target's weights (default w_i = 1/n); only the head trains."""
    weights = list(weights) if weights else [1.0 / len(sources)] * len(sources)
    with torch.no_grad():
        for name in sorted({name for source in sources for name in source.deltas}):
            layer = _linear(model, name)
            for weight, source in zip(weights, sources):
                if name in source.deltas:
                    layer.weight += (weight * source.delta(name)).to(layer.weight.device, layer.weight.dtype)
    heads = head_modules(model)
    _train_only(model, lambda name: name.split(".")[0] in heads)
    return {"fusion": "merge", "fusion_weights": weights}


def learned_fusion(model: nn.Module, sources: list[SourceAdapter], weights: list[float] | None = None) -> dict:
    """Wrap every adapted linear layer in a `FusedLoRALinear`; only the mixing logits and the head train."""
    names = sorted({name for source in sources for name in source.deltas})
    for name in names:
        updates = [(*source.deltas[name], source.scaling) if name in source.deltas else None for source in sources]
        _set_submodule(model, name, FusedLoRALinear(_linear(model, name), updates))
    heads = head_modules(model)
    _train_only(model, lambda name: name.split(".")[0] in heads or name.endswith(".logits"))
    return {"fusion": "learned", "fused_layers": len(names)}


FUSION_METHODS: dict[str, Callable[..., dict]] = {"merge": merge_sources, "learned": learned_fusion}


def apply_fusion(model: nn.Module, args: FusionArguments, base_model: str) -> dict:
    """Read `args.source_adapters` and combine them into `model` (a fresh task model from `base_model`) by
    `args.fusion`; everything but the head (and the mixing weights) is frozen. Returns what was done."""
    sources = [read_source_adapter(folder) for folder in args.source_adapters]
    check_sources(model, sources, base_model)
    info = FUSION_METHODS[args.fusion](model, sources, args.fusion_weights or None)
    return {**info, "fusion_sources": [source.path for source in sources]}


def fusion_weights(model: nn.Module) -> dict[str, list[float]]:
    """The current mix of each fused layer (softmax of its logits), by module name."""
    return {
        name: module.mix().tolist() for name, module in model.named_modules() if isinstance(module, FusedLoRALinear)
    }


def mean_fusion_weights(model: nn.Module) -> list[float] | None:
    """Each source's weight averaged over the fused layers (None when nothing is fused)."""
    mixes = list(fusion_weights(model).values())
    return [sum(column) / len(mixes) for column in zip(*mixes)] if mixes else None


def fold_fusion(model: nn.Module) -> nn.Module:
    """Replace every `FusedLoRALinear` by a plain linear layer holding its current mix (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FusedLoRALinear):
            _set_submodule(model, name, module.folded())
    return model
