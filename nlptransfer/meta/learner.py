"""The episode learner: a plain encoder's pooled features, a fresh head per episode, its inner loop.

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
`nlptransfer.meta.episodes`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nlptransfer.encoders import mean_pool
from nlptransfer.errors import ConfigError
from nlptransfer.meta.episodes import ClassPool, Episode, EpisodeSampler, mean_ci95


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


def score_episodes(learner: EpisodeLearner, sampler: EpisodeSampler, episodes: int, steps: int, lr: float) -> dict:
    """Mean query accuracy (and its 95% interval) of the sampler's first `episodes` episodes, each
    fine-tuned from the current weights for `steps` steps at `lr`; scored only, the weights stay."""
    mean, ci = mean_ci95([episode_accuracy(learner, sampler.episode(i), steps, lr) for i in range(episodes)])
    return {"accuracy": mean, "accuracy_ci95": ci, "episodes": episodes, "skipped": sampler.skipped}


def prototype_accuracy(learner: EpisodeLearner, episode: Episode) -> float:
    """Nearest class mean on frozen features (Snell et al. 2017, squared Euclidean): no training at all."""
    learner.encoder.eval()
    with torch.no_grad():
        support, query = learner.features(episode.support), learner.features(episode.query)
    labels = learner.labels(episode.support_labels)
    means = torch.stack([support[labels == k].mean(dim=0) for k in range(episode.n_way)])
    predicted = torch.cdist(query, means).argmin(dim=-1)
    return (predicted == learner.labels(episode.query_labels)).float().mean().item()
