"""Teachers: a frozen fine-tuned model (plain, LoRA or one head of a multi-task model) and how each loads.

    teacher = load_teacher("runs/trec")   # fine-tuned folder, LoRA run or multi-task model (--teacher_task)

What the folder is (`runs.run_kind`) decides how it loads (`TEACHER_LOADERS`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from nlptransfer.encoders import encoder_layers
from nlptransfer.errors import ConfigError
from nlptransfer.modeling import load_adapter_model
from nlptransfer.multitask import MultiTaskModel
from nlptransfer.resolve import ModelNotFoundError, resolve_model
from nlptransfer.runs import MULTITASK_FILE, TASK_FILE, multitask_task_names, read_task_info, run_kind
from nlptransfer.tasks import TASK_KINDS, TaskSpec


@dataclass
class TeacherOutput:
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class Teacher:
    """A frozen model in eval mode and what distillation needs to know about it."""

    model: nn.Module  # a task model (PreTrainedModel) or a MultiTaskModel
    tokenizer: PreTrainedTokenizerBase
    spec: TaskSpec  # kind and label names of the head being distilled
    path: str
    source: str  # the TEACHER_LOADERS entry that loaded it
    task: str | None = None  # the head of a multi-task teacher
    base_model: str | None = None

    @property
    def config(self):
        return self.model.encoder.config if isinstance(self.model, MultiTaskModel) else self.model.config

    def task_model(self) -> PreTrainedModel:
        """The teacher as a single-task transformers model (a multi-task teacher's encoder and one head)."""
        if isinstance(self.model, MultiTaskModel):
            return task_model_from_multitask(self.model, self.task)
        return self.model

    def use_eager_attention(self) -> None:
        """Attention maps are only returned by the eager implementation."""
        (self.model.encoder if isinstance(self.model, MultiTaskModel) else self.model).set_attn_implementation("eager")

    @torch.no_grad()
    def __call__(self, inputs: dict, hidden_states: bool = False, attentions: bool = False) -> TeacherOutput:
        inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs}
        flags = {"output_hidden_states": hidden_states, "output_attentions": attentions}
        if not isinstance(self.model, MultiTaskModel):
            out = self.model(**inputs, **flags)
            return TeacherOutput(out.logits, out.hidden_states, out.attentions)
        if not (hidden_states or attentions):
            return TeacherOutput(self.model(**inputs, task=self.task).logits[self.task])
        if self.model.adapter_per_task:
            self.model._activate(self.task)
        mixes = self.task in self.model.layer_mix  # its head reads every layer
        out = self.model.encoder(**inputs, output_hidden_states=hidden_states or mixes, output_attentions=attentions)
        encoded = torch.stack(out.hidden_states) if mixes else out.last_hidden_state
        states = self.model.task_states(self.task, encoded)
        logits = self.model.heads[self.task](states, inputs.get("attention_mask"))
        return TeacherOutput(logits, out.hidden_states if hidden_states else None, out.attentions)

    def check_task(self, spec: TaskSpec) -> None:
        """The student's task must have the teacher's kind of head; it takes the teacher's label names
        (and their order), so the student's outputs line up with the teacher's."""
        mine, theirs = TASK_KINDS[self.spec.kind], TASK_KINDS[spec.kind]
        if (mine.head, mine.has_label_set) != (theirs.head, theirs.has_label_set):
            raise ConfigError(
                f"teacher {self.path} is a {self.spec.kind} model but --task_type is {spec.kind}; "
                f"distil a task of the kind the teacher was trained for"
            )
        spec.labels = list(self.spec.labels)


def _spec_from_config(config, task: dict) -> TaskSpec:
    """Kind and labels from `nlptransfer_task.json`, else from the transformers config itself."""
    kind = task.get("task_type")
    if kind is None:
        architecture = next(iter(config.architectures or []), "")
        kind = "ner" if architecture.endswith("ForTokenClassification") else "classification"
        if getattr(config, "problem_type", None) == "regression":
            kind = "regression"
    labels = task.get("labels")
    if labels is None and TASK_KINDS[kind].has_label_set:
        labels = [config.id2label[i] for i in sorted(config.id2label)]
    return TaskSpec(name="teacher", kind=kind, labels=list(labels or []))


def _no_task(path: Path, task: str | None) -> None:
    if task is not None:
        raise ConfigError(f"--teacher_task {task!r}: teacher {path} is a single-task model; drop --teacher_task")


def _load_model_teacher(path: Path, task: str | None) -> Teacher:
    _no_task(path, task)
    info = read_task_info(path)
    spec = _spec_from_config(AutoConfig.from_pretrained(path), info)
    model = TASK_KINDS[spec.kind].auto_model.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Teacher(model, tokenizer, spec, str(path), "model", base_model=info.get("base_model"))


def _load_adapter_teacher(path: Path, task: str | None) -> Teacher:
    _no_task(path, task)
    info = read_task_info(path)
    if not info:
        raise ConfigError(
            f"teacher {path}: an adapter folder without {TASK_FILE}; was it saved by recipes/finetune.py?"
        )
    model = load_adapter_model(str(path)).merge_and_unload()  # folded in: a plain model, as fast as the base
    spec = _spec_from_config(model.config, info)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Teacher(model, tokenizer, spec, str(path), "adapter", base_model=info.get("base_model"))


def _load_multitask_teacher(path: Path, task: str | None) -> Teacher:
    model = MultiTaskModel.from_pretrained(path)
    if task is None and len(model.task_names) > 1:
        raise ConfigError(
            f"teacher {path} is a multi-task model with tasks {model.task_names}; "
            f"pick the one this data belongs to with --teacher_task"
        )
    task = task or model.task_names[0]
    if task not in model.tasks:
        raise ConfigError(f"--teacher_task {task!r} is not a task of teacher {path}; it has {model.task_names}")
    return Teacher(model, model.tokenizer, model.tasks[task], str(path), "multitask", task, model.base_model)


TEACHER_LOADERS: dict[str, Callable[[Path, str | None], Teacher]] = {
    "multitask": _load_multitask_teacher,
    "adapter": _load_adapter_teacher,
    "model": _load_model_teacher,
}
"""How a teacher loads, by the kind of its run folder (`runs.run_kind`)."""


def load_teacher(name_or_path: str, task: str | None = None) -> Teacher:
    """A frozen teacher in eval mode from a run folder (or an installed model id)."""
    try:
        path = Path(resolve_model(name_or_path))
    except ModelNotFoundError as err:
        raise ConfigError(f"--teacher_name_or_path {name_or_path}: {err}") from err
    if not path.is_dir():
        raise ConfigError(
            f"--teacher_name_or_path {name_or_path}: no such folder; give the output_dir of a fine-tuning, "
            f"LoRA or multi-task run"
        )
    loader = TEACHER_LOADERS.get(run_kind(path))
    if loader is None:
        raise ConfigError(
            f"--teacher_name_or_path {name_or_path}: the folder holds no model (config.json), adapter "
            f"(adapter_config.json) or multi-task model ({MULTITASK_FILE})"
        )
    teacher = loader(path, task)
    teacher.model.eval()
    teacher.model.requires_grad_(False)
    return teacher


def load_task_teacher(name_or_path: str, task: str) -> Teacher:
    """The teacher of task `task` in a multi-task run: a multi-task folder's head named `task` (or its
    only head), else the folder's single-task model."""
    try:
        path = Path(resolve_model(name_or_path))
    except ModelNotFoundError as err:
        raise ConfigError(f"--teachers {task}={name_or_path}: {err}") from err
    if run_kind(path) == "multitask":
        names = multitask_task_names(path)
        return load_teacher(name_or_path, task if task in names or len(names) != 1 else None)
    return load_teacher(name_or_path)


_HEAD_LAYOUTS: dict[str, list[dict[str, str]]] = {
    "sequence": [
        {"dense": "{base}.pooler.dense", "out": "classifier"},  # BERT family: pooler + classifier
        {"dense": "classifier.dense", "out": "classifier.out_proj"},  # RoBERTa, MPNet: classification head
    ],
    "token": [{"out": "classifier"}],
}


def task_model_from_multitask(model: MultiTaskModel, task: str) -> PreTrainedModel:
    """One task of a multi-task model as a plain transformers task model (it loads in a `pipeline`)
    with the same outputs in eval mode: the encoder's weights, and the task head mapped onto the
    task model's own head (`_HEAD_LAYOUTS`)."""
    if model.adapter_config is not None:
        raise ConfigError("a multi-task model with adapters cannot become a plain task model; use --model_name_or_path")
    route = model.routes[task]
    if route.mix is not None:
        raise ConfigError(
            f"task {task!r} reads a mix of the encoder's layers (layer_mix), which a plain task model cannot; "
            "use --model_name_or_path"
        )
    spec = route.spec
    kind = TASK_KINDS[spec.kind]
    config = copy.deepcopy(model.encoder.config)
    for key, value in kind.model_config(spec).items():
        setattr(config, key, value)
    target = kind.auto_model.from_config(config)
    prefix = target.base_model_prefix
    encoder_state = {f"{prefix}.{k}": v for k, v in model.encoder.state_dict().items()}
    if route.private is not None:  # the task's own top layers stand in for the shared ones
        layers = encoder_layers(model.encoder)
        names = {id(module): name for name, module in model.encoder.named_modules()}
        for i, layer in enumerate(route.private, start=len(layers) - len(route.private)):
            encoder_state.update({f"{prefix}.{names[id(layers[i])]}.{k}": v for k, v in layer.state_dict().items()})
    head = route.head
    for layout in _HEAD_LAYOUTS[kind.head]:
        state = dict(encoder_state)
        for source, destination in layout.items():
            for name, value in getattr(head, source).state_dict().items():
                state[f"{destination.format(base=prefix)}.{name}"] = value
        expected = target.state_dict()
        if set(state) == set(expected) and all(state[k].shape == expected[k].shape for k in state):
            target.load_state_dict(state, strict=True)
            return target.eval()
    raise ConfigError(
        f"cannot map the {kind.head} head of task {task!r} onto {type(target).__name__}; "
        f"give the student with --model_name_or_path instead of --student_layers"
    )
