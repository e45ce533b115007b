"""LoRA / IA3 adapters through the recipe: the head is trained and saved, reload is exact, merge works."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from nlptransfer.adapters import AdapterArguments, apply_adapter, head_modules
from nlptransfer.config import ConfigError

from conftest import concurrently, recipe_args
from test_recipe import run_recipe

# attention-only r=8 learns the toy task in 6 epochs (the all-linear r=4 default needs more steps on it)
LORA = [
    "--peft",
    "lora",
    "--lora_r",
    "8",
    "--lora_target_modules",
    "query",
    "key",
    "value",
    "attention.output.dense",
    "--learning_rate",
    "5e-3",
    "--warmup_ratio",
    "0.1",
    "--per_device_train_batch_size",
    "16",
]
TEXTS = ["the new pasta story today", "a good match with the coach", "small robot on the laptop"]


def fresh_process_logits(run_dir, *texts: list[str]) -> list[list]:
    """Reload the adapter run in a new interpreter (nothing shared with this one); its logits for each list of
    texts."""
    code = f"""
        import json, torch
        from transformers import AutoTokenizer
        from nlptransfer import load_adapter_model
        model = load_adapter_model({str(run_dir)!r}).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(run_dir)!r})
        with torch.no_grad():
            for texts in {list(texts)!r}:
                print(json.dumps(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.tolist()))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-len(texts) :]]


def test_head_modules_found_by_structure():
    bert = BertForSequenceClassification(
        BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    )
    distil = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=20, dim=8, n_layers=1, n_heads=2, hidden_dim=8)
    )
    assert head_modules(bert) == ["classifier"]
    assert head_modules(distil) == ["pre_classifier", "classifier"]


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_trains_only_adapters_and_head(tiny_model, use_dora):
    model = BertForSequenceClassification.from_pretrained(tiny_model, num_labels=3)
    peft_model = apply_adapter(
        model, AdapterArguments(peft="lora", lora_r=4, use_dora=use_dora), "classification", "my/base"
    )
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)
    assert any("classifier" in name for name in trainable)
    assert peft_model.peft_config["default"].base_model_name_or_path == "my/base"
    assert any("lora_magnitude_vector" in name for name in trainable) == use_dora


def test_lora_run_reloads_in_fresh_process_with_trained_head(tiny_model, cls_files, tmp_path):
    from transformers import pipeline

    out = tmp_path / "lora"
    # fp32 throughout: on a CPU with fast bf16 `auto` evaluates under bf16 autocast, whose rounding can flip a
    # near-tie on this toy task, while the reload below runs in fp32
    args = recipe_args(tiny_model, cls_files, out, *LORA, "--num_train_epochs", "6", "--merge", "true")
    results = run_recipe([*args, "--mixed_precision", "no"])
    assert results["test_accuracy"] >= 0.8  # chance is 1/3
    assert results["trainable_parameters"] < results["total_parameters"]
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()

    # a head that came back random would not reproduce the recorded test accuracy, nor the same logits in two
    # fresh processes (two independent interpreters, started together)
    test_rows = [json.loads(line) for line in open(cls_files["test"])]
    (test_logits, first), (second,) = concurrently(
        lambda: fresh_process_logits(out, [r["text"] for r in test_rows], TEXTS),
        lambda: fresh_process_logits(out, TEXTS),
    )
    logits = torch.tensor(test_logits)
    labels = json.loads((out / "nlptransfer_task.json").read_text())["labels"]
    accuracy = sum(labels[int(i)] == r["label"] for i, r in zip(logits.argmax(-1), test_rows)) / len(test_rows)
    assert accuracy == pytest.approx(results["test_accuracy"])
    assert first == second

    # the merged export is a plain model that gives the same outputs and works in a pipeline
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        merged_logits = merged(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    assert torch.allclose(merged_logits, torch.tensor(first), atol=1e-5)
    classify = pipeline("text-classification", model=str(out / "merged"), device="cpu")
    assert classify(TEXTS[0])[0]["label"] == "food"


def test_auto_peft_model_reloads_the_saved_head(tiny_model, cls_files, tmp_path):
    from peft import AutoPeftModelForSequenceClassification

    out = tmp_path / "lora"
    run_recipe(recipe_args(tiny_model, cls_files, out, *LORA, "--max_steps", "10"))
    head = {k: v for k, v in load_file(out / "adapter_model.safetensors").items() if "classifier" in k}
    assert head, "the head must be saved with the adapter"
    model = AutoPeftModelForSequenceClassification.from_pretrained(out, num_labels=3)
    state = model.state_dict()
    for key, value in head.items():
        loaded = [
            v
            for k, v in state.items()
            if k.endswith(key.split("classifier", 1)[1]) and "classifier" in k and "modules_to_save" in k
        ]
        assert any(torch.equal(value, v) for v in loaded), key


def test_ia3_from_peft_config_file_and_ner_lora(tiny_model, cls_files, ner_files, tmp_path):
    config = tmp_path / "ia3.yaml"
    config.write_text(
        "peft_type: IA3\ntarget_modules: [key, value, output.dense]\nfeedforward_modules: [output.dense]\n"
    )
    results = run_recipe(
        recipe_args(tiny_model, cls_files, tmp_path / "ia3", "--peft_config_file", str(config), "--max_steps", "4")
    )
    assert results["trainable_parameters"] < results["total_parameters"]
    assert json.loads((tmp_path / "ia3" / "adapter_config.json").read_text())["peft_type"] == "IA3"

    ner = run_recipe(
        recipe_args(tiny_model, ner_files, tmp_path / "ner", "--task_type", "ner", *LORA, "--num_train_epochs", "6")
    )
    assert ner["test_f1"] >= 0.8


def test_bad_adapter_options():
    with pytest.raises(ConfigError, match="--peft 'lorra' is not known"):
        AdapterArguments(peft="lorra")
    model = BertForSequenceClassification(
        BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    )
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="no default LoRA target modules for model type 'mystery'"):
        apply_adapter(model, AdapterArguments(peft="lora"), "classification", "x")
