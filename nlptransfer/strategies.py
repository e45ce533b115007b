"""Classic transfer strategies as options of the recipes: frozen-encoder feature extraction (with a
feature cache), freezing the bottom layers, gradual unfreezing (ULMFiT), layer-wise learning-rate
decay, L2-SP, and the gradient-reversal layer of adversarial domain adaptation.

Everything works on *layer groups*: the model's parameters bottom-up as
`[embeddings, layer 0, ..., layer L-1, head]`, found by name (`...layer.<i>...`) inside the
pretrained encoder, so BERT, MPNet, RoBERTa, their LoRA-wrapped forms and `MultiTaskModel` all
split the same way. The head group is everything outside the encoder (task heads, loss weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from nlptransfer.encoders import encoder_module, layer_groups
from nlptransfer.errors import ConfigError
from nlptransfer.sharding import numel


def freeze(model: nn.Module, encoder: bool = False, bottom_layers: int = 0, word_embeddings: bool = False) -> int:
    """Stop gradients to the whole encoder (`encoder=True`: feature extraction, only heads train), to
    the embeddings and the bottom `bottom_layers` layers, and/or to the token embedding matrix alone
    (`word_embeddings=True`). Returns how many parameters froze."""
    groups = layer_groups(model)
    if bottom_layers > len(groups) - 2:
        raise ConfigError(f"--freeze_layers {bottom_layers}: the encoder has only {len(groups) - 2} layers")
    frozen = groups[:-1] if encoder else groups[: bottom_layers + 1] if bottom_layers else []
    if word_embeddings:
        frozen = [*frozen, [encoder_module(model).get_input_embeddings().weight]]
    count = 0
    for params in frozen:
        for param in params:
            count += numel(param) if param.requires_grad else 0
            param.requires_grad_(False)
    if encoder:  # a feature extractor: no dropout inside it, so its features are a function of the input
        for module in encoder_module(model).modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return count


def optimizer_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    lr_decay: float | None = None,
    head_learning_rate: float | None = None,
):
    """AdamW parameter groups per layer group (key `layer_group`, 0 = embeddings), biases and norms
    without weight decay. With `lr_decay`, each group's LR is the one above it times `lr_decay`:
    the head gets `learning_rate`, the top layer `learning_rate * lr_decay`, ..., the embeddings
    `learning_rate * lr_decay ** (L + 1)`. `head_learning_rate` replaces the head's LR (not the others')."""
    groups = layer_groups(model)
    named = {id(p): n for n, p in model.named_parameters()}
    result = []
    for depth, params in enumerate(groups):
        scale = lr_decay ** (len(groups) - 1 - depth) if lr_decay else 1.0
        lr = head_learning_rate if head_learning_rate and depth == len(groups) - 1 else learning_rate * scale
        trainable = [p for p in params if p.requires_grad]
        no_decay = [p for p in trainable if p.ndim < 2 or "norm" in named.get(id(p), "").lower()]
        decay = [p for p in trainable if all(p is not q for q in no_decay)]
        for chunk, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if chunk:
                result.append({"params": chunk, "weight_decay": wd, "lr": lr, "layer_group": depth})
    return result


def gradual_unfreezing(scheduler, every: int) -> None:
    """ULMFiT's gradual unfreezing on a `LambdaLR` scheduler: the head trains from the start, then one
    more layer group every `every` scheduler steps, top down. A frozen group's LR is 0, which leaves
    its weights exactly unchanged (AdamW scales both the update and the weight decay by the LR);
    requires_grad is not touched, so DDP's gradient hooks stay valid. Warm-up and decay still follow
    the base schedule. `every` counts scheduler steps (optimizer steps x processes under accelerate)."""
    base = scheduler.lr_lambdas[0]
    num_groups = 1 + max(group["layer_group"] for group in scheduler.optimizer.param_groups)

    def gated(start: int) -> Callable[[int], float]:
        return lambda step: base(step) if step >= start else 0.0

    scheduler.lr_lambdas = [
        gated((num_groups - 1 - group["layer_group"]) * every) for group in scheduler.optimizer.param_groups
    ]
    for group, lr_lambda in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = group["initial_lr"] * lr_lambda(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


class L2SP:
    """L2-SP (Li, Grandvalet & Davoine, ICML 2018): `beta * sum ||w - w0||^2` over the trainable
    encoder weights, w0 their values when the term is built (the pretrained weights). New heads are
    not pulled toward anything. w0 lives on the weights' own device and dtype. Use as a Trainer loss
    term: `term(model, batch, outputs)`."""

    def __init__(self, model: nn.Module, beta: float):
        self.beta = beta
        self.params = [p for group in layer_groups(model)[:-1] for p in group if p.requires_grad]
        if not self.params:
            raise ConfigError("--l2sp_beta: no trainable encoder weights to regularise (frozen encoder or adapters)")
        self.anchors = [p.detach().clone() for p in self.params]

    def penalty(self) -> torch.Tensor:
        return self.beta * sum((p - a).pow(2).sum() for p, a in zip(self.params, self.anchors))

    def __call__(self, model=None, batch=None, outputs=None) -> torch.Tensor:
        return self.penalty()


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


class GradientReversal(nn.Module):
    """Identity forward, gradient times `-strength` backward (Ganin & Lempitsky, ICML 2015)."""

    def __init__(self, strength: float = 1.0):
        super().__init__()
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GradientReversal.apply(x, self.strength)


def grl_schedule(progress: float, gamma: float = 10.0) -> float:
    """DANN's warm-up of the reversal strength: 2 / (1 + exp(-gamma p)) - 1, p the training progress in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class FeatureCache:
    """Memoise a frozen encoder's outputs per input row, so feature extraction encodes each distinct
    text once: later epochs (and evaluation of the same texts) train the head on stored features.

    Installed by replacing the encoder's `forward` on the instance (the state dict and module tree
    are unchanged); `remove()` puts it back. Rows are keyed by their unpadded token ids (and token
    type ids); outputs come back right-padded with zeros past each row's attention mask. Only valid
    when the encoder is frozen with dropout off (`freeze(model, encoder=True)`)."""

    def __init__(self, encoder: nn.Module):
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("FeatureCache needs a frozen encoder (freeze(model, encoder=True) first)")
        self.encoder, self.original = encoder, encoder.forward
        self.store: dict[bytes, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.hits = self.misses = 0
        encoder.forward = self.forward

    def remove(self) -> None:
        del self.encoder.forward  # the class's method again
        self.store.clear()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        extra = {k: v for k, v in kwargs.items() if v is not None and k not in ("return_dict",)}
        if input_ids is None or extra:  # inputs_embeds, position_ids, ...: nothing to key on
            return self.original(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(1).tolist()
        keys = []
        for i, length in enumerate(lengths):
            key = input_ids[i, :length].cpu().numpy().tobytes()
            if token_type_ids is not None:
                key += b"|" + token_type_ids[i, :length].cpu().numpy().tobytes()
            keys.append(key)
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        missing = sorted(i for key, i in first.items() if key not in self.store)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            rows = torch.tensor(missing, device=input_ids.device)
            width = max(lengths[i] for i in missing)
            with torch.no_grad():
                out = self.original(
                    input_ids=input_ids[rows, :width],
                    attention_mask=attention_mask[rows, :width],
                    token_type_ids=None if token_type_ids is None else token_type_ids[rows, :width],
                )
            pooled = getattr(out, "pooler_output", None)
            for j, i in enumerate(missing):
                self.store[keys[i]] = (
                    out.last_hidden_state[j, : lengths[i]].clone(),
                    None if pooled is None else pooled[j].clone(),
                )
        hidden = [self.store[key][0] for key in keys]
        states = hidden[0].new_zeros(len(keys), input_ids.shape[1], hidden[0].shape[-1])
        for i, h in enumerate(hidden):
            states[i, : h.shape[0]] = h
        pooled = [self.store[key][1] for key in keys]
        return BaseModelOutputWithPooling(
            last_hidden_state=states, pooler_output=None if pooled[0] is None else torch.stack(pooled)
        )


def apply_strategies(model: nn.Module, transfer) -> FeatureCache | None:
    """Freeze what `transfer` (TransferArguments) asks for, before the optimizer is built; returns the
    feature cache when the encoder is frozen and caching is on."""
    if transfer.freeze != "none" or transfer.freeze_layers:
        freeze(
            model,
            encoder=transfer.freeze == "encoder",
            bottom_layers=transfer.freeze_layers,
            word_embeddings=transfer.freeze == "word_embeddings",
        )
    # private top layers (multi-task) start from what the encoder hands its layers, which cached outputs skip
    if transfer.freeze == "encoder" and transfer.cache_features and not getattr(model, "private", None):
        return FeatureCache(encoder_module(model))
    return None
