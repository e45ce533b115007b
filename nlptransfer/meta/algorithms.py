"""Meta-learning algorithms over episodes: first-order MAML and Reptile (`META_ALGORITHMS`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from nlptransfer.meta.episodes import Episode
from nlptransfer.meta.learner import EpisodeLearner, seeded_dropout


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
