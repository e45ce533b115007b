"""Adversarial domain adaptation (DANN, Ganin et al. JMLR 2016): a classifier trained on labelled
source data while a domain classifier behind a gradient-reversal layer makes the encoder's features
indistinguishable between source and (unlabelled) target data.

The methods the domain recipe compares are registered in `DOMAIN_METHODS`: which domain's labels
train the classifier, and whether unlabelled target text joins adversarially.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from nlptransfer.batching import Extended
from nlptransfer.errors import ConfigError
from nlptransfer.readers import Records
from nlptransfer.strategies import GradientReversal, grl_schedule


@dataclass(frozen=True)
class DomainMethod:
    labelled: str  # "source" or "target": whose labels train the classifier
    adversarial: bool  # unlabelled target text joins through the domain classifier


DOMAIN_METHODS: dict[str, DomainMethod] = {
    "source_only": DomainMethod(labelled="source", adversarial=False),
    "dann": DomainMethod(labelled="source", adversarial=True),
    "target_only": DomainMethod(labelled="target", adversarial=False),  # in-domain training: the ceiling
}


@dataclass
class DomainArguments:
    source_file: str = field(default=None, metadata={"help": "Labelled source-domain data (.jsonl/.csv/.tsv)."})
    target_file: str = field(
        default=None,
        metadata={"help": "Target-domain data: its train part is used without labels; its test part is scored."},
    )
    method: str = field(default="dann", metadata={"help": f"One of {sorted(DOMAIN_METHODS)}."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the per-domain train/test split."})
    test_size: int = field(default=400, metadata={"help": "Test rows per domain (the literature: 1,600 / 400)."})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Share of the labelled training rows held out for model selection."}
    )
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the label."})
    max_seq_length: int = field(default=256, metadata={"help": "Longer texts are truncated."})
    domain_loss_weight: float = field(
        default=0.03,
        metadata={
            "help": "Weight of the domain classifier's loss (and so of the reversed gradient). The paper's 1.0 "
            "collapsed Amazon books->kitchen to chance with MiniLM. The default 0.03 is provisional: the label-free (DEV) "
            "choice of benchmarks/bench_domain.py replaces it once its five seeds are in (issue #27)."
        },
    )
    grl_gamma: float = field(
        default=10.0, metadata={"help": "Reversal strength warm-up: 2 / (1 + exp(-gamma * progress)) - 1."}
    )
    domain_hidden_size: int = field(default=256, metadata={"help": "Hidden width of the domain classifier MLP."})
    target_im_weight: float = field(
        default=0.3,
        metadata={
            "help": "DANN only: weight of information maximisation on the unlabelled target rows (mean prediction "
            "entropy minus the entropy of the mean prediction: confident and diverse; Krause et al. 2010, SHOT), "
            "warmed up with the reversal strength. 0: plain DANN; with --domain_loss_weight 0 it is IM alone. What "
            "the adversary adds beyond IM, per seed and direction: benchmarks/results/domain.json."
        },
    )
    domain_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "LR of the domain classifier (default: --learning_rate). A new layer often gets 10x the "
            "pretrained encoder's LR; here that made DANN worse (books->kitchen, seed 42: target 0.773 vs 0.818)."
        },
    )

    def __post_init__(self):
        if not self.source_file or not self.target_file:
            raise ConfigError("give --source_file (labelled source domain) and --target_file (target domain)")
        if self.method not in DOMAIN_METHODS:
            raise ConfigError(f"--method {self.method!r} is not one of {sorted(DOMAIN_METHODS)}")
        if self.test_size < 1:
            raise ConfigError(f"--test_size must be at least 1, got {self.test_size}")
        if self.target_im_weight < 0:
            raise ConfigError(f"--target_im_weight must be >= 0, got {self.target_im_weight}")
        if self.domain_learning_rate is not None and self.domain_learning_rate <= 0:
            raise ConfigError(f"--domain_learning_rate must be positive, got {self.domain_learning_rate}")


def split_domain(records: Records, test_size: int, seed: int) -> tuple[Records, Records]:
    """(train, test): a seeded `test_size` rows held out, the same rows for every method and run."""
    if test_size >= len(records):
        raise ConfigError(f"{records.source}: --test_size {test_size} leaves no training rows ({len(records)} in all)")
    indices = list(range(len(records)))
    random.Random(seed).shuffle(indices)
    return records.select(sorted(indices[test_size:])), records.select(sorted(indices[:test_size]))


def has_labels(records: Records, spec) -> bool:
    """Whether every row has a value in the label column (a target file may come without labels)."""
    return all(row.get(spec.label_column) not in (None, "") for row in records.rows)


def unlabelled(records: Records, spec) -> Records:
    """The rows with their label replaced by a placeholder from the label set (files without labels
    pass validation; `batching.without_labels` then masks every one), so no target label can leak."""
    data = records.data.remove_columns([spec.label_column]) if spec.label_column in records.columns() else records.data
    return Records(
        records.source, unit=records.unit, data=data.add_column(spec.label_column, [spec.labels[0]] * len(data))
    )


def with_domain(features, domain: int) -> Extended:
    return Extended(features, domains=domain)


def information_maximisation(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the predictions on the rows in `mask`, minus the entropy of their mean prediction
    (Krause et al. NeurIPS 2010; SHOT, Liang et al. ICML 2020): lower when each prediction is confident
    *and* the batch uses every class. Entropy alone has a trivial minimum, one class for every row
    (measured: kitchen -> books fell from 0.79 to 0.72 with it). 0 when no row is in `mask`."""
    probs = logits.float().softmax(-1) * mask[:, None]
    count = mask.sum().clamp(min=1)
    conditional = -(probs * logits.float().log_softmax(-1)).sum() / count
    marginal = probs.sum(0) / count
    return conditional + (marginal * marginal.clamp(min=1e-12).log()).sum() * (mask.sum() > 0)


@dataclass
class DomainAdversarialOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    label_loss: torch.Tensor | None = None
    domain_loss: torch.Tensor | None = None
    domain_logits: torch.Tensor | None = None
    im_loss: torch.Tensor | None = None


class DomainAdversarialModel(nn.Module):
    """A sequence classifier (any `AutoModelForSequenceClassification`) plus a domain classifier on
    the last layer's first-token state, behind a gradient-reversal layer.

    Training batches mix source rows (labels) and target rows (label -100) with `domains` 0/1; the
    loss is the classifier's cross-entropy over labelled rows plus `domain_loss_weight` times the
    domain cross-entropy over all rows, plus `target_im_weight` (warmed up with the reversal) times the
    information-maximisation loss of the unlabelled rows (`information_maximisation`). Without `domains`
    (evaluation, serving) it is the plain classifier. Only `classifier` is saved as the run's model; the
    domain head is training-only.
    """

    saved_attribute = "classifier"  # what a run folder holds: the model this wrapper trains (`runs.save_model`)

    def __init__(
        self,
        classifier: nn.Module,
        hidden_size: int = 256,
        domain_loss_weight: float = 1.0,
        target_im_weight: float = 0.0,
    ):
        super().__init__()
        self.classifier = classifier
        width = classifier.config.hidden_size
        self.grl = GradientReversal(strength=0.0)
        self.domain_head = nn.Sequential(
            nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden_size, 2)
        )
        self.domain_loss_weight = domain_loss_weight
        self.target_im_weight = target_im_weight

    def set_progress(self, progress: float, gamma: float = 10.0) -> None:
        """DANN's schedule: reversal strength from 0 toward 1 as training progresses."""
        self.grl.strength = grl_schedule(min(max(progress, 0.0), 1.0), gamma)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, domains=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if domains is None:
            return self.classifier(**inputs, labels=labels)
        out = self.classifier(**inputs, output_hidden_states=True)
        labelled = labels != -100
        # mean over labelled rows; a batch with none contributes 0 (and still a graph, for DDP)
        label_loss = F.cross_entropy(out.logits, labels.clamp(min=0), reduction="none")
        label_loss = (label_loss * labelled).sum() / labelled.sum().clamp(min=1)
        domain_logits = self.domain_head(self.grl(out.hidden_states[-1][:, 0]))
        domain_loss = F.cross_entropy(domain_logits, domains)
        im_loss = information_maximisation(out.logits, ~labelled)
        loss = label_loss + self.domain_loss_weight * domain_loss
        if self.target_im_weight:
            loss = loss + self.target_im_weight * self.grl.strength * im_loss
        return DomainAdversarialOutput(
            loss=loss,
            logits=out.logits,
            label_loss=label_loss.detach(),
            domain_loss=domain_loss.detach(),
            domain_logits=domain_logits,
            im_loss=im_loss.detach(),
        )


# ---- model selection without target labels: Deep Embedded Validation -------------------------------
@torch.no_grad()
def embed(model: nn.Module, features: list[dict], collator, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-token states of the last layer, logits) of a sequence classifier on `features`, in order:
    the features the domain classifier sees, and the predictions."""
    model.eval()
    device = next(model.parameters()).device
    states, logits = [], []
    for start in range(0, len(features), batch_size):
        batch = collator(
            [
                {k: v for k, v in f.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                for f in (features[i] for i in range(start, min(start + batch_size, len(features))))
            ]
        )
        out = model(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True)
        states.append(out.hidden_states[-1][:, 0].float().cpu())
        logits.append(out.logits.float().cpu())
    return torch.cat(states), torch.cat(logits)


DEV_DIMS = 16  # principal components of the features the domain classifier sees
DEV_L2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # its L2 strengths, one chosen by held-out domain log-loss
DEV_MIN_ESS = 0.25  # the least effective sample size (share of validation texts) a DEV estimate rests on


@dataclass
class DomainClassifier:
    """A logistic regression that tells target from source features: standardised, projected on the top
    principal components of both sets, with the L2 strength of lowest held-out log-loss (`heldout_log_loss`:
    ln 2 = 0.693 means the domains cannot be told apart, 0 that they are separable)."""

    mean: torch.Tensor
    std: torch.Tensor
    components: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    heldout_log_loss: float
    prior: float  # n_source / n_target: turns the classifier's odds into a density ratio

    @classmethod
    def fit(
        cls, source: torch.Tensor, target: torch.Tensor, dims: int = DEV_DIMS, l2_grid=DEV_L2, folds: int = 5
    ) -> DomainClassifier:
        both = torch.cat([source, target]).double()
        mean, std = both.mean(0), both.std(0).clamp(min=1e-6)
        x = (both - mean) / std
        components = torch.linalg.svd(x, full_matrices=False).Vh[: min(dims, x.shape[1])].T
        x = x @ components
        y = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).double()
        fold = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)) % folds
        heldout = {}
        for l2 in l2_grid:  # k-fold log-loss of the domain labels: no task label takes part
            losses = []
            for k in range(folds):
                w, b = _logistic_regression(x[fold != k], y[fold != k], l2)
                losses.append(F.binary_cross_entropy_with_logits(x[fold == k] @ w + b, y[fold == k], reduction="sum"))
            heldout[l2] = float(sum(losses)) / len(x)
        l2 = min(heldout, key=heldout.get)
        weight, bias = _logistic_regression(x, y, l2)
        return cls(mean, std, components, weight, bias, l2, heldout[l2], len(source) / len(target))

    def log_ratio(self, points: torch.Tensor) -> torch.Tensor:
        """log p_target(x) / p_source(x) at `points`: log prior + the classifier's log-odds (float64)."""
        log_odds = ((points.double() - self.mean) / self.std) @ self.components @ self.weight + self.bias
        return math.log(self.prior) + log_odds

    def ratio(self, points: torch.Tensor) -> torch.Tensor:
        """p_target(x) / p_source(x) at `points`: prior * P(target | x) / P(source | x)."""
        return self.log_ratio(points).exp()


def _logistic_regression(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of an L2-penalised logistic regression (mean log-loss + l2 * |w|^2; L-BFGS)."""
    weight = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(1, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size of importance weights, as a share of their count: 1 for equal weights,
    1/n when one example carries all the weight."""
    weights = weights.double()
    return float(weights.sum() ** 2 / weights.pow(2).sum() / len(weights))


def flatten_weights(log_weights: torch.Tensor, min_ess: float = DEV_MIN_ESS) -> tuple[torch.Tensor, float]:
    """(weights ** power, power), from log importance weights (so none overflows or underflows to 0 before it
    is flattened; scaled to a maximum of 1), with the largest power in [0, 1] that keeps an effective sample
    size of at least `min_ess` (bisection: the ESS of w ** p falls as p grows). Flattened importance weights
    (Shimodaira 2000) trade the estimate's bias for variance where source and target overlap little; power 0
    is equal weights, i.e. the plain source-validation estimate."""
    log_weights = log_weights.double() - log_weights.max()

    def flattened(power: float) -> torch.Tensor:
        return (power * log_weights).exp() if power > 0 else torch.ones_like(log_weights)

    if effective_sample_size(flattened(1.0)) >= min_ess:
        return flattened(1.0), 1.0
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if effective_sample_size(flattened(middle)) >= min_ess else (low, middle)
    return flattened(low), low


def dev_risk(losses: torch.Tensor, weights: torch.Tensor) -> float:
    """Deep Embedded Validation (You et al., ICML 2019): the target risk estimated from labelled *source*
    validation losses weighted by the density ratio, self-normalised (sum(w * loss) / sum(w)). With weights of
    mean 1 DEV's control variate is zero, and the estimate stays within the losses' range: the published
    unnormalised form went negative on near-separable domains. Lower is better; compare it between runs
    (settings, weights) of one source -> target pair."""
    weights = weights.double()
    return float((weights * losses.double()).sum() / weights.sum())


def deep_embedded_validation(
    model: nn.Module, collator, source, target, validation, batch_size: int = 64, min_ess: float = DEV_MIN_ESS
) -> dict[str, float]:
    """DEV estimates of a trained source classifier's target risk: features of the source and target training
    text fit the `DomainClassifier`, whose density ratio at the source validation texts, flattened until their
    effective sample size is at least `min_ess` (`flatten_weights`), weights their (labelled) losses.
    `dev_risk` weights the cross-entropy (DEV as published), `dev_error` the 0-1 error: the cross-entropy also
    charges confidence, so it ranks settings that sharpen predictions (information maximisation) low even
    where they classify the target better; the error does not. Also reported, none reading a target label:
    `dev_ess` (of the unflattened weights), `dev_power` (the flattening: 1 none, 0 plain source validation) and
    `dev_domain_log_loss` (held-out; ln 2 = 0.693 when the domains look alike to the features)."""
    source_states, _ = embed(model, source.features, collator, batch_size)
    target_states, _ = embed(model, target.features, collator, batch_size)
    states, logits = embed(model, validation.features, collator, batch_size)
    labels = torch.tensor(validation.feature_labels)
    domains = DomainClassifier.fit(source_states, target_states)
    log_ratio = domains.log_ratio(states)  # in the hundreds where domains separate: exp() would overflow
    weights, power = flatten_weights(log_ratio, min_ess)
    return {
        "dev_risk": dev_risk(F.cross_entropy(logits, labels, reduction="none"), weights),
        "dev_error": dev_risk((logits.argmax(-1) != labels).float(), weights),
        "dev_ess": effective_sample_size((log_ratio - log_ratio.max()).exp()),
        "dev_power": power,
        "dev_domain_log_loss": domains.heldout_log_loss,
    }
