"""`MetaArguments`: what `recipes/meta.py` takes besides the model and the run (`RunArguments`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nlptransfer.errors import ConfigError
from nlptransfer.meta.algorithms import META_ALGORITHMS, MetaAlgorithm
from nlptransfer.meta.episodes import ClassPool, EpisodeSampler
from nlptransfer.meta.learner import HEAD_INITS, INNER_OPTIMIZERS, EpisodeLearner


@dataclass
class MetaArguments:
    """What `recipes/meta.py` takes besides the model and the run (`RunArguments`): the data, the class
    split, the episodes and the algorithm. Meta-training keeps no checkpoints; a killed run starts again."""

    train_file: str | None = field(
        default=None, metadata={"help": "Labelled rows (.jsonl/.json/.csv/.tsv); their classes are split below."}
    )
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column_name: str = field(
        default="label", metadata={"help": "Column holding the class to meta-learn over (TREC: fine_label)."}
    )
    meta_test_classes: float = field(
        default=0.4,
        metadata={
            "help": "Classes held out of meta-training for meta-testing: a fraction in (0, 1) or a number of "
            "classes. Never seen in meta-training."
        },
    )
    meta_val_classes: float = field(
        default=0,
        metadata={
            "help": "Classes also held out of meta-training, to choose settings on (meta-validation): a fraction "
            "in (0, 1) of the classes left after the meta-test split, or a number. 0: none."
        },
    )
    class_split_seed: int = field(default=0, metadata={"help": "Seed of the class split."})
    n_way: int = field(default=5, metadata={"help": "Classes per episode (N)."})
    k_shot: int = field(default=5, metadata={"help": "Support rows per class and episode (K)."})
    query: int = field(
        default=5,
        metadata={"help": "Query rows per class and episode. Classes with fewer than K + query rows are skipped."},
    )
    algorithm: str = field(default="fomaml", metadata={"help": f"Meta-learning algorithm: {sorted(META_ALGORITHMS)}."})
    meta_steps: int = field(default=200, metadata={"help": "Outer (meta) updates."})
    meta_batch_size: int = field(default=4, metadata={"help": "Episodes per meta-update."})
    inner_steps: int = field(default=5, metadata={"help": "Full-batch steps on an episode's support set."})
    inner_lr: float = field(default=1e-4, metadata={"help": "Learning rate of the inner steps."})
    inner_optimizer: str = field(
        default="adamw", metadata={"help": f"Inner-loop optimizer, fresh per episode: {sorted(INNER_OPTIMIZERS)}."}
    )
    outer_lr: float | None = field(
        default=None,
        metadata={
            "help": "Meta learning rate (default per algorithm: fomaml 1e-4 for AdamW; reptile 1.0, the step "
            "towards the mean adapted weights)."
        },
    )
    head_init: str = field(
        default="prototype",
        metadata={"help": f"Per-episode head: {sorted(HEAD_INITS)} (prototype: class means of the support set)."},
    )
    max_seq_length: int = field(default=64, metadata={"help": "Longer texts are truncated (TREC questions: < 40)."})
    eval_episodes: int = field(
        default=0,
        metadata={
            "help": "After training, score this many meta-test episodes (start and result, the same episodes; "
            "reported only, never used to select)."
        },
    )
    finetune_steps: int | None = field(
        default=None, metadata={"help": "Fine-tuning steps per meta-test episode (default: --inner_steps)."}
    )
    finetune_lr: float | None = field(
        default=None, metadata={"help": "Fine-tuning learning rate per meta-test episode (default: --inner_lr)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the meta-batch query accuracy every N meta-steps."})

    def __post_init__(self):
        if not self.train_file:
            raise ConfigError("give --train_file: labelled rows whose classes are split into meta-train and meta-test")
        if self.algorithm not in META_ALGORITHMS:
            raise ConfigError(f"--algorithm {self.algorithm!r} is not one of {sorted(META_ALGORITHMS)}")
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise ConfigError(f"--inner_optimizer {self.inner_optimizer!r} is not one of {sorted(INNER_OPTIMIZERS)}")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"--head_init {self.head_init!r} is not one of {sorted(HEAD_INITS)}")
        if self.n_way < 2:
            raise ConfigError(f"--n_way must be at least 2, got {self.n_way}")
        positive = ("k_shot", "query", "meta_steps", "meta_batch_size", "inner_steps", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_episodes", "finetune_steps"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("inner_lr", "finetune_lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.outer_lr is not None and self.outer_lr < 0:
            raise ConfigError(f"--outer_lr must be >= 0, got {self.outer_lr}")
        test = self.meta_test_classes
        if test <= 0 or (test >= 1 and not float(test).is_integer()):
            raise ConfigError(f"--meta_test_classes must be a fraction in (0, 1) or a whole number, got {test}")
        validation = self.meta_val_classes
        if validation < 0 or (validation >= 1 and not float(validation).is_integer()):
            raise ConfigError(f"--meta_val_classes must be 0, a fraction in (0, 1) or a whole number, got {validation}")
        if self.max_seq_length < 8:
            raise ConfigError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")

    def sampler(self, pool: ClassPool, classes: list[str], seed: int) -> EpisodeSampler:
        """Episodes of this run's shape (N-way, K-shot, query rows) drawn from `classes` of the pool."""
        return EpisodeSampler(pool.subset(classes).class_rows, self.n_way, self.k_shot, self.query, seed)

    def build_algorithm(self, learner: EpisodeLearner) -> MetaAlgorithm:
        return META_ALGORITHMS[self.algorithm](learner, self.inner_steps, self.inner_lr, self.outer_lr)

    @property
    def eval_budget(self) -> tuple[int, float]:
        """(steps, lr) of fine-tuning per meta-test episode."""
        steps = self.inner_steps if self.finetune_steps is None else self.finetune_steps
        return steps, self.inner_lr if self.finetune_lr is None else self.finetune_lr
