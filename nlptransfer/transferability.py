"""Transferability estimation: rank candidate encoders for a task without fine-tuning any of them.

Each candidate encoder is run once, frozen, over (a sample of) the task's training data; a score of
how well its features already separate the labels stands in for how well it would fine-tune:

- `logme`: LogME (You et al., ICML 2021), the maximum evidence of a Bayesian linear model from the
  features to each one-hot label column, per example, averaged over classes;
- `h_score`: H-score (Bao et al., ICIP 2019), tr(cov(f)^-1 cov(E[f|y])), with the Ledoit-Wolf
  shrunk covariance of Ibrahim et al. (2022) by default.

Candidates are named on a command line as `MODEL[:OPTION,OPTION...]`, MODEL a Hub id or a local
folder (resolved with `resolve_model`), with the options

- `layers=K`: keep only the bottom K transformer layers (`num_hidden_layers=K` config override);
- `random`: the same architecture (after any cut) randomly initialised: a no-pretraining baseline;
- `seed=S`: the seed of that random initialisation (default 0).

For example `sentence-transformers/all-MiniLM-L6-v2:layers=2` or
`sentence-transformers/all-MiniLM-L6-v2:random,seed=1`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel

from nlptransfer.batching import PaddingCollator, eval_dataloader
from nlptransfer.config import ModelArguments
from nlptransfer.data import encode_splits, load_splits
from nlptransfer.encoders import mean_pool
from nlptransfer.errors import ConfigError
from nlptransfer.modeling import load_tokenizer
from nlptransfer.readers import Records
from nlptransfer.resolve import load_error, resolve_model
from nlptransfer.tasks import TASK_KINDS, Encoded, TaskSpec

# ---------------------------------------------------------------------------------------------------------------
# scores: (features [n, d], integer labels [n]) -> float, higher means "expected to transfer better"


def _check_inputs(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array [n, d], got shape {features.shape}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise ValueError(f"labels must be a 1-D array of {len(features)} class ids, got shape {labels.shape}")
    if len(features) < 2:
        raise ValueError(f"need at least 2 examples, got {len(features)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if not np.isfinite(features).all():
        raise ValueError("features hold NaN or infinite values")
    return features, labels


def _spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U [n, k], sigma [k]): the left singular vectors of F with non-zero singular values, and those
    values squared (the non-zero eigenvalues of F^T F); k = rank(F).

    As the reference code does: for n > d the eigendecomposition of the small d x d matrix F^T F
    (U = F V / s), otherwise the thin SVD of F itself."""
    n, d = features.shape
    if n > d:
        eigenvalues, vectors = np.linalg.eigh(features.T @ features)
        eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]  # largest first
        keep = eigenvalues > max(eigenvalues[0], 0.0) * max(n, d) * np.finfo(np.float64).eps * 10
        singular = np.sqrt(eigenvalues[keep])
        return features @ vectors[:, keep] / singular, eigenvalues[keep]
    u, singular, _ = np.linalg.svd(features, full_matrices=False)
    keep = singular > singular[0] * max(n, d) * np.finfo(np.float64).eps
    return u[:, keep], singular[keep] ** 2


class Evidence(NamedTuple):
    """The maximised evidence of one target column: log p(y | F, alpha, beta) / n, and the maximiser."""

    log_evidence: float
    alpha: float
    beta: float


def log_evidence(sigma: np.ndarray, x2: np.ndarray, outside: float, n: int, d: int, alpha: float, beta: float):
    """log p(y | F, alpha, beta) of y = F w + noise, w ~ N(0, I/alpha), noise ~ N(0, I/beta), from the
    spectrum: `sigma` the non-zero eigenvalues of F^T F, `x2` the squared coordinates of y on the
    matching left singular vectors, `outside` the squared norm of the part of y outside F's column
    space. Returns (evidence, |m|^2, |y - F m|^2), m the posterior mean of w."""
    t = alpha / beta
    m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
    res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + outside
    # log|A|, A = alpha I + beta F^T F: d - k of its eigenvalues are alpha itself (directions F never spans)
    log_det = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * math.log(alpha)
    evidence = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - log_det / 2
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )
    return evidence, m2, res2


def logme_evidences(
    features: np.ndarray, targets: np.ndarray, max_iter: int = 100, tol: float = 1e-6, epsilon: float = 1e-5
) -> list[Evidence]:
    """Maximise the evidence of each column of `targets` [n, C] over (alpha, beta) with the fixed-point
    updates of the paper (MacKay's), all in the SVD basis of F:

        gamma = sum_i beta sigma_i / (alpha + beta sigma_i)
        alpha = gamma / |m|^2,   beta = (n - gamma) / |y - F m|^2

    iterated until alpha / beta changes by less than `tol` (relative); `epsilon` keeps both
    denominators away from 0 (as in the reference code). The returned evidence is the exact one at
    the returned (alpha, beta). Where the maximum lies at beta -> infinity (the features fit a column
    exactly, possible when d >= n) `epsilon` stops beta early, a little below the supremum."""
    n, d = features.shape
    u, sigma = _spectrum(features)
    coordinates = u.T @ targets  # [k, C]
    results = []
    for column in range(targets.shape[1]):
        x2 = coordinates[:, column] ** 2
        outside = max(float((targets[:, column] ** 2).sum() - x2.sum()), 0.0)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            _, m2, res2 = log_evidence(sigma, x2, outside, n, d, alpha, beta)
            alpha, beta = gamma / (m2 + epsilon), (n - gamma) / (res2 + epsilon)
            if abs(alpha / beta - t) / t <= tol:
                break
        evidence, _, _ = log_evidence(sigma, x2, outside, n, d, alpha, beta)  # at the final (alpha, beta)
        results.append(Evidence(evidence / n, alpha, beta))
    return results


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): the mean over classes of the maximum log evidence per example of
    a Bayesian linear regression from `features` [n, d] to the class's one-hot column of `labels` [n].

    Float64 and deterministic. The evidence at the fixed point is the exact one: log|A| counts the
    d - rank(F) eigenvalues equal to alpha, which the reference fixed-point code leaves out when
    rank(F) < d (n < d, or rank-deficient features); with rank(F) = d both agree. Classes are those
    present in `labels`. Higher is better; the value is comparable between encoders on the same
    examples, not between tasks."""
    features, labels = _check_inputs(features, labels)
    classes = np.unique(labels)
    targets = (labels[:, None] == classes[None, :]).astype(np.float64)
    return float(np.mean([e.log_evidence for e in logme_evidences(features, targets)]))


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: float | str = "auto") -> float:
    """H-score (Bao et al., ICIP 2019): tr(cov(f)^-1 cov(E[f|y])), between 0 and (classes - 1).

    Covariances are the biased (1/n) ones of the centred features. `shrinkage="auto"` (the default)
    is the shrinkage-based H-score of Ibrahim et al. (2022): cov(f) is replaced by its Ledoit-Wolf
    estimate (1 - s) cov(f) + s tr(cov(f))/d I (scikit-learn's `ledoit_wolf`, s its closed-form
    intensity) and cov(E[f|y]) scaled by (1 - s), which keeps the score meaningful when n is not much
    larger than d (plain H-score reaches its maximum, classes - 1, for any labelling once n <= d + 1).
    Invariant to rotations and a global scale of the features.
    `shrinkage=0.0` is the original H-score with a pseudo-inverse (eigenvalues below 1e-12 of the
    largest are dropped): invariant to any invertible linear map of the features. A float in [0, 1]
    fixes s."""
    features, labels = _check_inputs(features, labels)
    n, d = features.shape
    centered = features - features.mean(axis=0)
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes)).astype(np.float64)
    means = np.zeros((len(classes), d))
    np.add.at(means, inverse, centered)
    means /= counts[:, None]
    between = means.T @ (means * counts[:, None]) / n  # cov(E[f|y]) over the examples
    # imported here: scipy (under sklearn) adds warning filters on import, `import nlptransfer` must not
    from sklearn.covariance import empirical_covariance, ledoit_wolf, shrunk_covariance

    if shrinkage == "auto":
        covariance, shrinkage = ledoit_wolf(centered, assume_centered=True)
    elif isinstance(shrinkage, str) or not 0.0 <= float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}")
    else:
        covariance = shrunk_covariance(empirical_covariance(centered, assume_centered=True), float(shrinkage))
    s = float(shrinkage)
    eigenvalues, vectors = np.linalg.eigh(covariance)
    if eigenvalues[-1] <= 0:
        return 0.0  # constant features: nothing to explain the labels with
    keep = eigenvalues > eigenvalues[-1] * 1e-12
    projected = vectors[:, keep].T @ ((1 - s) * between) @ vectors[:, keep]
    return float(np.trace(projected / eigenvalues[keep][:, None]))


TRANSFERABILITY_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"logme": logme, "hscore": h_score}

# ---------------------------------------------------------------------------------------------------------------
# candidates: a model id or folder, optionally cut to its bottom layers or randomly initialised


class _OnlyUnexpectedKeys(logging.Filter):
    """Drop transformers' load report when all it lists is UNEXPECTED weights (the layers above a cut)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        return any(status in message for status in ("MISSING", "MISMATCH", "ERROR"))


@contextlib.contextmanager
def _layers_above_cut_expected(active: bool):
    if not active:
        yield
        return
    report_logger, quiet = logging.getLogger("transformers.modeling_utils"), _OnlyUnexpectedKeys()
    report_logger.addFilter(quiet)
    try:
        yield
    finally:
        report_logger.removeFilter(quiet)


_OPTIONS_HELP = "layers=K, random, seed=S"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One encoder to rank: `name` (Hub id or folder), optionally cut to `num_hidden_layers` layers
    and/or randomly initialised with `seed`. `Candidate.parse("NAME:layers=2")`; `str()` gives back
    the canonical spelling."""

    name: str
    num_hidden_layers: int | None = None
    random_init: bool = False
    seed: int = 0

    @classmethod
    def parse(cls, text: str | Candidate) -> Candidate:
        """`MODEL[:OPTION,...]` with options `layers=K`, `random`, `seed=S` (Hub ids hold no ':')."""
        if isinstance(text, Candidate):
            return text
        name, sep, options = text.rpartition(":")
        if not sep or not name or "/" in options or "\\" in options:
            return cls(text)
        layers, random_init, seed = None, False, None
        for option in options.split(","):
            key, _, value = option.strip().partition("=")
            if key == "random" and not value:
                random_init = True
            elif key in ("layers", "seed") and value.isdigit():
                if key == "layers":
                    layers = int(value)
                else:
                    seed = int(value)
            else:
                raise ConfigError(f"candidate {text!r}: option {option!r} is not one of {_OPTIONS_HELP}")
        if layers is not None and layers < 1:
            raise ConfigError(f"candidate {text!r}: layers must be at least 1")
        if seed is not None and not random_init:
            raise ConfigError(f"candidate {text!r}: seed=S only applies with random")
        return cls(name, layers, random_init, seed or 0)

    def __str__(self) -> str:
        options = [f"layers={self.num_hidden_layers}"] if self.num_hidden_layers else []
        if self.random_init:
            options += ["random"] + ([f"seed={self.seed}"] if self.seed else [])
        return self.name + (":" + ",".join(options) if options else "")

    def config(self):
        path = resolve_model(self.name)
        try:
            config = AutoConfig.from_pretrained(path)
        except OSError as err:
            raise load_error(self.name, err) from err
        if self.num_hidden_layers is not None:
            total = getattr(config, "num_hidden_layers", None)
            if total is None:
                raise ConfigError(f"candidate {self}: {type(config).__name__} has no num_hidden_layers to cut")
            if self.num_hidden_layers > total:
                raise ConfigError(f"candidate {self}: the model has only {total} layers")
            config.num_hidden_layers = self.num_hidden_layers
        return config

    def load_encoder(self) -> PreTrainedModel:
        """The bare encoder (`AutoModel`), in eval mode: pretrained weights of the kept layers (the
        layers above the cut are not loaded), or a seeded random initialisation of the same shape."""
        config = self.config()
        if self.random_init:
            with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
                torch.manual_seed(self.seed)
                model = AutoModel.from_config(config)
        else:
            path = resolve_model(self.name)
            try:
                with _layers_above_cut_expected(self.num_hidden_layers is not None):
                    model = AutoModel.from_pretrained(path, config=config)
            except OSError as err:
                raise load_error(self.name, err) from err
        return model.eval()

    def load_tokenizer(self):
        return load_tokenizer(ModelArguments(model_name_or_path=self.name))

    def save(self, folder: str | Path) -> Path:
        """Save the (cut / random) encoder and its tokenizer with `save_pretrained`, so that any recipe
        can start from the folder (`--model_name_or_path FOLDER`)."""
        folder = Path(folder)
        self.load_encoder().save_pretrained(folder)
        self.load_tokenizer().save_pretrained(folder)
        return folder


# ---------------------------------------------------------------------------------------------------------------
# features: one vector per example (classification) or per word (NER)


@torch.inference_mode()
def extract_features(
    model: str | Candidate | PreTrainedModel,
    encoded: Encoded,
    kind: str = "classification",
    *,
    batch_size: int = 32,
    pad_token_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen-encoder features and their labels: (float32 [n, hidden], int64 [n]).

    `encoded` must come from `encode_splits` with this model's tokenizer; `model` is a loaded encoder
    (`AutoModel`) or a candidate name (see the module docstring). Eval mode, no gradients, batches
    padded to their longest member (longest first, as in evaluation).

    - kinds with a "sequence" head (classification, pair_classification): the mean of the last
      hidden states over the attention mask. Not the [CLS] vector: sentence-transformers models such
      as all-MiniLM-L6-v2 were trained with mean pooling, so their [CLS] state is not a sentence
      summary, and a cut or random encoder has no trained [CLS] either; the mean is a fair summary for
      every candidate.
    - "token" heads (ner): one vector per word, the hidden state of its first sub-token (the position
      the tagger predicts from), labelled with the word's tag; positions labelled -100 (later
      sub-tokens, special tokens) are skipped. Rows follow the feature order, words in order.
    """
    task_kind = TASK_KINDS[kind]
    if not task_kind.has_label_set:
        raise ConfigError(f"transferability scores need class labels; task kind {kind!r} has none")
    if not isinstance(model, torch.nn.Module):
        model = Candidate.parse(model).load_encoder()
    model.eval()
    if pad_token_id is None:
        pad_token_id = getattr(model.config, "pad_token_id", None) or 0
    accepted = set(inspect.signature(model.forward).parameters)
    loader = eval_dataloader(encoded.features, batch_size, PaddingCollator(pad_token_id))
    by_index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for batch in loader:
        index = batch.pop("feature_index").tolist()
        labels = batch.pop("labels")
        inputs = {key: value for key, value in batch.items() if key in accepted}
        hidden = model(**inputs).last_hidden_state.float()
        if task_kind.head == "sequence":
            pooled = mean_pool(hidden, batch["attention_mask"])
            for i, row, label in zip(index, pooled.numpy(), labels.numpy()):
                by_index[i] = (row[None, :], np.asarray([label]))
        else:
            for i, states, row_labels in zip(index, hidden, labels):
                keep = row_labels != -100
                by_index[i] = (states[keep].numpy(), row_labels[keep].numpy())
    order = sorted(by_index)
    width = model.config.hidden_size
    features = np.concatenate([by_index[i][0] for i in order]) if order else np.zeros((0, width), np.float32)
    labels = np.concatenate([by_index[i][1] for i in order]) if order else np.zeros(0, np.int64)
    return features.astype(np.float32), labels.astype(np.int64)


def candidate_features(
    candidate: str | Candidate, records: Records, spec: TaskSpec, *, max_length: int = 128, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize `records` with the candidate's tokenizer (`encode_splits`: validated, label set from
    these records unless `spec.labels` is set) and extract its frozen features."""
    candidate = Candidate.parse(candidate)
    tokenizer = candidate.load_tokenizer()
    encoded = encode_splits({"train": records}, spec, tokenizer, max_length)["train"]
    return extract_features(
        candidate.load_encoder(), encoded, spec.kind, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id
    )


# ---------------------------------------------------------------------------------------------------------------
# ranking


class RankedModel(NamedTuple):
    candidate: str
    score: float
    seconds: float


def _check_scores(scores: Sequence[str]) -> None:
    unknown = [name for name in scores if name not in TRANSFERABILITY_SCORES]
    if unknown:
        raise ConfigError(f"unknown score {unknown[0]!r}; choose one of {', '.join(TRANSFERABILITY_SCORES)}")


def load_examples(data_args, max_examples: int | None = None) -> tuple[Records, TaskSpec]:
    """The training records of `data_args` (a `DataArguments`), the first `max_examples` of them
    (sentences for NER), and the task spec."""
    data_args = dataclasses.replace(
        data_args, validation_file=None, test_file=None, validation_split_percentage=0, max_train_samples=max_examples
    )
    return load_splits(data_args, seed=0)["train"], TaskSpec.from_data_args(data_args)


def score_candidates(
    candidates: Sequence[str | Candidate],
    data_args,
    scores: Sequence[str] = ("logme",),
    max_examples: int | None = 1000,
    batch_size: int = 32,
) -> list[dict]:
    """Every score of every candidate on the same training examples, in candidate order: dicts with
    `candidate`, one key per score, `num_features`, `feature_dim`, `extract_seconds` (loading,
    tokenizing, the forward passes) and `seconds` (that plus computing the scores)."""
    _check_scores(scores)
    parsed = [Candidate.parse(c) for c in candidates]
    records, spec = load_examples(data_args, max_examples)
    if not TASK_KINDS[spec.kind].has_label_set:
        raise ConfigError(f"transferability scores need class labels; --task_type {spec.kind} has none")
    rows = []
    for candidate in parsed:
        start = time.perf_counter()
        features, labels = candidate_features(
            candidate, records, spec, max_length=data_args.max_seq_length, batch_size=batch_size
        )
        row = {
            "candidate": str(candidate),
            "num_features": int(features.shape[0]),
            "feature_dim": int(features.shape[1]),
            "extract_seconds": time.perf_counter() - start,
        }
        for name in scores:
            row[name] = TRANSFERABILITY_SCORES[name](features, labels)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return rows


def rank_models(
    candidates: Sequence[str | Candidate],
    data_args,
    score: str = "logme",
    max_examples: int | None = 1000,
    batch_size: int = 32,
) -> list[RankedModel]:
    """Rank `candidates` for the task of `data_args` (a `DataArguments`: train file, task type,
    columns, max_seq_length) by `score` on its first `max_examples` training examples: a list of
    (candidate, score, seconds), best first; seconds include loading and feature extraction."""
    rows = score_candidates(candidates, data_args, [score], max_examples, batch_size)
    ranked = [RankedModel(row["candidate"], row[score], row["seconds"]) for row in rows]
    return sorted(ranked, key=lambda r: -r.score)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two score lists (`scipy.stats.kendalltau`, its default
    variant): (concordant - discordant) / sqrt((pairs - pairs tied in x) (pairs - pairs tied in y));
    NaN when either list is constant."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")  # undefined; scipy would say so with a warning
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


__all__ = [
    "Candidate",
    "Evidence",
    "RankedModel",
    "TRANSFERABILITY_SCORES",
    "candidate_features",
    "extract_features",
    "h_score",
    "kendall_tau_b",
    "load_examples",
    "logme",
    "logme_evidences",
    "rank_models",
    "score_candidates",
]
