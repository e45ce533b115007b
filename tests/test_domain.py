"""Adversarial domain adaptation: seeded splits, the DANN loss and its reversed gradient, the recipe."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nlptransfer import ConfigError
from nlptransfer.domain import DomainAdversarialModel, information_maximisation, split_domain
from nlptransfer.readers import Records

from conftest import REPO, make_classification_rows, run_script, write_jsonl

RECIPE = str(REPO / "recipes" / "domain_adapt.py")


def test_split_domain_is_seeded_disjoint_and_sized():
    records = Records("d.jsonl", [{"text": str(i), "label": "a"} for i in range(50)], list(range(1, 51)))
    train, test = split_domain(records, 10, seed=0)
    again, _ = split_domain(records, 10, seed=0)
    other, _ = split_domain(records, 10, seed=1)
    assert len(train) == 40 and len(test) == 10
    assert {r["text"] for r in train.rows}.isdisjoint(r["text"] for r in test.rows)
    assert train.rows == again.rows and train.rows != other.rows
    with pytest.raises(ConfigError, match="d.jsonl: --test_size 50 leaves no training rows"):
        split_domain(records, 50, seed=0)


def dann(tiny_model) -> DomainAdversarialModel:
    torch.manual_seed(0)
    return DomainAdversarialModel(AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3), 16)


def test_dann_loss_uses_labelled_rows_and_every_row_for_the_domain(tiny_model):
    model = dann(tiny_model).eval()
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 13, 3], [2, 14, 15, 3], [2, 16, 17, 3]])
    labels, domains = torch.tensor([0, 2, -100, -100]), torch.tensor([0, 0, 1, 1])
    out = model(input_ids=ids, labels=labels, domains=domains)
    plain = model.classifier(input_ids=ids[:2], labels=labels[:2])
    torch.testing.assert_close(out.label_loss, plain.loss)  # target rows add no classifier loss
    torch.testing.assert_close(out.loss, out.label_loss + out.domain_loss)
    assert model(input_ids=ids).logits.shape == (4, 3)  # without domains: the plain classifier


def test_information_maximisation_rewards_confident_and_diverse_predictions():
    mask = torch.tensor([True, True, False])
    confident_diverse = torch.tensor([[9.0, -9.0], [-9.0, 9.0], [0.0, 0.0]])
    confident_one_class = torch.tensor([[9.0, -9.0], [9.0, -9.0], [-9.0, 9.0]])  # the masked-out row is ignored
    unsure = torch.zeros(3, 2)
    assert information_maximisation(confident_diverse, mask) == pytest.approx(-math.log(2), abs=1e-6)
    assert information_maximisation(confident_one_class, mask) == pytest.approx(0.0, abs=1e-6)  # entropy alone: also 0
    assert information_maximisation(unsure, mask) == pytest.approx(0.0, abs=1e-6)
    assert information_maximisation(unsure, torch.zeros(3, dtype=torch.bool)) == 0.0
    # descending it makes predictions confident without collapsing onto one class
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(8, 2) * 0.1 + torch.tensor([0.3, 0.0]))  # all lean to class 0
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(200):
        optimizer.zero_grad()
        information_maximisation(logits, torch.ones(8, dtype=torch.bool)).backward()
        optimizer.step()
    probs = logits.detach().softmax(-1)
    assert probs.max(-1).values.min() > 0.9 and set(probs.argmax(-1).tolist()) == {0, 1}


def test_target_im_term_uses_unlabelled_rows_warmed_up(tiny_model):
    model = dann(tiny_model).eval()
    model.target_im_weight = 0.5
    with torch.no_grad():  # the random tiny model predicts nearly alike for every row: spread its head
        model.classifier.classifier.weight.mul_(100.0)
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 13, 3], [2, 14, 15, 3], [2, 16, 17, 3]])
    labels, domains = torch.tensor([0, 2, -100, -100]), torch.tensor([0, 0, 1, 1])
    probs = model.classifier(input_ids=ids[2:]).logits.softmax(-1)
    marginal = probs.mean(0)
    by_hand = -(probs * probs.log()).sum(-1).mean() + (marginal * marginal.log()).sum()
    model.set_progress(0.0)  # strength 0: the term is off at the start, like the reversal
    out = model(input_ids=ids, labels=labels, domains=domains)
    torch.testing.assert_close(out.im_loss, by_hand)
    torch.testing.assert_close(out.loss, out.label_loss + out.domain_loss)
    model.set_progress(1.0)
    out = model(input_ids=ids, labels=labels, domains=domains)
    torch.testing.assert_close(out.loss, out.label_loss + out.domain_loss + 0.5 * model.grl.strength * by_hand)
    assert by_hand < 0  # the rows differ, so the term is not trivially 0


def test_domain_gradient_reaches_the_encoder_reversed(tiny_model):
    model = dann(tiny_model).eval()
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 13, 3]])
    weight = model.classifier.bert.encoder.layer[1].output.dense.weight

    def encoder_grad(strength: float) -> torch.Tensor:
        model.zero_grad()
        model.grl.strength = strength
        out = model(input_ids=ids, labels=torch.tensor([-100, -100]), domains=torch.tensor([0, 1]))
        torch.nn.functional.cross_entropy(out.domain_logits, torch.tensor([0, 1])).backward()
        return weight.grad.clone(), model.domain_head[0].weight.grad.clone()

    reversed_encoder, head = encoder_grad(1.0)
    plain_encoder, head_again = encoder_grad(-1.0)  # strength -1: the gradient passes unreversed
    assert reversed_encoder.abs().sum() > 0
    torch.testing.assert_close(reversed_encoder, -plain_encoder)
    torch.testing.assert_close(head, head_again)  # the domain classifier itself learns normally
    model.set_progress(0.0)
    assert model.grl.strength == 0.0
    model.set_progress(1.0)
    assert model.grl.strength > 0.99


def test_domain_classifier_can_get_its_own_learning_rate(tiny_model, tmp_path):
    from nlptransfer import TrainArguments
    from nlptransfer.domain import DomainArguments
    from nlptransfer.training import build_optimizer

    files = domain_files(tmp_path)
    assert DomainArguments(files["source"], files["target"]).domain_learning_rate is None  # default: the head's
    with pytest.raises(ConfigError, match="--domain_learning_rate must be positive"):
        DomainArguments(files["source"], files["target"], domain_learning_rate=0.0)
    model = dann(tiny_model)
    args = TrainArguments(output_dir=str(tmp_path / "out"), learning_rate=5e-5)
    optimizer = build_optimizer(model, args, own_lr=[(model.domain_head.parameters(), 5e-4)])  # a generator
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert [lr_of[id(p)] for p in model.domain_head.parameters()] == [5e-4] * 4
    assert {lr_of[id(p)] for p in model.classifier.parameters()} == {5e-5}
    assert len(lr_of) == len(list(model.parameters()))  # every parameter in exactly one group


def domain_files(folder: Path, target_labels: bool = True) -> dict[str, str]:
    source = make_classification_rows(200, 11)
    target = [{**row, "text": row["text"] + " x y z"} for row in make_classification_rows(200, 12)]
    if not target_labels:
        target = [{"text": row["text"]} for row in target]
    return {
        "source": str(write_jsonl(folder / "source.jsonl", source)),
        "target": str(write_jsonl(folder / "target.jsonl", target)),
    }


def run_domain(tiny_model, files, out: Path, *extra: str) -> dict:
    args = ["--model_name_or_path", tiny_model, "--source_file", files["source"], "--target_file", files["target"]]
    args += ["--output_dir", str(out), "--disable_tqdm", "true", "--test_size", "40", "--num_train_epochs", "12"]
    args += ["--learning_rate", "2e-3", "--per_device_train_batch_size", "16", *extra]
    run_script(RECIPE, args)
    return json.loads((out / "all_results.json").read_text())


def test_recipe_dann_trains_scores_the_target_and_saves_a_plain_classifier(tiny_model, tmp_path):
    from transformers import pipeline

    files = domain_files(tmp_path)
    # the toy domains differ by three tokens a 32-wide model can always spot: at full weight the
    # adversary wins and nothing is learned (DANN's known failure), so weight it down here; and plain DANN:
    # information maximisation on this randomly initialised encoder fixes clusters before the labels have
    # taught anything (source validation 0.625); the recipe test below runs it, the unit tests above check it
    flags = ["--method", "dann", "--domain_loss_weight", "0.1", "--target_im_weight", "0"]
    results = run_domain(tiny_model, files, tmp_path / "dann", *flags)
    assert results["method"] == "dann"
    assert results["eval_samples"] == 16 and results["test_samples"] == 40 and results["source_test_samples"] == 40
    assert results["eval_accuracy"] >= 0.8 and results["source_test_accuracy"] >= 0.8  # chance is 1/3
    assert results["train_steps"] == 12 * 10  # 144 source + 160 target rows, batches of 2 x 16
    assert results["dev_risk"] == pytest.approx(results["dev_risk"]) and results["dev_risk"] > 0  # finite
    assert results["dev_error"] < 0.5  # the weighted 0-1 error of a classifier right on >= 80% of validation
    assert 0 < results["dev_ess"] <= 1 and 0 <= results["dev_power"] <= 1
    assert 0 <= results["dev_domain_log_loss"] <= 0.75  # held-out log-loss of the domain labels (ln 2: alike)
    classify = pipeline("text-classification", model=str(tmp_path / "dann"), device="cpu")
    rows = [json.loads(line) for line in Path(files["source"]).read_text().splitlines()]
    predicted = classify([row["text"] for row in rows])
    assert sum(p["label"] == row["label"] for p, row in zip(predicted, rows)) >= 0.8 * len(rows)


def test_recipe_takes_an_unlabelled_target_and_refuses_target_only_without_labels(tiny_model, tmp_path):
    files = domain_files(tmp_path, target_labels=False)
    results = run_domain(tiny_model, files, tmp_path / "dann", "--method", "dann", "--num_train_epochs", "1")
    assert "test_accuracy" not in results and "source_test_accuracy" in results and "dev_error" in results
    with pytest.raises(ConfigError, match="--method target_only needs labels in --target_file"):
        run_domain(tiny_model, files, tmp_path / "ceiling", "--method", "target_only")


# ---- Deep Embedded Validation: choosing settings without target labels ---------------------------
def test_domain_classifier_recovers_a_known_density_ratio():
    from nlptransfer.domain import DomainClassifier

    # source N(0, 1), target N(1, 1) on the first axis, noise elsewhere: p_t / p_s = exp(x - 1/2)
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(4000, 3, generator=generator)
    target = torch.randn(4000, 3, generator=generator)
    target[:, 0] += 1.0
    points = torch.tensor([[-1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [2.0, 0.0, 0.0]])
    ratio = DomainClassifier.fit(source, target).ratio(points)
    torch.testing.assert_close(ratio.log().float(), points[:, 0] - 0.5, atol=0.15, rtol=0)


def test_dev_risk_weights_the_validation_losses_toward_the_target():
    from nlptransfer.domain import dev_risk

    losses = torch.tensor([0.1, 0.2, 1.0, 2.0])
    assert dev_risk(losses, torch.ones(4)) == pytest.approx(float(losses.mean()))  # same domains: the plain mean
    # the target looks like the hard rows: the estimate rises above the plain mean
    assert dev_risk(losses, torch.tensor([0.2, 0.2, 1.8, 1.8])) > float(losses.mean())
    assert dev_risk(losses, torch.tensor([1.8, 1.8, 0.2, 0.2])) < float(losses.mean())
    # near-separable domains give weights over orders of magnitude; the published control-variate form went
    # negative on such weights (-1.32 for a cross-entropy); the self-normalised one stays within the losses
    weights = torch.tensor([4e4, 1e-3, 2e-3, 5.0])
    assert float(losses.min()) <= dev_risk(losses, weights) <= float(losses.max())
    assert dev_risk(losses, 7 * weights) == pytest.approx(dev_risk(losses, weights))  # scale-free


def test_effective_sample_size_and_flattening():
    from nlptransfer.domain import DEV_MIN_ESS, effective_sample_size, flatten_weights

    assert effective_sample_size(torch.ones(10)) == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([1.0] + [0.0] * 9)) == pytest.approx(0.1)  # one text carries it
    even = torch.rand(100, generator=torch.Generator().manual_seed(0)) + 0.5
    flat, power = flatten_weights(even.log())
    assert power == 1.0 and torch.allclose(flat, (even / even.max()).double())  # healthy weights: untouched
    # weights over 8 orders of magnitude, as on near-separable [CLS] states: flattened until ESS >= the floor
    skewed = torch.logspace(-4, 4.6, 160, dtype=torch.float64)
    assert effective_sample_size(skewed) < DEV_MIN_ESS
    flat, power = flatten_weights(skewed.log())
    assert 0 < power < 1 and effective_sample_size(flat) == pytest.approx(DEV_MIN_ESS, abs=1e-3)  # no flatter
    torch.testing.assert_close(flat / flat.sum(), skewed**power / (skewed**power).sum())
    assert flatten_weights(torch.tensor([0.0] + [-1e4] * 9))[1] < 1e-3  # one text carries it: near-equal weights


def test_dev_survives_log_ratios_beyond_floating_point_range(monkeypatch):
    """Separable domains give log-odds in the hundreds: exp() of them overflows float32 at 89 and float64 at 709;
    DEV scales the weights to a maximum of 1 in log space first, so its estimate stays finite and in range."""
    from types import SimpleNamespace

    from nlptransfer import domain

    log_ratio = torch.tensor([900.0, 880.0] + [0.0] * 5 + [-50.0], dtype=torch.float64)
    fitted = SimpleNamespace(log_ratio=lambda points: log_ratio, heldout_log_loss=0.01)
    monkeypatch.setattr(domain.DomainClassifier, "fit", lambda *args, **kwargs: fitted)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]] * 4)  # right, wrong, right, wrong, ... for label 0
    monkeypatch.setattr(domain, "embed", lambda *args, **kwargs: (torch.zeros(8, 3), logits))
    validation = SimpleNamespace(features=[{}] * 8, feature_labels=[0] * 8)
    results = domain.deep_embedded_validation(None, None, validation, validation, validation)
    assert results["dev_ess"] == pytest.approx(1 / 8)  # one text carries the raw weights: flattened to 1/4
    assert 0 < results["dev_power"] < 1 and 0 < results["dev_error"] < 1 and math.isfinite(results["dev_risk"])


def test_domain_classifier_chooses_its_l2_on_held_out_domain_log_loss():
    from nlptransfer.domain import DEV_L2, DomainClassifier, effective_sample_size

    generator = torch.Generator().manual_seed(0)
    source, same = torch.randn(300, 40, generator=generator), torch.randn(300, 40, generator=generator)
    alike = DomainClassifier.fit(source, same)  # one distribution: nothing to tell apart, so the strongest L2
    assert alike.l2 == max(DEV_L2) and alike.heldout_log_loss == pytest.approx(0.693, abs=0.02)
    assert effective_sample_size(alike.ratio(source)) > 0.9
    shifted = torch.randn(300, 40, generator=generator)
    shifted[:, :3] += 3.0  # far apart on three axes: easy to tell apart, a weak L2 fits best
    apart = DomainClassifier.fit(source, shifted)
    assert apart.l2 < max(DEV_L2) and apart.heldout_log_loss < 0.2
    assert apart.components.shape == (40, 16)  # the top 16 principal components of both sets
