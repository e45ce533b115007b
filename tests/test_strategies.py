"""Transfer strategies: each does what it says (frozen weights unchanged, LR per layer as configured,
L2-SP zero at start and growing as weights move, gradient sign reversed through the GRL)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, get_scheduler

from nlptransfer import ConfigError, MultiTaskModel, TaskSpec, TrainArguments, TransferArguments, build_optimizer
from nlptransfer.strategies import (
    L2SP,
    FeatureCache,
    GradientReversal,
    apply_strategies,
    freeze,
    gradual_unfreezing,
    grl_schedule,
    layer_groups,
)

from conftest import REPO, VOCAB, recipe_args, run_script

RECIPE = str(REPO / "recipes" / "finetune.py")
FAST = ["--learning_rate", "2e-3", "--per_device_train_batch_size", "16", "--eval_strategy", "no"]


def run_recipe(args: list[str]) -> dict:
    run_script(RECIPE, args)
    return json.loads((Path(args[args.index("--output_dir") + 1]) / "all_results.json").read_text())


def classifier(tiny_model):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3)


def names_of(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_layer_groups_split_bottom_up(tiny_model):
    model = classifier(tiny_model)
    groups = [names_of(model, g) for g in layer_groups(model)]
    assert len(groups) == 4  # embeddings, layer 0, layer 1 (+ pooler), head
    assert all(n.startswith("bert.embeddings.") for n in groups[0])
    assert all(".layer.0." in n for n in groups[1])
    assert all(".layer.1." in n or "pooler" in n for n in groups[2]) and any("pooler" in n for n in groups[2])
    assert groups[3] == {"classifier.weight", "classifier.bias"}
    assert sum(len(g) for g in groups) == len(list(model.parameters()))

    mtl = MultiTaskModel.from_encoder(tiny_model, [TaskSpec(name="a", kind="classification", labels=["x", "y"])])
    head = names_of(mtl, layer_groups(mtl)[-1])
    assert head and all(n.startswith(("routes.a.head.", "loss_weighting.")) for n in head)
    tasks = [TaskSpec(name="a", kind="classification", labels=["x", "y"]), TaskSpec(name="b", kind="ner", labels=["O"])]
    mtl = MultiTaskModel.from_encoder(tiny_model, tasks, private_layers={"b": 1})
    groups = [names_of(mtl, g) for g in layer_groups(mtl)]
    assert {n for n in groups[2] if n.startswith("routes.b.private.")} == {
        n for n, _ in mtl.named_parameters() if "private" in n
    }
    assert not any(".private." in n for g in (groups[1], groups[3]) for n in g)  # with the layer it copies
    assert sum(len(g) for g in groups) == len(list(mtl.parameters()))
    # feature extraction freezes the private copies with the encoder, and caches nothing (the copies need the
    # inputs the encoder hands its layers, which cached outputs would skip)
    assert apply_strategies(mtl, TransferArguments(freeze="encoder")) is None
    assert {n for n, p in mtl.named_parameters() if p.requires_grad} == {n for n in groups[-1]}


def test_layerwise_lr_decay_gives_each_layer_the_lr_above_times_decay(tiny_model):
    model = classifier(tiny_model)
    optimizer = build_optimizer(model, TrainArguments(learning_rate=1e-3), layerwise_lr_decay=0.5)
    lr = {}
    for group in optimizer.param_groups:
        for name in names_of(model, group["params"]):
            lr[name] = group["lr"]
    assert lr["classifier.weight"] == pytest.approx(1e-3)
    assert lr["bert.encoder.layer.1.attention.self.query.weight"] == pytest.approx(5e-4)
    assert lr["bert.encoder.layer.0.attention.self.query.weight"] == pytest.approx(2.5e-4)
    assert lr["bert.embeddings.word_embeddings.weight"] == pytest.approx(1.25e-4)
    no_decay = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
    assert any("LayerNorm" in n for g in no_decay for n in names_of(model, g["params"]))


def test_head_learning_rate_replaces_only_the_heads_lr(tiny_model):
    model = classifier(tiny_model)
    optimizer = build_optimizer(model, TrainArguments(learning_rate=1e-4, head_learning_rate=2e-3))
    lr = {name: group["lr"] for group in optimizer.param_groups for name in names_of(model, group["params"])}
    assert lr["classifier.weight"] == lr["classifier.bias"] == pytest.approx(2e-3)
    assert lr["bert.encoder.layer.1.attention.self.query.weight"] == pytest.approx(1e-4)
    assert lr["bert.embeddings.word_embeddings.weight"] == pytest.approx(1e-4)


def test_gradual_unfreezing_opens_one_group_at_a_time_top_down(tiny_model):
    model = classifier(tiny_model)
    optimizer = build_optimizer(model, TrainArguments(learning_rate=1e-3))
    scheduler = get_scheduler("constant", optimizer)
    gradual_unfreezing(scheduler, every=2)
    open_groups = []
    for _ in range(8):
        open_groups.append(sorted({g["layer_group"] for g in optimizer.param_groups if g["lr"] > 0}))
        optimizer.step()
        scheduler.step()
    assert open_groups[0] == open_groups[1] == [3]  # the head alone
    assert open_groups[2] == [2, 3]  # then the top layer
    assert open_groups[4] == [1, 2, 3]
    assert open_groups[6] == [0, 1, 2, 3]  # finally the embeddings


def test_l2sp_is_zero_at_start_grows_as_weights_move_and_skips_the_head(tiny_model):
    model = classifier(tiny_model)
    term = L2SP(model, beta=0.1)
    assert term.penalty().item() == 0.0
    assert not names_of(model, term.params) & {"classifier.weight", "classifier.bias"}
    weight = model.bert.encoder.layer[0].attention.self.query.weight
    with torch.no_grad():
        weight.add_(0.01)
    first = term.penalty().item()
    assert first == pytest.approx(0.1 * weight.numel() * 1e-4, rel=1e-4)
    with torch.no_grad():
        weight.add_(0.01)
    assert term.penalty().item() > first
    term.penalty().backward()  # d/dw beta ||w - w0||^2 = 2 beta (w - w0)
    torch.testing.assert_close(weight.grad, torch.full_like(weight, 2 * 0.1 * 0.02))
    assert model.classifier.weight.grad is None
    model.classifier.weight.data.add_(1.0)  # moving the head costs nothing
    assert term.penalty().item() == pytest.approx(0.1 * weight.numel() * 4e-4, rel=1e-4)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    out = GradientReversal(strength=0.5)(x)
    torch.testing.assert_close(out, x)
    (out * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * torch.arange(3.0).expand(4, 3))
    assert grl_schedule(0.0) == 0.0 and 0.99 < grl_schedule(1.0) < 1.0
    assert grl_schedule(0.1) < grl_schedule(0.5)


def test_feature_cache_returns_the_encoder_outputs_and_encodes_each_text_once(tiny_model):
    model = classifier(tiny_model)
    freeze(model, encoder=True)
    ids = torch.tensor([[2, 10, 11, 3, 0], [2, 12, 3, 0, 0], [2, 10, 11, 3, 0]])
    mask = (ids != 0).long()
    model.train()  # a frozen encoder has no dropout, so train mode gives the same features
    reference = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    cache = FeatureCache(model.bert)
    out = model.bert(input_ids=ids, attention_mask=mask)
    assert cache.misses == 2 and cache.hits == 1  # rows 0 and 2 are the same text
    torch.testing.assert_close(out.last_hidden_state * mask[..., None], reference * mask[..., None])
    again = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))
    assert cache.misses == 2 and cache.hits == 4
    again.loss.backward()
    assert model.classifier.weight.grad is not None
    cache.remove()
    assert "forward" not in vars(model.bert)


def test_feature_cache_refuses_a_trainable_encoder(tiny_model):
    with pytest.raises(ValueError, match="frozen encoder"):
        FeatureCache(classifier(tiny_model).bert)


def encoder_and_head_change(tiny_model, out: Path) -> dict[str, bool]:
    before = load_file(str(Path(tiny_model) / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    changed = {}
    for name, value in after.items():
        key = name.removeprefix("bert.")
        if key in before:
            changed[name] = not torch.equal(before[key], value)
    return changed


def test_recipe_freeze_encoder_trains_only_the_head(tiny_model, cls_files, tmp_path):
    # a random tiny encoder gives every text nearly the same features, so first make a "pretrained"
    # encoder: fine-tune on the task, keep only the encoder, then put a fresh head on it frozen
    from transformers import AutoTokenizer

    source = tmp_path / "source"
    run_script(RECIPE, recipe_args(tiny_model, cls_files, source, *FAST, "--max_steps", "120"))
    encoder = tmp_path / "encoder"
    AutoModelForSequenceClassification.from_pretrained(source).bert.save_pretrained(encoder)
    AutoTokenizer.from_pretrained(source).save_pretrained(encoder)

    out = tmp_path / "frozen"
    args = [*FAST, "--max_steps", "100", "--freeze", "encoder", "--learning_rate", "2e-2"]
    results = run_recipe(recipe_args(str(encoder), cls_files, out, *args))
    changed = encoder_and_head_change(str(encoder), out)
    assert changed and not any(changed.values())  # every encoder weight exactly as it came in
    assert results["trainable_parameters"] == 32 * 3 + 3  # the new classifier only
    assert results["test_accuracy"] >= 0.8  # chance is 1/3: the fresh head learned on frozen features


def test_recipe_freeze_layers_and_gradual_unfreezing_leave_frozen_weights_unchanged(tiny_model, cls_files, tmp_path):
    out = tmp_path / "bottom"
    run_script(RECIPE, recipe_args(tiny_model, cls_files, out, *FAST, "--max_steps", "6", "--freeze_layers", "1"))
    changed = encoder_and_head_change(tiny_model, out)
    assert not any(v for n, v in changed.items() if "embeddings" in n or ".layer.0." in n)
    assert all(v for n, v in changed.items() if ".layer.1." in n and "weight" in n)

    out = tmp_path / "gradual"  # every 4 steps, 6 steps: head, then the top layer; layer 0 and embeddings stay
    run_script(RECIPE, recipe_args(tiny_model, cls_files, out, *FAST, "--max_steps", "6", "--gradual_unfreezing", "4"))
    changed = encoder_and_head_change(tiny_model, out)
    assert not any(v for n, v in changed.items() if "embeddings" in n or ".layer.0." in n)
    assert all(v for n, v in changed.items() if ".layer.1." in n and "weight" in n)


def test_recipe_freeze_word_embeddings_keeps_only_the_token_embeddings(tiny_model, cls_files, tmp_path):
    out = tmp_path / "words"
    args = [*FAST, "--max_steps", "6", "--freeze", "word_embeddings"]
    results = run_recipe(recipe_args(tiny_model, cls_files, out, *args))
    changed = encoder_and_head_change(tiny_model, out)
    assert changed["bert.embeddings.word_embeddings.weight"] is False  # exactly as pretrained
    assert all(v for n, v in changed.items() if n != "bert.embeddings.word_embeddings.weight" and "weight" in n)
    total = results["total_parameters"]
    assert results["trainable_parameters"] == total - len(VOCAB) * 32  # the 32-wide token matrix only


def test_recipe_l2sp_keeps_weights_closer_to_pretrained(tiny_model, cls_files, tmp_path):
    def distance(out: Path) -> float:
        before = load_file(str(Path(tiny_model) / "model.safetensors"))
        after = load_file(str(out / "model.safetensors"))
        return sum((after[f"bert.{k}"] - v).pow(2).sum().item() for k, v in before.items() if f"bert.{k}" in after)

    plain, held = tmp_path / "plain", tmp_path / "l2sp"
    run_script(RECIPE, recipe_args(tiny_model, cls_files, plain, *FAST, "--max_steps", "20"))
    run_script(RECIPE, recipe_args(tiny_model, cls_files, held, *FAST, "--max_steps", "20", "--l2sp_beta", "1.0"))
    assert distance(held) < 0.8 * distance(plain)


def test_transfer_arguments_reject_contradictions(tiny_model, cls_files, tmp_path):
    with pytest.raises(ConfigError, match="--freeze encoder"):
        TransferArguments(freeze="encoder", l2sp_beta=0.1)
    with pytest.raises(ConfigError, match="--gradual_unfreezing"):
        TransferArguments(gradual_unfreezing="often")
    with pytest.raises(ConfigError, match="--layerwise_lr_decay"):
        TransferArguments(layerwise_lr_decay=1.5)
    with pytest.raises(ConfigError, match="--freeze_layers 5: the encoder has only 2 layers"):
        run_script(RECIPE, recipe_args(tiny_model, cls_files, tmp_path / "x", *FAST, "--freeze_layers", "5"))
