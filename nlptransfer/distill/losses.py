"""Distillation losses: soft targets (KL with temperature, or logit MSE), hidden-state and attention
matching, and the teacher-to-student layer map they use.

Every loss averages over the *valid* rows it is given (a boolean `mask` over everything but the last
dimension): padding, later sub-words and positions labelled -100 never dilute it, and whatever an
invalid row holds (NaN included) never reaches the result. A new loss is one function in a registry
(`SOFT_TARGET_LOSSES`, `HIDDEN_LOSSES`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from nlptransfer.errors import ConfigError


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is true; 0 (still in the graph) when none is."""
    if mask is None:
        return values.mean()
    if mask.shape != values.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match values of shape {tuple(values.shape)}")
    mask = mask.bool()
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


def _valid(teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # invalid rows may hold NaN (no teacher prediction): zero them before any arithmetic touches them
    return teacher if mask is None else torch.where(mask.unsqueeze(-1), teacher, 0.0)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)) per row (classes in the last dimension), averaged over valid rows.

    The gradient of the softened KL shrinks as 1/T² (Hinton, Vinyals & Dean 2015); the T² factor
    undoes that, so changing T does not silently reweight the soft term against the gold loss.
    """
    t = _valid(teacher_logits.float(), mask) / temperature
    s = student_logits.float() / temperature
    log_p_teacher, log_p_student = t.log_softmax(-1), s.log_softmax(-1)
    per_row = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return masked_mean(per_row, mask) * temperature**2


def logit_mse(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared difference of the raw logits per row, averaged over valid rows (regression
    teachers; Ba & Caruana 2014 for classifiers). The temperature does not apply."""
    per_row = (student_logits.float() - _valid(teacher_logits.float(), mask)).pow(2).mean(-1)
    return masked_mean(per_row, mask)


SoftTargetLoss = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor | None], torch.Tensor]
SOFT_TARGET_LOSSES: dict[str, SoftTargetLoss] = {"kl": kd_loss, "mse": logit_mse}
"""Student-vs-teacher logit losses, by `--kd_loss` name."""


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference per token (averaged over the width), averaged over valid tokens."""
    return masked_mean((student.float() - teacher.float()).pow(2).mean(-1), mask)


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - cosine similarity per token, averaged over valid tokens (direction only, not scale)."""
    return masked_mean(1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1), mask)


HIDDEN_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"mse": hidden_mse, "cosine": hidden_cosine}
"""Hidden-state matching losses, by `--hidden_loss` name ("none" turns matching off)."""


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) of each query's attention distribution, (batch, heads, query, key) maps,
    averaged over heads and valid query positions (`mask`: batch x query). With different head counts
    the maps are first averaged over heads."""
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    eps = 1e-12
    teacher = teacher.float()
    per_query = (teacher * ((teacher + eps).log() - (student.float() + eps).log())).sum(-1)
    if mask is not None:
        mask = mask.bool().unsqueeze(1).expand_as(per_query)
    return masked_mean(per_query, mask)


def parse_layer_map(
    text: str, student_layers: int | None = None, teacher_layers: int | None = None
) -> list[tuple[int, int]]:
    """(student, teacher) pairs in `hidden_states` numbering: 0 is the embeddings' output, i the output
    of layer i. "auto" maps every student layer uniformly, the top onto the top (3 of 6: 1:2,2:4,3:6);
    otherwise "s:t,s:t". Without the layer counts only the syntax is checked ("auto" gives [])."""
    if text == "auto":
        if student_layers is None or teacher_layers is None:
            return []
        return [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]
    pairs = []
    for item in text.split(","):
        student, _, teacher = item.partition(":")
        if not (student.strip().isdigit() and teacher.strip().isdigit()):
            raise ConfigError(f"--layer_map {text!r}: expected 'auto' or pairs 'student:teacher' such as '1:2,2:4'")
        pairs.append((int(student), int(teacher)))
    for student, teacher in pairs:
        if (
            student_layers is not None
            and teacher_layers is not None
            and (student > student_layers or teacher > teacher_layers)
        ):
            raise ConfigError(
                f"--layer_map {text!r}: pair {student}:{teacher} is out of range; the student has layers 0-"
                f"{student_layers} and the teacher 0-{teacher_layers} (0 = embeddings)"
            )
    if len({student for student, _ in pairs}) != len(pairs):
        raise ConfigError(f"--layer_map {text!r}: each student layer may appear once")
    return pairs
