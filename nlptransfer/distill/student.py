"""Students: a teacher cut down to some of its layers (weights copied), or another pretrained encoder.

student = student_from_teacher(teacher.task_model(), [0, 2, 4])   # 3 of its 6 layers
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModel, PreTrainedTokenizerBase

from nlptransfer.distill.arguments import DistillArguments
from nlptransfer.distill.teacher import Teacher
from nlptransfer.encoders import LAYER_PATTERN, num_layers
from nlptransfer.errors import ConfigError
from nlptransfer.heads import ScalarMix
from nlptransfer.modeling import load_model_for_task, load_tokenizer
from nlptransfer.multitask import MultiTaskModel
from nlptransfer.tasks import TaskSpec


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a.get_vocab() == b.get_vocab()


# ---- students ---------------------------------------------------------------------------
def select_layers(state_dict: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """The state dict with encoder layer `layers[j]` renumbered to j and every other layer dropped;
    weights outside the layers (embeddings, pooler, heads) are kept as they are."""
    position = {layer: j for j, layer in enumerate(layers)}
    selected = {}
    for key, value in state_dict.items():
        match = LAYER_PATTERN.search(key)
        if match is None:
            selected[key] = value.clone()
        elif int(match.group(1)) in position:
            selected[key[: match.start(1)] + str(position[int(match.group(1))]) + key[match.end(1) :]] = value.clone()
    return selected


def student_from_teacher(teacher_model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """The teacher's architecture with only `layers` (0-based teacher numbering, in this order), every
    weight copied exactly: embeddings, the chosen layers, pooler and head(s). A task model gives a task
    model of the same class; a `MultiTaskModel` (without adapters) gives one with all its heads."""
    total = num_layers(teacher_model)
    layers = list(layers)
    bad = [layer for layer in layers if not 0 <= layer < total]
    if not layers or bad:
        raise ConfigError(
            f"--student_layers {','.join(map(str, layers))}: the teacher has layers 0-{total - 1}; "
            f"{'out of range: ' + ', '.join(map(str, bad)) if bad else 'give at least one'}"
        )
    if isinstance(teacher_model, MultiTaskModel):
        if teacher_model.adapter_config is not None or teacher_model.private:
            raise ConfigError(
                "a student cannot be cut from a multi-task teacher with adapters or private layers; "
                "use --model_name_or_path"
            )
        config = copy.deepcopy(teacher_model.encoder.config)
        config.num_hidden_layers = len(layers)
        student = MultiTaskModel(
            AutoModel.from_config(config),
            list(teacher_model.tasks.values()),
            loss_weighting=teacher_model.loss_weighting_name,
            task_weights=teacher_model.task_weights,
            head_dropout=teacher_model.head_dropout,
            base_model=teacher_model.base_model,
            tokenizer=teacher_model.tokenizer,
            layer_mix=list(teacher_model.layer_mix),
        )
    else:
        config = copy.deepcopy(teacher_model.config)
        config.num_hidden_layers = len(layers)
        student = type(teacher_model)(config)
    state = select_layers(teacher_model.state_dict(), layers)
    for name in (name for name, module in teacher_model.named_modules() if isinstance(module, ScalarMix)):
        key = f"{name}.weights"  # a layer mix: the embeddings' weight and the kept layers'
        state[key] = state[key][[0, *(layer + 1 for layer in layers)]]
    student.load_state_dict(state, strict=True)
    return student


# where a multi-task head's layers go in a transformers task model, tried in order
def build_student(teacher: Teacher, args: DistillArguments, model_args, spec: TaskSpec):
    """(student model, its tokenizer, its base model id): cut from the teacher's layers (--student_layers),
    or loaded from --model_name_or_path with a fresh head. Matching states token by token
    (--hidden_loss, --attention_weight) needs the teacher's tokenizer: checked here, before any data is read."""
    if layers := args.layers():
        return student_from_teacher(teacher.task_model(), layers), teacher.tokenizer, teacher.base_model or teacher.path
    tokenizer = load_tokenizer(model_args)
    if args.matches_states and not same_vocabulary(teacher.tokenizer, tokenizer):
        raise ConfigError(
            "--hidden_loss / --attention_weight compare token by token and need the teacher's tokenizer; this "
            "student's differs. Distil logits only, or cut the student from the teacher with --student_layers"
        )
    return load_model_for_task(model_args, spec), tokenizer, model_args.model_name_or_path
