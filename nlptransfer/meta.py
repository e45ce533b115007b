"""Meta-learning an encoder over N-way K-shot episodes: first-order MAML and Reptile.

    learner = EpisodeLearner(encoder, pool)                       # pooled features + a fresh head per episode
    algorithm = META_ALGORITHMS["fomaml"](learner, inner_steps=5, inner_lr=1e-4, outer_lr=1e-4)
    algorithm.step([sampler.episode(i) for i in range(4)])       # one meta-step on a meta-batch
    episode_accuracy(learner, episode, steps=10, lr=1e-4)         # fine-tune on the support, score the query

Per episode the encoder (a plain `AutoModel`) gets a fresh N-way linear head on its mean-pooled
output and takes `inner_steps` full-batch steps (AdamW, fresh per episode) on the support set
(Reptile: on all the episode's rows). The head starts from the support set's class means
(`HEAD_INITS["prototype"]`, Proto-MAML): the untrained head already is the nearest-class-mean
classifier, so a few steps at a fine-tuning learning rate refine a working classifier instead of
growing a zero head (`"zero"`, also offered) from nothing; like a zero head it ignores which class
got which label. The meta-parameters are the encoder's weights only: the head lives and dies with
its episode, so what is saved is a normal encoder folder. Episodes and the class split live in
`nlptransfer.episodes`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from nlptransfer.config import ConfigError
from nlptransfer.episodes import ClassPool, Episode
from nlptransfer.training import cpu_cores

META_FILE = "nlptransfer_meta.json"


def prototype_head(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Proto-MAML (Triantafillou et al. 2020): W_k = 2 c_k, b_k = -|c_k|^2, so logit_k = -|x - c_k|^2 + |x|^2
    and the untrained head is the nearest-class-mean classifier."""
    means = torch.stack([features[labels == k].mean(dim=0) for k in range(n_way)])
    return 2 * means, -means.square().sum(dim=1)


def zero_head(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All zeros: every class starts equal, so the arbitrary label order of an episode cannot matter."""
    return features.new_zeros(n_way, features.shape[1]), features.new_zeros(n_way)


HEAD_INITS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]] = {
    "prototype": prototype_head,
    "zero": zero_head,
}

# A fresh optimizer per episode: no state carries over from one episode (or one model) to the next.
INNER_OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], float], torch.optim.Optimizer]] = {
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
}


@contextlib.contextmanager
def seeded_dropout(device: torch.device, seed: int):
    """Dropout masks drawn from `seed`, the global RNG left as it was: an episode trains alike for every start."""
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        yield


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over real tokens (padding masked out), one vector per row."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class EpisodeLearner:
    """An encoder that adapts to one episode at a time: features, a new head, a few optimizer steps.

    Features are the mean of the last hidden states over real tokens: sentence-transformers models
    such as all-MiniLM-L6-v2 were trained with mean pooling, so their [CLS] state is no sentence summary
    (the same choice as `transferability.extract_features`).
    """

    def __init__(self, encoder: nn.Module, pool: ClassPool, head_init: str = "prototype", optimizer: str = "adamw"):
        if head_init not in HEAD_INITS:
            raise ConfigError(f"--head_init {head_init!r} is not one of {sorted(HEAD_INITS)}")
        if optimizer not in INNER_OPTIMIZERS:
            raise ConfigError(f"--inner_optimizer {optimizer!r} is not one of {sorted(INNER_OPTIMIZERS)}")
        self.encoder, self.pool = encoder, pool
        self.head_init, self.optimizer = HEAD_INITS[head_init], INNER_OPTIMIZERS[optimizer]
        self.params = [p for p in encoder.parameters() if p.requires_grad]
        self.device = next(encoder.parameters()).device

    def features(self, rows: Sequence[int]) -> torch.Tensor:
        batch = self.pool.batch(rows, self.device)
        return mean_pool(self.encoder(**batch).last_hidden_state, batch["attention_mask"])

    def labels(self, labels: Sequence[int]) -> torch.Tensor:
        return torch.tensor(labels, device=self.device)

    def new_head(self, episode: Episode) -> nn.Linear:
        self.encoder.eval()
        with torch.no_grad():
            weight, bias = self.head_init(
                self.features(episode.support), self.labels(episode.support_labels), episode.n_way
            )
        head = nn.Linear(weight.shape[1], episode.n_way).to(self.device)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        return head

    def adapt(self, episode: Episode, steps: int, lr: float) -> nn.Linear:
        """A new head, then `steps` full-batch steps of encoder and head on the support set (dropout on).
        Changes the encoder's weights in place: see `snapshot`/`restore`."""
        head = self.new_head(episode)
        if steps == 0:
            return head
        labels = self.labels(episode.support_labels)
        optimizer = self.optimizer([*self.params, *head.parameters()], lr)
        self.encoder.train()
        with seeded_dropout(self.device, episode.seed):
            for _ in range(steps):
                loss = F.cross_entropy(head(self.features(episode.support)), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.encoder.eval()
        return head

    def query_logits(self, episode: Episode, head: nn.Linear) -> torch.Tensor:
        return head(self.features(episode.query))

    def accuracy(self, episode: Episode, head: nn.Linear) -> float:
        self.encoder.eval()
        with torch.no_grad():
            predicted = self.query_logits(episode, head).argmax(dim=-1)
        return (predicted == self.labels(episode.query_labels)).float().mean().item()

    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the encoder's trainable weights (cheaper than deep-copying the model per episode)."""
        return [p.detach().clone() for p in self.params]

    def restore(self, snapshot: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for param, saved in zip(self.params, snapshot):
                param.copy_(saved)


def episode_accuracy(learner: EpisodeLearner, episode: Episode, steps: int, lr: float) -> float:
    """Query accuracy after fine-tuning the current weights on the support set; the weights are put back."""
    start = learner.snapshot()
    try:
        return learner.accuracy(episode, learner.adapt(episode, steps, lr))
    finally:
        learner.restore(start)


def prototype_accuracy(learner: EpisodeLearner, episode: Episode) -> float:
    """Nearest class mean on frozen features (Snell et al. 2017, squared Euclidean): no training at all."""
    learner.encoder.eval()
    with torch.no_grad():
        support, query = learner.features(episode.support), learner.features(episode.query)
    labels = learner.labels(episode.support_labels)
    means = torch.stack([support[labels == k].mean(dim=0) for k in range(episode.n_way)])
    predicted = torch.cdist(query, means).argmin(dim=-1)
    return (predicted == learner.labels(episode.query_labels)).float().mean().item()


class MetaAlgorithm:
    """One meta-step: adapt the meta-weights to each episode of the meta-batch, turn each adapted copy
    into a meta-gradient, and let the outer optimizer apply their mean to the meta-weights.

    `step` reports the meta-batch's mean query loss and accuracy: FOMAML's after adaptation (its outer
    loss); Reptile's before, with the class-mean head (Reptile trains on the query rows too).
    """

    name: ClassVar[str]
    default_outer_lr: ClassVar[float]

    def __init__(self, learner: EpisodeLearner, inner_steps: int, inner_lr: float, outer_lr: float | None = None):
        self.learner, self.inner_steps, self.inner_lr = learner, inner_steps, inner_lr
        self.outer_lr = self.default_outer_lr if outer_lr is None else outer_lr
        self.outer_optimizer = self.make_outer_optimizer(learner.params, self.outer_lr)

    def make_outer_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def episode_update(self, episode: Episode, meta: list[torch.Tensor]) -> tuple[list[torch.Tensor], float, float]:
        """Adapt to `episode` (from the meta-weights `meta`): (meta-gradient per parameter, query loss, accuracy)."""
        raise NotImplementedError

    def step(self, episodes: Sequence[Episode]) -> dict[str, float]:
        learner = self.learner
        meta = learner.snapshot()
        total = [torch.zeros_like(p) for p in meta]
        losses, accuracies = [], []
        for episode in episodes:
            gradient, loss, accuracy = self.episode_update(episode, meta)
            for summed, g in zip(total, gradient):
                summed.add_(g)
            losses.append(loss)
            accuracies.append(accuracy)
            learner.restore(meta)
        for param, summed in zip(learner.params, total):
            param.grad = summed / len(episodes)
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        return {"query_loss": sum(losses) / len(losses), "query_accuracy": sum(accuracies) / len(accuracies)}


def _loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    return F.cross_entropy(logits, labels), (logits.argmax(dim=-1) == labels).float().mean().item()


class FirstOrderMAML(MetaAlgorithm):
    """FOMAML (Finn et al. 2017, sec. 5.2): adapt on the support set; the query-set gradient taken at the
    adapted weights stands in for the gradient at the meta-weights (no second derivatives); AdamW
    applies the meta-batch's mean at --outer_lr."""

    name = "fomaml"
    default_outer_lr = 1e-4  # the fine-tuning recipe's learning rate: the meta-gradient is an ordinary gradient

    def make_outer_optimizer(self, params, lr):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def episode_update(self, episode, meta):
        learner = self.learner
        head = learner.adapt(episode, self.inner_steps, self.inner_lr)
        learner.encoder.train()
        with seeded_dropout(learner.device, episode.seed + 1):
            loss, accuracy = _loss_and_accuracy(
                learner.query_logits(episode, head), learner.labels(episode.query_labels)
            )
        grads = torch.autograd.grad(loss, learner.params, allow_unused=True)  # unused: e.g. BERT's pooler
        learner.encoder.eval()
        return [torch.zeros_like(p) if g is None else g for p, g in zip(learner.params, grads)], loss.item(), accuracy


class Reptile(MetaAlgorithm):
    """Reptile (Nichol et al. 2018): adapt on all the episode's labelled rows (support and query: there
    is no outer loss to keep them for), then meta += outer_lr * mean(adapted - meta), applied as plain
    SGD on the 'gradient' meta - adapted, so --outer_lr 1 with one episode lands on the adapted weights.

    Not the support set alone: with the class-mean head a 1-shot support set is already fitted (each
    row is its class mean), and its steps only push rows apart, which does not transfer to new classes.
    """

    name = "reptile"
    default_outer_lr = 1.0  # move all the way to the mean of the adapted weights of the meta-batch

    def make_outer_optimizer(self, params, lr):
        return torch.optim.SGD(params, lr=lr)

    def episode_update(self, episode, meta):
        learner = self.learner
        with torch.no_grad():  # what the meta-weights can do on this episode before adapting
            head = learner.new_head(episode)
            loss, accuracy = _loss_and_accuracy(
                learner.query_logits(episode, head), learner.labels(episode.query_labels)
            )
        learner.adapt(episode.merged(), self.inner_steps, self.inner_lr)
        return [m - p.detach() for p, m in zip(learner.params, meta)], loss.item(), accuracy


META_ALGORITHMS: dict[str, type[MetaAlgorithm]] = {cls.name: cls for cls in (FirstOrderMAML, Reptile)}


@dataclass
class MetaArguments:
    """Everything `recipes/meta.py` takes besides the model: the data, the class split, the episodes,
    the algorithm and the run. Meta-training keeps no checkpoints; a killed run starts again."""

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
    class_split_seed: int = field(default=0, metadata={"help": "Seed of the meta-train / meta-test class split."})
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
    output_dir: str = field(default="runs/meta", metadata={"help": "Where the encoder folder goes."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty output_dir."})
    seed: int = field(default=42, metadata={"help": "Seed of the episodes, dropout and everything else."})
    cpu_threads: int | None = field(default=None, metadata={"help": "Torch threads on CPU (default: every core)."})
    logging_steps: int = field(default=10, metadata={"help": "Log the meta-batch query accuracy every N meta-steps."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})

    resume_from_checkpoint: ClassVar[None] = None  # read by `check_output_dir`: there is nothing to resume

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
        if self.max_seq_length < 8:
            raise ConfigError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")

    @property
    def eval_budget(self) -> tuple[int, float]:
        """(steps, lr) of fine-tuning per meta-test episode."""
        steps = self.inner_steps if self.finetune_steps is None else self.finetune_steps
        return steps, self.inner_lr if self.finetune_lr is None else self.finetune_lr


def start_meta_run(args: MetaArguments) -> torch.device:
    """Logging, seeds and CPU threads of a meta-learning run (no accelerate: one process, a plain loop)."""
    from transformers import set_seed

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if not torch.cuda.is_available():
        torch.set_num_threads(args.cpu_threads or cpu_cores())
        return torch.device("cpu")
    return torch.device("cuda")
