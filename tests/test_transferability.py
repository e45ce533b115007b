"""Transferability scores (LogME, H-score), frozen-feature extraction, candidates and `rank-models`."""

import json
import math

import numpy as np
import pytest

from nlptransfer.cli import main
from nlptransfer.config import ConfigError, DataArguments
from nlptransfer.tasks import TaskSpec
from nlptransfer.transferability import (
    TRANSFERABILITY_SCORES,
    Candidate,
    candidate_features,
    extract_features,
    h_score,
    kendall_tau_b,
    load_examples,
    logme,
    logme_evidences,
    rank_models,
)

from conftest import make_classification_rows, write_jsonl


def blobs(n: int, d: int, classes: int, separation: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features whose mean depends on the class (`separation` 0: pure noise)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d)) * separation
    return rng.normal(size=(n, d)) + centres[labels], labels


# --- LogME --------------------------------------------------------------------------------------------------


def direct_log_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | alpha, beta) written independently: y ~ N(0, F F^T / alpha + I / beta), w integrated out."""
    n = len(y)
    covariance = features @ features.T / alpha + np.eye(n) / beta
    _, log_det = np.linalg.slogdet(covariance)
    return -0.5 * (log_det + y @ np.linalg.solve(covariance, y) + n * math.log(2 * math.pi))


def brute_force_max(features: np.ndarray, y: np.ndarray) -> float:
    """Max over (log alpha, log beta) by a grid, zoomed in around the best point, again and again."""
    centre, half = np.zeros(2), 12.0
    best = -np.inf
    for _ in range(14):
        grid = np.linspace(-half, half, 17)
        for a in centre[0] + grid:
            for b in centre[1] + grid:
                value = direct_log_evidence(features, y, math.exp(a), math.exp(b))
                if value > best:
                    best, best_point = value, np.array([a, b])
        centre, half = best_point, half / 3
    return best / len(y)


@pytest.mark.parametrize(
    "n, d, separation, duplicate",
    [(80, 6, 1.0, False), (30, 40, 0.5, False), (60, 5, 1.0, True)],
    ids=["n>d", "d>n", "rank-deficient"],
)
def test_logme_equals_the_maximum_of_the_evidence_computed_directly(n, d, separation, duplicate):
    # (with d > n, a class the features fit exactly has its maximum at beta -> infinity, which the
    # fixed point only approaches: these examples keep every maximum inside)
    features, labels = blobs(n, d, 3, separation=separation, seed=n + d)
    if duplicate:  # rank(F) = d < width: the d missing eigenvalues of A are alpha itself
        features = np.concatenate([features, features[:, ::-1] * 2.0], axis=1)
    targets = np.eye(3)[labels]
    evidences = logme_evidences(features, targets)
    for column, found in enumerate(evidences):
        at_fixed_point = direct_log_evidence(features, targets[:, column], found.alpha, found.beta) / n
        assert found.log_evidence == pytest.approx(at_fixed_point, abs=1e-9)
        assert found.log_evidence == pytest.approx(brute_force_max(features, targets[:, column]), abs=1e-6)
    assert logme(features, labels) == pytest.approx(np.mean([e.log_evidence for e in evidences]), abs=1e-12)


@pytest.mark.parametrize("n, d", [(300, 16), (40, 64)])
def test_logme_prefers_informative_features_to_noise(n, d):
    informative, labels = blobs(n, d, 4, separation=1.5)
    noise = np.random.default_rng(1).normal(size=(n, d))
    assert logme(informative, labels) > logme(noise, labels) + 0.1


def test_logme_is_deterministic_and_ignores_class_ids():
    features, labels = blobs(120, 10, 3, separation=1.0)
    renamed = np.array([7, 2, 5])[labels]  # other ids, same partition
    assert logme(features, labels) == logme(features, labels)
    assert logme(features, renamed) == pytest.approx(logme(features, labels), abs=1e-12)
    assert logme(features.astype(np.float32), labels) == pytest.approx(logme(features, labels), abs=1e-6)


def test_scores_reject_bad_inputs():
    features, labels = blobs(20, 4, 2, separation=1.0)
    for score in TRANSFERABILITY_SCORES.values():
        with pytest.raises(ValueError, match="labels"):
            score(features, labels[:-1])
        with pytest.raises(ValueError, match="integer"):
            score(features, labels.astype(float))
        with pytest.raises(ValueError, match="NaN"):
            score(np.full_like(features, np.nan), labels)
    assert set(TRANSFERABILITY_SCORES) == {"logme", "hscore"}


# --- H-score ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shrinkage", ["auto", 0.0])
def test_h_score_higher_for_separable_features_and_bounded(shrinkage):
    separable, labels = blobs(400, 8, 4, separation=3.0)
    noise = np.random.default_rng(2).normal(size=(400, 8))
    high, low = h_score(separable, labels, shrinkage), h_score(noise, labels, shrinkage)
    assert high > 2.0 > 0.2 > low >= 0.0
    assert high <= 3.0 + 1e-9  # at most classes - 1


def test_h_score_invariances():
    features, labels = blobs(300, 6, 3, separation=1.0)
    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(6, 6)))
    mixing = np.random.default_rng(4).normal(size=(6, 6)) + 3 * np.eye(6)  # invertible, not orthogonal
    plain = h_score(features, labels, shrinkage=0.0)
    shrunk = h_score(features, labels)
    # plain H-score: any invertible linear map, and a shift
    assert h_score(features @ mixing + 5.0, labels, shrinkage=0.0) == pytest.approx(plain, rel=1e-8)
    assert h_score(features * np.arange(1, 7), labels, shrinkage=0.0) == pytest.approx(plain, rel=1e-8)
    # shrinkage towards the identity: rotations and a global scale only
    assert h_score(features @ rotation * 10.0, labels) == pytest.approx(shrunk, rel=1e-8)
    assert h_score(features * np.array([1, 1, 1, 1, 1, 50.0]), labels) != pytest.approx(shrunk, rel=1e-3)


def test_plain_h_score_saturates_with_few_examples_and_shrinkage_does_not():
    rng = np.random.default_rng(5)
    features, labels = rng.normal(size=(30, 60)), rng.integers(0, 3, 30)  # n < d, labels unrelated to features
    assert h_score(features, labels, shrinkage=0.0) == pytest.approx(2.0, abs=1e-6)  # classes - 1: meaningless
    assert h_score(features, labels) < 1.0


def test_shrunk_h_score_is_the_ledoit_wolf_formula():
    from sklearn.covariance import LedoitWolf

    features, labels = blobs(50, 30, 3, separation=1.0, seed=6)
    features = features @ np.diag(np.linspace(0.5, 3, 30))
    # written independently: the estimator centres the features itself, the intensity by its closed form
    estimator = LedoitWolf().fit(features)
    centered = features - features.mean(axis=0)
    n, d = centered.shape
    sample = centered.T @ centered / n
    mu = np.trace(sample) / d
    delta = ((sample - mu * np.eye(d)) ** 2).sum() / d
    beta = ((centered**2).sum(axis=1) ** 2).sum() / n - (sample**2).sum()
    intensity = min(beta / (n * d), delta) / delta
    assert 0 < estimator.shrinkage_ < 1 and estimator.shrinkage_ == pytest.approx(intensity, rel=1e-9)
    np.testing.assert_allclose(estimator.covariance_, (1 - intensity) * sample + intensity * mu * np.eye(d))
    one_hot = np.eye(3)[labels]
    class_means = (one_hot.T @ centered) / one_hot.sum(axis=0)[:, None]
    between = class_means.T @ np.diag(one_hot.sum(axis=0) / n) @ class_means
    expected = np.trace(np.linalg.solve(estimator.covariance_, (1 - estimator.shrinkage_) * between))
    assert h_score(features, labels) == pytest.approx(expected, rel=1e-9)
    fixed = 0.25 * np.trace(sample) / d * np.eye(d) + 0.75 * sample
    assert h_score(features, labels, 0.25) == pytest.approx(np.trace(np.linalg.solve(fixed, 0.75 * between)), rel=1e-9)
    with pytest.raises(ValueError, match="shrinkage"):
        h_score(features, labels, 1.5)


def brute_force_tau_b(x, y) -> float:
    """Kendall's tau-b by counting the pairs: (concordant - discordant) / sqrt(untied in x * untied in y)."""
    pairs = [(np.sign(x[i] - x[j]), np.sign(y[i] - y[j])) for i in range(len(x)) for j in range(i + 1, len(x))]
    score = sum(int(dx * dy) for dx, dy in pairs)
    return score / math.sqrt(sum(dx != 0 for dx, _ in pairs) * sum(dy != 0 for _, dy in pairs))


def test_kendall_tau_b():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 6 pairs: (1,2) tied in x; of the rest 4 concordant, 1 discordant -> 3 / sqrt(5 * 6)
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 4, 3]) == pytest.approx(3 / math.sqrt(30))
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3])) and math.isnan(kendall_tau_b([2.0], [1.0]))
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau_b([1, 2], [1, 2, 3])
    rng = np.random.default_rng(8)
    for _ in range(5):  # many ties on both sides
        x, y = rng.integers(0, 4, 12).tolist(), rng.integers(0, 5, 12).tolist()
        assert kendall_tau_b(x, y) == pytest.approx(brute_force_tau_b(x, y), abs=1e-12)


# --- candidates and features --------------------------------------------------------------------------------


def test_candidate_syntax_round_trips_and_rejects_unknown_options():
    assert Candidate.parse("org/model") == Candidate("org/model")
    assert Candidate.parse("org/model:layers=2") == Candidate("org/model", num_hidden_layers=2)
    assert Candidate.parse("org/model:random,seed=3") == Candidate("org/model", random_init=True, seed=3)
    assert Candidate.parse("/tmp/a:b/folder") == Candidate("/tmp/a:b/folder")  # a ':' inside a path is kept
    for text in ("org/model:layers=2", "org/model:layers=4,random", "org/model:random,seed=3", "org/model"):
        assert str(Candidate.parse(text)) == text
    for bad, message in (
        ("org/model:layer=2", "not one of"),
        ("org/model:layers=0", "at least 1"),
        ("org/model:seed=1", "only applies with random"),
    ):
        with pytest.raises(ConfigError, match=message):
            Candidate.parse(bad)


def test_cut_and_random_candidates(tiny_model):
    import torch

    full = Candidate(tiny_model).load_encoder()
    cut = Candidate.parse(f"{tiny_model}:layers=1").load_encoder()
    assert not full.training and not cut.training
    assert cut.config.num_hidden_layers == 1 and len(cut.encoder.layer) == 1
    for name, weight in cut.state_dict().items():  # the kept layers are the pretrained ones
        assert torch.equal(weight, full.state_dict()[name]), name
    random_a = Candidate.parse(f"{tiny_model}:random,seed=1").load_encoder()
    random_b = Candidate.parse(f"{tiny_model}:random,seed=1").load_encoder()
    random_c = Candidate.parse(f"{tiny_model}:random,seed=2").load_encoder()
    weight = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(random_a.state_dict()[weight], random_b.state_dict()[weight])
    assert not torch.equal(random_a.state_dict()[weight], random_c.state_dict()[weight])
    assert not torch.equal(random_a.state_dict()[weight], full.state_dict()[weight])
    with pytest.raises(ConfigError, match="only 2 layers"):
        Candidate.parse(f"{tiny_model}:layers=3").load_encoder()


def test_saved_candidate_reloads_as_a_task_model(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = Candidate.parse(f"{tiny_model}:layers=1").save(tmp_path / "cut")
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    assert model.config.num_hidden_layers == 1
    assert (folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file()
    cut = Candidate.parse(f"{tiny_model}:layers=1").load_encoder()
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, cut.embeddings.word_embeddings.weight)


def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_sequence_features_are_masked_means_whatever_the_batch(tiny_model, tmp_path):
    import torch

    from nlptransfer.data import encode_splits
    from nlptransfer.readers import read_file

    rows = make_classification_rows(30, seed=7)
    for i, row in enumerate(rows):  # lengths differ, so batches hold padding
        row["text"] = " ".join(["the"] * (i % 6) + [row["text"]])
    records = read_file(str(write_jsonl(tmp_path / "texts.jsonl", rows)))
    spec = TaskSpec()
    tokenizer = tiny_tokenizer(tiny_model)
    encoded = encode_splits({"train": records}, spec, tokenizer, 32)["train"]
    encoder = Candidate(tiny_model).load_encoder()
    batched, labels = extract_features(encoder, encoded, "classification", batch_size=7)
    one_by_one, _ = extract_features(encoder, encoded, "classification", batch_size=1)
    assert batched.shape == (len(records), 32) and labels.tolist() == [f["labels"] for f in encoded.features]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)  # padding never leaks into the mean
    first = encoded.features[0]
    with torch.no_grad():
        hidden = encoder(input_ids=torch.tensor([first["input_ids"]])).last_hidden_state[0]
    np.testing.assert_allclose(batched[0], hidden.mean(dim=0).numpy(), atol=1e-5)
    by_name, _ = extract_features(tiny_model, encoded, "classification")  # a name loads the encoder itself
    np.testing.assert_allclose(by_name, batched, atol=1e-5)


def test_ner_features_one_per_word_with_its_tag(tiny_model, tmp_path):
    rows = [
        {"tokens": ["Anna", "visited", "abc", "today", "."], "ner_tags": ["B-PER", "O", "B-LOC", "O", "O"]},
        {"tokens": ["xing", "and", "Bob", "met", "in", "Rome"], "ner_tags": ["B-PER", "O", "B-PER", "O", "O", "B-LOC"]},
        {"tokens": ["Chen"], "ner_tags": ["B-PER"]},
    ]
    path = write_jsonl(tmp_path / "ner.jsonl", rows)
    data_args = DataArguments(task_type="ner", train_file=str(path))
    records, spec = load_examples(data_args)
    features, labels = candidate_features(tiny_model, records, spec, max_length=32)
    words = sum(len(row["tokens"]) for row in rows)
    assert features.shape == (words, 32)
    assert [spec.labels[i] for i in labels] == [tag for row in rows for tag in row["ner_tags"]]
    tokenizer = tiny_tokenizer(tiny_model)
    assert len(tokenizer(rows[0]["tokens"], is_split_into_words=True)["input_ids"]) > len(rows[0]["tokens"]) + 2
    # windows: a short max_length splits sentences, every word still gives exactly one vector
    windowed, _ = candidate_features(tiny_model, records, spec, max_length=8)
    assert windowed.shape == (words, 32)


def test_regression_has_no_transferability_score(tiny_model, tmp_path):
    path = write_jsonl(tmp_path / "reg.jsonl", [{"text": "the match", "label": 0.5}, {"text": "a cake", "label": 1.0}])
    with pytest.raises(ConfigError, match="class labels"):
        rank_models([tiny_model], DataArguments(task_type="regression", train_file=str(path)))


# --- ranking and the CLI ------------------------------------------------------------------------------------


def test_rank_models_sorted_and_scores_match_the_features(tiny_model, cls_files):
    data_args = DataArguments(train_file=cls_files["train"])
    candidates = [tiny_model, f"{tiny_model}:layers=1", f"{tiny_model}:random,seed=3"]
    ranking = rank_models(candidates, data_args, score="hscore", max_examples=60)
    assert sorted(r.candidate for r in ranking) == sorted(candidates)
    assert [r.score for r in ranking] == sorted((r.score for r in ranking), reverse=True)
    assert all(r.seconds > 0 for r in ranking)
    records, spec = load_examples(data_args, 60)
    assert len(records) == 60
    features, labels = candidate_features(f"{tiny_model}:layers=1", records, spec)
    expected = next(r.score for r in ranking if r.candidate.endswith(":layers=1"))
    assert h_score(features, labels) == pytest.approx(expected, rel=1e-9)


def test_cli_rank_models_prints_a_ranking(tiny_model, cls_files, tmp_path, capsys):
    output = tmp_path / "ranking.json"
    models = [tiny_model, f"{tiny_model}:layers=1", f"{tiny_model}:random"]
    argv = ["rank-models", "--models", *models, "--train_file", cls_files["train"], "--max_examples", "80"]
    assert main([*argv, "--output", str(output)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "model", "logme", "seconds"]
    table = [line.split() for line in lines[1:4]]
    assert [row[0] for row in table] == ["1", "2", "3"] and sorted(row[1] for row in table) == sorted(models)
    scores = [float(row[2]) for row in table]
    assert scores == sorted(scores, reverse=True)
    saved = json.loads(output.read_text())
    assert saved["score"] == "logme" and [r["model"] for r in saved["ranking"]] == [row[1] for row in table]
    records, spec = load_examples(DataArguments(train_file=cls_files["train"]), 80)
    assert saved["ranking"][0]["score"] == pytest.approx(
        logme(*candidate_features(saved["ranking"][0]["model"], records, spec)), rel=1e-9
    )


def test_cli_rank_models_ner(tiny_model, ner_files, capsys):
    argv = ["rank-models", "--models", tiny_model, "--task_type", "ner", "--train_file", ner_files["train"]]
    assert main([*argv, "--max_examples", "40", "--score", "hscore"]) == 0
    assert "hscore" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train_file", "no/such/file.jsonl"], "--train_file no/such/file.jsonl: no such file"),
        (["--score", "accuracy"], "--score 'accuracy' is not known; choose one of logme, hscore"),
        (["--task_type", "parsing"], "--task_type 'parsing' is not known"),
        (["--models", "no-such-model-folder"], "could not load model 'no-such-model-folder'"),
        (["--models", "org/model:layer=2"], "not one of layers=K, random, seed=S"),
    ],
    ids=["missing-file", "unknown-score", "unknown-task", "unknown-model", "bad-option"],
)
def test_cli_rank_models_bad_input_exits_2_with_one_line(tiny_model, cls_files, capsys, extra, message):
    argv = ["rank-models", "--models", tiny_model, "--train_file", cls_files["train"], "--max_examples", "20"]
    assert main(argv + extra) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
