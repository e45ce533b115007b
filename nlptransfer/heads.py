"""Task heads on a shared encoder: one registered class per head type (`HEADS`).

A task kind names the head it needs (`TASK_KINDS[kind].head`); a new head type is one class here.
"""

from __future__ import annotations

import torch
from torch import nn


class SequenceHead(nn.Module):
    """One prediction per example: first-token state -> dense + tanh -> dropout -> linear.

    This is BERT's pooler + classifier; the dense layer starts from the checkpoint's pretrained pooler
    when it has one, so a single-task head matches `AutoModelForSequenceClassification`.
    """

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, pooler: nn.Module | None = None):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        pretrained = getattr(pooler, "dense", None)
        if isinstance(pretrained, nn.Linear) and pretrained.weight.shape == self.dense.weight.shape:
            self.dense.load_state_dict(pretrained.state_dict())
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = torch.tanh(self.dense(hidden_states[:, 0]))
        return self.out(self.dropout(pooled))


class TokenHead(nn.Module):
    """One prediction per token: dropout -> linear (as `AutoModelForTokenClassification`)."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, pooler: nn.Module | None = None):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.dropout(hidden_states))


class ScalarMix(nn.Module):
    """A learned softmax-weighted sum of the encoder's layers (embeddings included), times a learned scale:
    ELMo's scalar mix (Peters et al. 2018), per task as in UDify (Kondratyuk & Straka 2019). A task whose head
    reads a mix can draw on lower layers, which the other tasks' gradients bend less than the shared top
    layer. It starts as the plain mean of the layers."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        """`layers`: [num_layers, batch, seq, hidden] -> [batch, seq, hidden]."""
        weights = torch.softmax(self.weights.float(), dim=0).to(layers.dtype)
        return self.scale.to(layers.dtype) * torch.tensordot(weights, layers, dims=1)


class PrivateLayers(nn.ModuleList):
    """A task's own copy of the encoder's top layers, branching off the shared ones below them.

    `attach` hooks the shared layer the copies start at: each encoder pass records what the encoder hands that
    layer (its input states, attention mask, position bias...), and `forward` runs the copies on the same, so
    they work whatever the architecture. `release` drops the recording (it holds the step's graph)."""

    def __init__(self, layers):
        super().__init__(layers)
        self._inputs: tuple | None = None

    def attach(self, shared_layer: nn.Module) -> None:
        shared_layer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._inputs = (args[0], args[1:], kwargs)

    def forward(self) -> torch.Tensor:
        """The top copy's output states [batch, seq, hidden] for the encoder pass just run."""
        if self._inputs is None:
            raise RuntimeError("private layers run after an encoder pass, on what it handed the shared layer")
        hidden, args, kwargs = self._inputs
        for layer in self:
            hidden = layer(hidden, *args, **kwargs)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden

    def release(self) -> None:
        self._inputs = None


HEADS: dict[str, type[nn.Module]] = {"sequence": SequenceHead, "token": TokenHead}


def build_head(kind_head: str, hidden_size: int, num_outputs: int, dropout: float, pooler=None, std: float = 0.02):
    """A fresh head; its output layer initialised like transformers does (normal(0, std), zero bias)."""
    head = HEADS[kind_head](hidden_size, num_outputs, dropout, pooler)
    nn.init.normal_(head.out.weight, std=std)
    nn.init.zeros_(head.out.bias)
    return head
