"""`DistillArguments`: what `recipes/distill.py` takes besides the model, data and run arguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from nlptransfer.distill.losses import HIDDEN_LOSSES, SOFT_TARGET_LOSSES, parse_layer_map
from nlptransfer.errors import ConfigError
from nlptransfer.tasks import TASK_KINDS


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
