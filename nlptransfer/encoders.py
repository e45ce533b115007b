"""Where the pretrained encoder sits inside a model, how its layers split into groups, pooling, CPU threads.

A leaf: it imports nothing of ours. Strategies (freezing, layer-wise LR, L2-SP), distillation (cutting
layers), the multi-task model (private layers) and transferability (pooled features) all ask it.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

LAYER_PATTERN = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
"""The index of a transformer layer in a parameter name (`encoder.layer.3.` in BERT, `layers.3.` elsewhere)."""


def encoder_module(model: nn.Module) -> nn.Module:
    """The pretrained encoder inside a task model, a `PeftModel` or a wrapper such as `MultiTaskModel`.

    A wrapper names the attribute that holds its encoder in a class attribute `encoder_attribute`.
    """
    if hasattr(model, "get_base_model"):  # a PeftModel: the model it wraps
        model = model.get_base_model()
    if attribute := getattr(type(model), "encoder_attribute", None):
        return getattr(model, attribute)
    return getattr(model, "base_model", model)


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (BERT's `encoder.layer`, DistilBERT's `transformer.layer`, ...)."""
    count = encoder.config.num_hidden_layers
    for name, module in encoder.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == count
            and name.rsplit(".", 1)[-1] in ("layer", "layers")
        ):
            return module
    raise ValueError(f"found no list of {count} layers in {type(encoder).__name__}; private_layers needs one")


def num_layers(model: nn.Module) -> int:
    """Transformer layers of the model's encoder (its config's `num_hidden_layers`)."""
    return encoder_module(model).config.num_hidden_layers


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters bottom-up: embeddings (and other shared encoder weights), each encoder layer, then
    the head (everything outside the encoder). The encoder's pooler joins its top layer, and a multi-task
    model's private copies of top layers join the layers they copy."""
    encoder = encoder_module(model)
    indexed: dict[int, list[nn.Parameter]] = {}
    bottom, pooler, seen = [], [], set()
    for name, param in encoder.named_parameters():
        seen.add(id(param))
        match = LAYER_PATTERN.search(name)
        if match:
            indexed.setdefault(int(match.group(1)), []).append(param)
        else:
            (pooler if "pooler" in name else bottom).append(param)
    layers = [indexed[i] for i in sorted(indexed)]
    if layers:
        layers[-1] = layers[-1] + pooler
    else:
        bottom += pooler
    for copies in getattr(model, "private", {}).values():  # a multi-task model's private copies of top layers
        for i, layer in enumerate(copies, start=len(layers) - len(copies)):  # join the layer they copy
            layers[i] = layers[i] + list(layer.parameters())
            seen.update(id(param) for param in layer.parameters())
    head = [param for param in model.parameters() if id(param) not in seen]
    return [bottom, *layers, head]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over real tokens (padding masked out), one vector per row."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
