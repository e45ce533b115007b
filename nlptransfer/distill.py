"""Knowledge distillation: the arguments, teacher loading, and students built from teacher layers.

    teacher = load_teacher("runs/trec")                     # fine-tuned folder, LoRA run or multi-task model
    student = student_from_teacher(teacher.task_model(), [0, 2, 4])   # 3 of its layers, weights copied

Teachers are loaded by what their folder holds (`TEACHER_LOADERS`); the training-time wrapper that
mixes the losses is `nlptransfer.distill_model.DistillationModel`, the teacher's cached outputs live
in `nlptransfer.teacher_targets`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from nlptransfer.config import ConfigError
from nlptransfer.distill_losses import HIDDEN_LOSSES, SOFT_TARGET_LOSSES, parse_layer_map
from nlptransfer.modeling import TASK_FILE, load_adapter_model, load_model_for_task, load_tokenizer
from nlptransfer.multitask import CONFIG_FILE as MULTITASK_FILE
from nlptransfer.multitask import MultiTaskModel, encoder_layers
from nlptransfer.resolve import ModelNotFoundError, resolve_model
from nlptransfer.strategies import LAYER_PATTERN
from nlptransfer.tasks import TASK_KINDS, TaskSpec


@dataclass
class DistillArguments:
    teacher_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The teacher: output_dir of a fine-tuning run, a LoRA run, or a multi-task run."},
    )
    teacher_task: str | None = field(
        default=None, metadata={"help": "Multi-task teachers: the task (head) whose data this run distils."}
    )
    student_layers: str | None = field(
        default=None,
        metadata={
            "help": "Build the student from these teacher layers, e.g. '0,2,4' (0-based; embeddings, pooler "
            "and head are copied too). Unset: the student is --model_name_or_path."
        },
    )
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T of the soft targets."})
    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the soft-target loss; the gold-label loss gets 1 - alpha (0: labels only)."},
    )
    kd_loss: str | None = field(
        default=None,
        metadata={"help": f"Soft-target loss: {' or '.join(SOFT_TARGET_LOSSES)} (default: kl; mse for regression)."},
    )
    hidden_loss: str = field(
        default="none", metadata={"help": f"Hidden-state matching: none, {', '.join(HIDDEN_LOSSES)}."}
    )
    hidden_weight: float = field(default=1.0, metadata={"help": "Weight of the hidden-state loss."})
    layer_map: str = field(
        default="auto",
        metadata={
            "help": "Student:teacher layer pairs for hidden/attention matching, e.g. '1:2,2:4,3:6' (0 = "
            "embeddings); auto maps uniformly, top onto top."
        },
    )
    attention_weight: float = field(
        default=0.0, metadata={"help": "Weight of attention-map matching (KL per query; 0 turns it off)."}
    )
    cache_teacher: bool = field(
        default=True, metadata={"help": "Store the teacher's logits on disk and reuse them in later runs."}
    )
    teacher_cache_dir: str | None = field(
        default=None, metadata={"help": "Where cached teacher logits go (default: <output_dir>/teacher_cache)."}
    )
    teacher_batch_size: int = field(default=64, metadata={"help": "Batch size of the teacher's inference pass."})
    transfer_file: str | None = field(
        default=None,
        metadata={
            "help": "Unlabelled text for the teacher to label (a transfer set): the student also learns these rows "
            "from the teacher's soft targets alone. Same columns as the training file without labels; NER also "
            "takes plain text in the text column, split into words. Needs --alpha > 0 and cached logits."
        },
    )
    max_transfer_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N rows of --transfer_file."}
    )

    def __post_init__(self):
        if not self.teacher_name_or_path:
            raise ConfigError("give --teacher_name_or_path: the output_dir of a fine-tuning, LoRA or multi-task run")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1] (weight of the soft-target loss), got {self.alpha}")
        if self.kd_loss is not None and self.kd_loss not in SOFT_TARGET_LOSSES:
            raise ConfigError(f"--kd_loss {self.kd_loss!r} is not one of {sorted(SOFT_TARGET_LOSSES)}")
        if self.hidden_loss != "none" and self.hidden_loss not in HIDDEN_LOSSES:
            raise ConfigError(f"--hidden_loss {self.hidden_loss!r} is not one of {['none', *sorted(HIDDEN_LOSSES)]}")
        for name in ("hidden_weight", "attention_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.teacher_batch_size < 1:
            raise ConfigError(f"--teacher_batch_size must be at least 1, got {self.teacher_batch_size}")
        if self.transfer_file and (self.alpha == 0 or self.matches_states):
            raise ConfigError(
                "--transfer_file rows have no labels: they need soft targets (--alpha > 0) from cached teacher "
                "logits (no --hidden_loss / --attention_weight)"
            )
        if self.max_transfer_samples is not None and self.max_transfer_samples < 1:
            raise ConfigError(f"--max_transfer_samples must be at least 1, got {self.max_transfer_samples}")
        parse_layer_map(self.layer_map)  # the syntax; ranges are checked against the models
        self.layers()

    def layers(self) -> list[int] | None:
        """`--student_layers` as a list of teacher layer indices, or None."""
        if self.student_layers is None or not str(self.student_layers).strip():
            return None
        items = [item.strip() for item in str(self.student_layers).split(",")]
        if not all(item.isdigit() for item in items):
            raise ConfigError(f"--student_layers {self.student_layers!r}: expected 0-based layer numbers like '0,2,4'")
        layers = [int(item) for item in items]
        if len(set(layers)) != len(layers):
            raise ConfigError(f"--student_layers {self.student_layers!r}: a layer may be taken once")
        return layers

    def kd_loss_for(self, kind: str) -> str:
        """--kd_loss, or the default of the task kind: KL over classes, MSE for a score (regression)."""
        return self.kd_loss or ("kl" if TASK_KINDS[kind].has_label_set else "mse")

    @property
    def matches_states(self) -> bool:
        """Hidden-state or attention matching is on: the teacher must run live beside the student."""
        return self.hidden_loss != "none" or self.attention_weight > 0


# ---- teachers ---------------------------------------------------------------------------
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


def _task_file(folder: Path) -> dict:
    path = folder / TASK_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


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
    info = _task_file(path)
    spec = _spec_from_config(AutoConfig.from_pretrained(path), info)
    model = TASK_KINDS[spec.kind].auto_model.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Teacher(model, tokenizer, spec, str(path), "model", base_model=info.get("base_model"))


def _load_adapter_teacher(path: Path, task: str | None) -> Teacher:
    _no_task(path, task)
    info = _task_file(path)
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


@dataclass(frozen=True)
class TeacherLoader:
    detect: Callable[[Path], bool]
    load: Callable[[Path, str | None], Teacher]


TEACHER_LOADERS: dict[str, TeacherLoader] = {
    "multitask": TeacherLoader(lambda p: (p / MULTITASK_FILE).is_file(), _load_multitask_teacher),
    "adapter": TeacherLoader(lambda p: (p / "adapter_config.json").is_file(), _load_adapter_teacher),
    "model": TeacherLoader(lambda p: (p / "config.json").is_file(), _load_model_teacher),
}
"""What a teacher folder holds decides how it loads; the first loader that recognises it wins."""


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
    loader = next((loader for loader in TEACHER_LOADERS.values() if loader.detect(path)), None)
    if loader is None:
        raise ConfigError(
            f"--teacher_name_or_path {name_or_path}: the folder holds no model (config.json), adapter "
            f"(adapter_config.json) or multi-task model ({MULTITASK_FILE})"
        )
    teacher = loader.load(path, task)
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
    if (path / MULTITASK_FILE).is_file():
        names = [spec["name"] for spec in json.loads((path / MULTITASK_FILE).read_text()).get("tasks", [])]
        return load_teacher(name_or_path, task if task in names or len(names) != 1 else None)
    return load_teacher(name_or_path)


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a.get_vocab() == b.get_vocab()


# ---- students ---------------------------------------------------------------------------
def _num_layers(model: nn.Module) -> int:
    config = model.encoder.config if isinstance(model, MultiTaskModel) else model.config
    return config.num_hidden_layers


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
    total = _num_layers(teacher_model)
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
    for key in [k for k in state if k.startswith("layer_mix.") and k.endswith(".weights")]:
        state[key] = state[key][[0, *(layer + 1 for layer in layers)]]  # the embeddings' weight, the kept layers'
    student.load_state_dict(state, strict=True)
    return student


# where a multi-task head's layers go in a transformers task model, tried in order
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
    if task in model.layer_mix:
        raise ConfigError(
            f"task {task!r} reads a mix of the encoder's layers (layer_mix), which a plain task model cannot; "
            "use --model_name_or_path"
        )
    spec = model.tasks[task]
    kind = TASK_KINDS[spec.kind]
    config = copy.deepcopy(model.encoder.config)
    for key, value in kind.model_config(spec).items():
        setattr(config, key, value)
    target = kind.auto_model.from_config(config)
    prefix = target.base_model_prefix
    encoder_state = {f"{prefix}.{k}": v for k, v in model.encoder.state_dict().items()}
    if task in model.private:  # the task's own top layers stand in for the shared ones
        layers = encoder_layers(model.encoder)
        names = {id(module): name for name, module in model.encoder.named_modules()}
        for i, layer in enumerate(model.private[task], start=len(layers) - len(model.private[task])):
            encoder_state.update({f"{prefix}.{names[id(layers[i])]}.{k}": v for k, v in layer.state_dict().items()})
    head = model.heads[task]
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


def build_student(teacher: Teacher, layers: list[int] | None, model_args, spec: TaskSpec):
    """(student model, its tokenizer, its base model id): cut from the teacher's layers, or loaded
    from --model_name_or_path with a fresh head."""
    if layers:
        return student_from_teacher(teacher.task_model(), layers), teacher.tokenizer, teacher.base_model or teacher.path
    return load_model_for_task(model_args, spec), load_tokenizer(model_args), model_args.model_name_or_path
