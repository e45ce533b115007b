"""The student in training: one forward computes its gold-label loss and every distillation loss.

Teacher logits reach the student in the batch (`teacher_logits`, added by `DistillCollator` from
targets computed once, see `nlptransfer.distill.targets`), or from a live teacher when hidden
states or attention maps are matched. All losses are computed inside `forward`, so under DDP every
trainable weight (the hidden-state projections included) takes part in each step, and the Trainer
stays the fine-tuning one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from nlptransfer.batching import PaddingCollator, pad_targets
from nlptransfer.distill.arguments import DistillArguments
from nlptransfer.distill.losses import HIDDEN_LOSSES, SOFT_TARGET_LOSSES, attention_kl, parse_layer_map
from nlptransfer.distill.teacher import Teacher
from nlptransfer.encoders import encoder_module
from nlptransfer.errors import ConfigError


@dataclass
class DistillationOutput(ModelOutput):
    """`loss`: (1 - alpha) gold + alpha soft + weighted hidden and attention terms; the parts detached."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    gold_loss: torch.Tensor | None = None
    soft_loss: torch.Tensor | None = None
    hidden_loss: torch.Tensor | None = None
    attention_loss: torch.Tensor | None = None


class DistillationModel(nn.Module):
    """Wraps a student task model for training. Without labels (evaluation, serving) it is the plain
    student; save `model.student`, which loads like any fine-tuned model.

    The live teacher, when there is one, is deliberately not a submodule: it is not trained, not
    saved in checkpoints, not wrapped by DDP, and the Trainer's `model.train()` never turns its
    dropout on.
    """

    saved_attribute = "student"  # what a run folder holds: the model this wrapper trains (`runs.save_model`)

    @classmethod
    def from_arguments(cls, student: nn.Module, teacher: Teacher, args: DistillArguments, kind: str):
        """The wrapper `args` describe; the teacher stays beside the student only when states are matched
        (`args.matches_states`), else its logits are already in the batches."""
        live = args.matches_states
        layers = (student.config.num_hidden_layers, teacher.config.num_hidden_layers)
        return cls(
            student,
            alpha=args.alpha,
            temperature=args.temperature,
            kd_loss=args.kd_loss_for(kind),
            teacher=teacher if live else None,
            hidden_loss=args.hidden_loss,
            hidden_weight=args.hidden_weight,
            attention_weight=args.attention_weight,
            layer_map=parse_layer_map(args.layer_map, *layers) if live else (),
        )

    def __init__(
        self,
        student: nn.Module,
        alpha: float = 0.5,
        temperature: float = 2.0,
        kd_loss: str = "kl",
        teacher: Teacher | None = None,
        hidden_loss: str = "none",
        hidden_weight: float = 0.0,
        attention_weight: float = 0.0,
        layer_map: Sequence[tuple[int, int]] = (),
    ):
        super().__init__()
        self.student = student
        self._teacher = [teacher] if teacher is not None else []
        self.alpha, self.temperature = alpha, temperature
        self.soft_loss = SOFT_TARGET_LOSSES[kd_loss]
        self.hidden_loss = HIDDEN_LOSSES.get(hidden_loss) if hidden_weight > 0 else None
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.layer_map = list(layer_map)
        if (self.hidden_loss or attention_weight) and teacher is None:
            raise ValueError("hidden-state and attention matching need a live teacher")
        if (self.hidden_loss and not self.layer_map) or (
            attention_weight and not [pair for pair in self.layer_map if min(pair) > 0]
        ):
            raise ConfigError(f"--layer_map {self.layer_map} pairs no layers to match (attention needs layers >= 1)")
        self.projections = nn.ModuleDict()
        if self.hidden_loss is not None:
            width, teacher_width = student.config.hidden_size, teacher.config.hidden_size
            if width != teacher_width:  # learned, trained with the student, dropped after training
                self.projections.update({str(s): nn.Linear(width, teacher_width) for s, _ in self.layer_map})
        if attention_weight:
            student.set_attn_implementation("eager")
            teacher.use_eager_attention()

    @property
    def teacher(self) -> Teacher | None:
        return self._teacher[0] if self._teacher else None

    @property
    def base_model(self) -> nn.Module:
        """The student's encoder: layer-wise optimizer groups split the student, and the head group
        holds its head and the projections."""
        return encoder_module(self.student)

    def forward(self, teacher_logits: torch.Tensor | None = None, **inputs) -> DistillationOutput | ModelOutput:
        labels = inputs.get("labels")
        if labels is None:
            return self.student(**inputs)
        teacher = self.teacher
        want_hidden, want_attention = self.hidden_loss is not None, self.attention_weight > 0
        out = self.student(**inputs, output_hidden_states=want_hidden, output_attentions=want_attention)
        gold = out.loss
        if labels.dtype == torch.long and not (labels != -100).any():  # transfer rows only: no gold loss (not NaN)
            gold = out.logits.sum() * 0.0
        loss, parts = (1.0 - self.alpha) * gold, {"gold_loss": gold.detach()}
        token_level, mask = out.logits.dim() == 3, None
        if teacher is not None:
            self._move_teacher(inputs["input_ids"].device)
            live = teacher(inputs, want_hidden, want_attention)
            teacher_logits = live.logits
            mask = labels != -100 if token_level else None  # first sub-words only, as the gold loss
        elif teacher_logits is not None:
            mask = ~teacher_logits.isnan().any(-1)  # NaN: no teacher prediction for this row/word
        if self.alpha > 0:
            if teacher_logits is None:
                raise ValueError("alpha > 0 needs teacher_logits in the batch (DistillCollator) or a live teacher")
            soft = self.soft_loss(out.logits, teacher_logits, self.temperature, mask)
            loss, parts["soft_loss"] = loss + self.alpha * soft, soft.detach()
        tokens = inputs.get("attention_mask")
        tokens = tokens.bool() if tokens is not None else torch.ones_like(inputs["input_ids"], dtype=torch.bool)
        if want_hidden:
            matched = [
                self.hidden_loss(self._project(s, out.hidden_states[s]), live.hidden_states[t], tokens)
                for s, t in self.layer_map
            ]
            hidden = sum(matched) / len(matched)
            loss, parts["hidden_loss"] = loss + self.hidden_weight * hidden, hidden.detach()
        if want_attention:
            pairs = [(s, t) for s, t in self.layer_map if s > 0 and t > 0]  # 0 is the embeddings: no attention
            matched = [attention_kl(out.attentions[s - 1], live.attentions[t - 1], tokens) for s, t in pairs]
            attention = sum(matched) / len(matched)
            loss, parts["attention_loss"] = loss + self.attention_weight * attention, attention.detach()
        return DistillationOutput(loss=loss, logits=out.logits, **parts)

    def _project(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        key = str(layer)
        return self.projections[key](states) if key in self.projections else states

    def _move_teacher(self, device: torch.device) -> None:
        model = self.teacher.model
        if next(model.parameters()).device != device:
            model.to(device)


class DistillCollator(PaddingCollator):
    """`PaddingCollator`, plus each feature's `teacher_logits` as one tensor: (batch, classes), or
    (batch, width, classes) for token tasks, padded with NaN (no target there)."""

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if "teacher_logits" not in features[0]:
            return super().__call__(features)
        batch = super().__call__([{k: v for k, v in f.items() if k != "teacher_logits"} for f in features])
        batch["teacher_logits"] = pad_targets([f["teacher_logits"] for f in features], batch["input_ids"].shape[1])
        return batch


class MultiTaskDistillation(nn.Module):
    """A `MultiTaskModel` in training, its tasks with a teacher also learning that teacher's soft
    targets (Born-Again Multi-Task Networks, Clark et al. 2019): such a task's loss is
    (1 - alpha) gold + alpha soft, soft the KL (x T^2) to the teacher's cached logits in the batch
    (`teacher_logits`: {task: tensor}, from `MultiTaskCollator`). With `annealing`, alpha falls from 1
    to 0 over training (`set_progress`): the model starts out imitating its single-task teachers and
    ends on the labels. The per-task losses are then weighted as the model weights them. Without
    teacher logits (evaluation) it is the plain model; save `.model`."""

    saved_attribute = "model"  # what a run folder holds: the model this wrapper trains (`runs.save_model`)

    def __init__(self, model: nn.Module, alpha: float = 0.5, temperature: float = 1.0, annealing: bool = True):
        super().__init__()
        self.model = model
        self.alpha, self.temperature, self.annealing = (1.0 if annealing else alpha), temperature, annealing
        self.soft_loss = SOFT_TARGET_LOSSES["kl"]

    @property
    def base_model(self) -> nn.Module:
        return encoder_module(self.model)

    def set_progress(self, progress: float) -> None:
        """Teacher annealing: the soft-target weight is 1 - progress (progress 0 -> 1 over training)."""
        if self.annealing:
            self.alpha = 1.0 - min(max(progress, 0.0), 1.0)

    def forward(self, teacher_logits: dict[str, torch.Tensor] | None = None, **inputs):
        out = self.model(**inputs)
        if not teacher_logits or out.loss is None:
            return out
        mixed = dict(out.losses)
        for name, target in teacher_logits.items():
            if name in mixed:
                soft = self.soft_loss(out.logits[name], target, self.temperature, ~target.isnan().any(-1))
                mixed[name] = (1.0 - self.alpha) * out.losses[name] + self.alpha * soft
        out.loss = self.model.combine_losses(mixed, out.logits)
        return out
