"""Knowledge distillation: a fine-tuned teacher's soft targets (and states) teach a smaller student.

    teacher = load_teacher("runs/trec")                               # fine-tuned, LoRA or multi-task run
    student = student_from_teacher(teacher.task_model(), [0, 2, 4])   # 3 of its layers, weights copied
    model = DistillationModel(student, alpha=0.5, temperature=2.0)    # the loss mix, for `fit`

| module | owns |
|---|---|
| `arguments` | `DistillArguments` (the recipe's options) |
| `teacher` | `Teacher` and how each kind of run folder loads as one |
| `student` | students cut from teacher layers, or another pretrained encoder |
| `losses` | soft-target, hidden-state and attention losses (registries) |
| `model` | `DistillationModel`, `MultiTaskDistillation` (born-again multi-task), their collator |
| `targets` | the teacher's logits on the training rows, computed once and cached; transfer sets |
"""

from nlptransfer.distill.arguments import DistillArguments
from nlptransfer.distill.losses import HIDDEN_LOSSES, SOFT_TARGET_LOSSES, kd_loss, parse_layer_map
from nlptransfer.distill.model import DistillationModel, DistillCollator, MultiTaskDistillation
from nlptransfer.distill.student import build_student, same_vocabulary, student_from_teacher
from nlptransfer.distill.targets import (
    TeacherTargets,
    cached_teacher_targets,
    read_transfer_set,
    teacher_labelled_features,
)
from nlptransfer.distill.teacher import (
    TEACHER_LOADERS,
    Teacher,
    load_task_teacher,
    load_teacher,
    task_model_from_multitask,
)

__all__ = [
    "HIDDEN_LOSSES",
    "SOFT_TARGET_LOSSES",
    "TEACHER_LOADERS",
    "DistillArguments",
    "DistillCollator",
    "DistillationModel",
    "MultiTaskDistillation",
    "Teacher",
    "TeacherTargets",
    "build_student",
    "cached_teacher_targets",
    "kd_loss",
    "load_task_teacher",
    "load_teacher",
    "parse_layer_map",
    "read_transfer_set",
    "same_vocabulary",
    "student_from_teacher",
    "task_model_from_multitask",
    "teacher_labelled_features",
]
