"""Multi-source adapter fusion: sources read without their heads, merge = peft's weighted merge, the learned
mix starts uniform and trains alone with the head, folding keeps outputs, and the recipe option works."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from nlptransfer.adapters import AdapterArguments, apply_adapter
from nlptransfer.config import ConfigError
from nlptransfer.fusion import (
    FusedLoRALinear,
    FusionArguments,
    apply_fusion,
    fold_fusion,
    learned_fusion,
    merge_sources,
    read_source_adapter,
)

from conftest import recipe_args
from test_adapters import LORA, TEXTS
from test_recipe import run_recipe


@pytest.fixture(scope="module")
def sources(tiny_model, tmp_path_factory) -> list[str]:
    """Two LoRA adapters with random (non-zero) updates, saved as recipe runs save them: head included."""
    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = BertForSequenceClassification.from_pretrained(tiny_model, num_labels=3)
        peft_model = apply_adapter(model, AdapterArguments(peft="lora", lora_r=4), "classification", tiny_model)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.2)
        folder = tmp_path_factory.mktemp(f"source{seed}")
        peft_model.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def encode(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)(TEXTS, padding=True, return_tensors="pt")


def encoder_states(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().bert(**batch).last_hidden_state


def target(tiny_model, num_labels=5):
    torch.manual_seed(0)
    return BertForSequenceClassification.from_pretrained(tiny_model, num_labels=num_labels)


def test_source_is_read_without_its_head(sources):
    source = read_source_adapter(sources[0])
    assert source.deltas and all(".classifier" not in name for name in source.deltas)
    assert all(name.startswith("bert.encoder.layer.") for name in source.deltas)
    assert source.scaling == 16 / 4  # lora_alpha / r
    a, b = next(iter(source.deltas.values()))
    assert a.shape[0] == b.shape[1] == 4


def test_merge_equals_peft_weighted_adapter_cat(tiny_model, sources):
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    batch, weights = encode(tiny_model), [0.7, 0.3]
    ours = target(tiny_model)  # 5 labels: the sources' 3-label heads are never read
    merge_sources(ours, [read_source_adapter(folder) for folder in sources], weights)

    # peft refuses to weight adapters that each carry a head, so its side loads the LoRA weights alone
    config = json.loads(open(sources[0] + "/adapter_config.json").read())
    lora = LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"], target_modules=config["target_modules"])
    peft_model = get_peft_model(target(tiny_model, num_labels=3), lora, adapter_name="first")
    peft_model.add_adapter("second", lora)
    for name, folder in zip(("first", "second"), sources):
        state = {k: v for k, v in load_file(folder + "/adapter_model.safetensors").items() if "lora_" in k}
        set_peft_model_state_dict(peft_model, state, adapter_name=name)
    peft_model.add_weighted_adapter(["first", "second"], weights, "merged", combination_type="cat")
    peft_model.set_adapter("merged")
    expected = encoder_states(peft_model.base_model.model, batch)

    plain = encoder_states(target(tiny_model), batch)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapters do change the encoder
    assert torch.allclose(encoder_states(ours, batch), expected, atol=1e-5)
    # only the new head trains
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


def test_learned_fusion_starts_uniform_trains_only_mix_and_head_and_folds(tiny_model, sources):
    batch, read = encode(tiny_model), [read_source_adapter(folder) for folder in sources]
    uniform = target(tiny_model)
    merge_sources(uniform, read)
    fused = target(tiny_model)
    learned_fusion(fused, read)

    layers = [m for m in fused.modules() if isinstance(m, FusedLoRALinear)]
    assert len(layers) == len(read[0].deltas)
    assert torch.allclose(encoder_states(fused, batch), encoder_states(uniform, batch), atol=1e-5)
    trainable = {n for n, p in fused.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"} | {
        f"{n}.logits" for n, m in fused.named_modules() if isinstance(m, FusedLoRALinear)
    }

    # a step moves the mixing weights; the frozen base and source updates stay exactly as they were
    base_before = {n: p.clone() for n, p in fused.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in fused.parameters() if p.requires_grad], lr=1.0)
    fused.train()
    fused(**batch, labels=torch.tensor([0, 1, 2])).loss.backward()
    assert all(layer.logits.grad is not None and layer.logits.grad.abs().sum() > 0 for layer in layers)
    optimizer.step()
    assert any(not torch.allclose(layer.mix(), torch.full((2,), 0.5)) for layer in layers)
    assert all(torch.equal(p, base_before[n]) for n, p in fused.named_parameters() if n in base_before)

    # folding the learned mix into plain weights keeps the outputs
    before = encoder_states(fused, batch)
    fold_fusion(fused)
    assert not any(isinstance(m, FusedLoRALinear) for m in fused.modules())
    assert torch.allclose(encoder_states(fused, batch), before, atol=1e-5)


def test_bad_sources_and_arguments_get_clear_errors(tiny_model, sources, tmp_path):
    with pytest.raises(ConfigError, match="adapter_config.json"):
        read_source_adapter(tmp_path)
    with pytest.raises(ConfigError, match="one per source"):
        FusionArguments(source_adapters=sources, fusion="merge", fusion_weights=[1.0])
    with pytest.raises(ConfigError, match="--fusion must be one of"):
        FusionArguments(source_adapters=sources, fusion="average")
    with pytest.raises(ConfigError, match="identical base models"):
        apply_fusion(target(tiny_model), FusionArguments(source_adapters=sources), "someone/other-model")

    from conftest import tiny_bert_config

    wider = BertForSequenceClassification(tiny_bert_config(hidden_size=48, num_labels=3))
    with pytest.raises(ConfigError, match="has shape"):
        apply_fusion(wider, FusionArguments(source_adapters=sources), tiny_model)


def test_recipe_transfers_from_a_trained_lora_source(tiny_model, cls_files, tmp_path):
    # a source adapter trained on the topic task, then a fresh head on top of the fused source
    source = tmp_path / "source"
    run_recipe(recipe_args(tiny_model, cls_files, source, *LORA, "--num_train_epochs", "6"))
    out = tmp_path / "fused"
    head_only = ["--learning_rate", "1e-2", "--per_device_train_batch_size", "16", "--num_train_epochs", "6"]
    results = run_recipe(recipe_args(tiny_model, cls_files, out, *head_only, "--source_adapters", str(source)))
    assert results["fusion"] == "learned" and len(results["fusion_mean_weights"]) == 1
    assert results["trainable_parameters"] < 1000  # head + mixing logits only
    assert results["test_accuracy"] >= 0.8  # chance is 1/3: the head learns on the source's features

    # the saved model is a plain folder with the mix folded in; reloaded, it scores the test set alike
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = [json.loads(line) for line in open(cls_files["test"])]
    with torch.no_grad():
        logits = model(**tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")).logits
    labels = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert sum(p == r["label"] for p, r in zip(labels, rows)) / len(rows) >= 0.8

    with pytest.raises(ConfigError, match="cannot be combined with --peft"):  # fusion keeps its sources frozen
        run_recipe(
            recipe_args(tiny_model, cls_files, tmp_path / "x", "--source_adapters", str(source), "--peft", "lora")
        )
