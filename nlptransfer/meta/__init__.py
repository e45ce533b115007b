"""Meta-learning an encoder over N-way K-shot episodes: first-order MAML and Reptile.

    pool = ClassPool.from_records(read_file("train.jsonl"), tokenizer, 64, "text", "fine_label")
    learner = EpisodeLearner(encoder, pool)                       # pooled features + a fresh head per episode
    algorithm = META_ALGORITHMS["fomaml"](learner, inner_steps=5, inner_lr=1e-4, outer_lr=1e-4)
    algorithm.step([sampler.episode(i) for i in range(4)])       # one meta-step on a meta-batch

| module | owns |
|---|---|
| `arguments` | `MetaArguments` (the recipe's options) |
| `episodes` | the class split, `ClassPool`, seeded `EpisodeSampler`, mean and 95% interval |
| `learner` | `EpisodeLearner`: per-episode heads (prototype or zero), inner optimizers, episode accuracy |
| `algorithms` | `MetaAlgorithm`, first-order MAML, Reptile (`META_ALGORITHMS`) |
"""

from nlptransfer.meta.algorithms import META_ALGORITHMS, FirstOrderMAML, MetaAlgorithm, Reptile
from nlptransfer.meta.arguments import MetaArguments
from nlptransfer.meta.episodes import (
    ClassPool,
    Episode,
    EpisodeSampler,
    mean_ci95,
    split_classes,
    split_meta_classes,
)
from nlptransfer.meta.learner import (
    HEAD_INITS,
    INNER_OPTIMIZERS,
    EpisodeLearner,
    episode_accuracy,
    prototype_accuracy,
    prototype_head,
    score_episodes,
    zero_head,
)

__all__ = [
    "HEAD_INITS",
    "INNER_OPTIMIZERS",
    "META_ALGORITHMS",
    "ClassPool",
    "Episode",
    "EpisodeLearner",
    "EpisodeSampler",
    "FirstOrderMAML",
    "MetaAlgorithm",
    "MetaArguments",
    "Reptile",
    "episode_accuracy",
    "mean_ci95",
    "prototype_accuracy",
    "prototype_head",
    "score_episodes",
    "split_classes",
    "split_meta_classes",
    "zero_head",
]
