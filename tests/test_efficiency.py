"""GPU-efficiency options (#24) leave CPU results alone: data-loader workers, gradient checkpointing and
padding to a multiple change how a run computes, not what it learns; the loss is summed on the device."""

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file

from nlptransfer import MultiTaskCollator, PaddingCollator, TrainArguments
from nlptransfer.errors import ConfigError

from conftest import REPO, killed_at_batch, recipe_args, run_script, tiny_bert_config

FINETUNE, MTL = str(REPO / "recipes" / "finetune.py"), str(REPO / "recipes" / "mtl.py")
# 24 batches an epoch, 36 steps: the run crosses an epoch and evaluates in between (where workers are kept
# or restarted), learns enough for confident predictions, then scores validation and test
SHORT = [
    *("--learning_rate", "3e-3", "--per_device_train_batch_size", "16", "--max_steps", "36"),
    *("--eval_strategy", "steps", "--eval_steps", "12"),
]
NOT_RESULTS = ("train_runtime", "train_step_runtime", "train_samples_per_second", "train_steps_per_second")


def finetune(tiny_model, files, out: Path, *extra: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The results (without timings) and saved weights of a short fine-tuning run."""
    run_script(FINETUNE, recipe_args(tiny_model, files, out, *SHORT, *extra))
    results = json.loads((out / "all_results.json").read_text())
    return {k: v for k, v in results.items() if k not in NOT_RESULTS}, load_file(out / "model.safetensors")


def assert_same_run(results: dict, weights: dict, reference: dict, reference_weights: dict) -> None:
    differ = {k: (results.get(k), v) for k, v in reference.items() if k != "train_gradient_checkpointing"}
    assert {k: pair for k, pair in differ.items() if pair[0] != pair[1]} == {}
    assert weights.keys() == reference_weights.keys()
    assert [name for name in weights if not torch.equal(weights[name], reference_weights[name])] == []


@pytest.fixture(scope="module")
def default_run(tiny_model, cls_files, tmp_path_factory):
    return finetune(tiny_model, cls_files, tmp_path_factory.mktemp("default") / "run")


def test_workers_give_bit_identical_results(tiny_model, cls_files, tmp_path, default_run):
    results, weights = finetune(tiny_model, cls_files, tmp_path / "run", "--dataloader_num_workers", "2")
    assert_same_run(results, weights, *default_run)


def test_run_with_workers_killed_and_resumed_ends_as_the_uninterrupted_run(
    tiny_model, cls_files, tmp_path, default_run
):
    """The checkpoint holds the loss total read back from the device; the order stays in the main process."""
    out = tmp_path / "run"
    extra = ("--dataloader_num_workers", "2", "--checkpointing_steps", "12")
    with killed_at_batch(20):  # mid-epoch, after the step-12 checkpoint
        finetune(tiny_model, cls_files, out, *extra)
    state = json.loads((out / "checkpoints" / "step_12" / "train_state.json").read_text())
    assert state["train_loss_count"] == 12 and state["train_loss_sum"] > 0
    results, weights = finetune(tiny_model, cls_files, out, *extra, "--resume_from_checkpoint", "latest")
    assert_same_run(results, weights, *default_run)


def test_gradient_checkpointing_gives_bit_identical_results(tiny_model, cls_files, tmp_path, default_run, monkeypatch):
    # the recomputed forward replays the same CPU kernels with the saved RNG state (dropout), and the
    # gradients flow back in the same order, so on CPU the result is bit-identical, not only close
    import transformers.modeling_utils

    calls = []
    original = transformers.modeling_utils.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted)
    results, weights = finetune(tiny_model, cls_files, tmp_path / "run", "--gradient_checkpointing", "true")
    assert results["train_gradient_checkpointing"] is True and default_run[0]["train_gradient_checkpointing"] is False
    assert len(calls) >= 18 * 2  # every step ran both layers through the checkpoint
    assert_same_run(results, weights, *default_run)


def test_padding_to_a_multiple_changes_only_rounding(tiny_model, cls_files, tmp_path):
    """Without dropout and in fp32. Dropout draws a mask over the padded shape, so with dropout a wider batch
    puts different masks on the real tokens (a run that differs as another seed would); bf16 autocast (the
    CPU default where it is fast) rounds too coarsely for a tight check."""
    from transformers import AutoTokenizer, BertModel

    model = tmp_path / "no-dropout"
    BertModel.from_pretrained(tiny_model, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(
        model
    )
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(model)
    fp32 = ("--mixed_precision", "no")
    reference, reference_weights = finetune(str(model), cls_files, tmp_path / "reference", *fp32)
    results, weights = finetune(str(model), cls_files, tmp_path / "run", *fp32, "--pad_to_multiple_of", "8")
    for key, value in reference.items():
        if key.endswith(("accuracy", "f1", "precision", "recall", "samples", "steps", "best_step")):
            assert results[key] == value, key  # the same predictions
        elif isinstance(value, float):
            assert results[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
    for name, tensor in reference_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-3, atol=1e-4)
    assert any(not torch.equal(weights[name], tensor) for name, tensor in reference_weights.items())  # it padded


def test_multitask_workers_and_checkpointing_give_bit_identical_results(tiny_model, cls_files, ner_files, tmp_path):
    def run(name: str, **extra) -> tuple[dict, dict]:
        config = {
            "model_name_or_path": tiny_model,
            "output_dir": str(tmp_path / name),
            "disable_tqdm": True,
            **{"learning_rate": 2e-3, "per_device_train_batch_size": 32, "max_steps": 8},
            **{"eval_strategy": "steps", "eval_steps": 4},
            "tasks": [
                {"name": "topic", "task_type": "classification", **{f"{s}_file": f for s, f in cls_files.items()}},
                {"name": "people", "task_type": "ner", **{f"{s}_file": f for s, f in ner_files.items()}},
            ],
            **extra,
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        run_script(MTL, ["--config", str(tmp_path / f"{name}.yaml")])
        results = json.loads((tmp_path / name / "all_results.json").read_text())
        weights = load_file(next((tmp_path / name).glob("*.safetensors")))
        return {k: v for k, v in results.items() if k not in NOT_RESULTS}, weights

    results, weights = run("both", dataloader_num_workers=2, gradient_checkpointing=True)
    assert results["train_gradient_checkpointing"] is True
    assert_same_run(results, weights, *run("default"))


def test_logged_loss_is_the_mean_since_the_previous_log(tiny_model, cls_files, tmp_path, monkeypatch):
    """Logged every 2 updates of 2 micro-batches each: the mean of those 4 losses; `train_loss` is still
    their running sum in order, as the host summed it before the sum moved to the device."""
    from nlptransfer.training import Trainer

    losses, logged = [], []
    compute_loss = Trainer.compute_loss

    def recorded(self, batch):
        loss = compute_loss(self, batch)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(Trainer, "compute_loss", recorded)
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, **kw: logged.append((step, values)))
    files = {"train": cls_files["train"]}
    extra = ("--max_steps", "6", "--gradient_accumulation_steps", "2", "--logging_steps", "2")
    args = recipe_args(tiny_model, files, tmp_path / "run", *extra, "--eval_strategy", "no")
    run_script(FINETUNE, [*args, "--per_device_train_batch_size", "16", "--learning_rate", "2e-3"])
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert len(losses) == 12
    assert [step for step, _ in logged] == [2, 4, 6]
    for i, (_, values) in enumerate(logged):
        assert values["train/loss"] == pytest.approx(sum(losses[4 * i : 4 * i + 4]) / 4, rel=1e-12)
    total = 0.0
    for loss in losses:
        total += loss
    assert results["train_loss"] == total / 12  # bit-identical to the host sum


def test_collators_pad_to_the_multiple():
    features = [
        {"input_ids": [2, 7, 3], "attention_mask": [1, 1, 1], "labels": [-100, 1, -100], "task_ids": 1},
        {
            "input_ids": [2, 7, 8, 9, 10, 3],
            "attention_mask": [1] * 6,
            "labels": [-100, 0, 1, 1, 0, -100],
            "task_ids": 1,
        },
    ]
    batch = PaddingCollator(0, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [2, 7, 3, 0, 0, 0, 0, 0]
    assert batch["attention_mask"][1].tolist() == [1] * 6 + [0, 0]
    assert batch["labels"][1].tolist() == [-100, 0, 1, 1, 0, -100, -100, -100]
    assert PaddingCollator(0)(features)["input_ids"].shape == (2, 6)  # dynamic padding alone
    assert PaddingCollator(0, pad_to_multiple_of=3)(features)["input_ids"].shape == (2, 6)  # already a multiple

    tasks = MultiTaskCollator(0, ["topic", "people"], pad_to_multiple_of=8)(features)
    assert tasks["input_ids"].shape == (2, 8)
    assert tasks["labels"]["people"].shape == (2, 8) and tasks["labels"]["people"][0, 3:].eq(-100).all()


def test_pad_to_multiple_of_auto_is_8_on_cuda_and_none_on_cpu():
    auto = TrainArguments()
    assert auto.pad_to_multiple_of == "auto"
    assert auto.pad_multiple(torch.device("cuda", 0)) == 8 and auto.pad_multiple("cuda") == 8
    assert auto.pad_multiple(torch.device("cpu")) is None
    assert TrainArguments(pad_to_multiple_of="16").pad_multiple("cpu") == 16
    assert TrainArguments(pad_to_multiple_of="0").pad_multiple("cuda") is None
    assert TrainArguments(pad_to_multiple_of="None").pad_multiple("cuda") is None
    with pytest.raises(ConfigError, match="pad_to_multiple_of"):
        TrainArguments(pad_to_multiple_of="eight")


def test_dataloader_options_pin_memory_only_on_cuda():
    args = TrainArguments(dataloader_num_workers=2)
    assert args.dataloader_options("cuda") == {"num_workers": 2, "pin_memory": True}
    assert args.dataloader_options(torch.device("cpu")) == {"num_workers": 2, "pin_memory": False}
    assert TrainArguments(dataloader_pin_memory=False).dataloader_options("cuda")["pin_memory"] is False
    with pytest.raises(ConfigError, match="dataloader_num_workers"):
        TrainArguments(dataloader_num_workers=-1)


def test_gradient_checkpointing_reaches_the_model_inside_every_wrapper(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification, BertModel
    from transformers.modeling_layers import GradientCheckpointingLayer

    from nlptransfer import DistillationModel, MultiTaskModel
    from nlptransfer.domain import DomainAdversarialModel
    from nlptransfer.lifecycle import enable_gradient_checkpointing

    def classifier():
        return BertForSequenceClassification(tiny_bert_config(num_labels=3))

    lora = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])
    topic = {"name": "topic", "kind": "classification", "labels": ["a", "b"]}
    people = {"name": "people", "kind": "ner", "labels": ["O", "B-PER"]}
    models = {
        "plain": classifier(),
        "peft": get_peft_model(classifier(), lora),
        "multitask": MultiTaskModel(BertModel(tiny_bert_config()), [topic, people], private_layers={"people": 1}),
        "distillation": DistillationModel(classifier()),
        "domain_adversarial": DomainAdversarialModel(classifier(), hidden_size=8),
    }
    for name, model in models.items():
        assert enable_gradient_checkpointing(model), name
        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        assert layers and all(layer.gradient_checkpointing for layer in layers), name
    # the private copy of the top layer is checkpointed too, and the gradients stay the same
    plain = MultiTaskModel(BertModel(tiny_bert_config()), [topic, people], private_layers={"people": 1})
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    assert all(layer.gradient_checkpointing for layer in checkpointed.private["people"])
    batch = {
        "input_ids": torch.randint(5, 40, (4, 7)),
        "attention_mask": torch.ones(4, 7, dtype=torch.long),
        "task_ids": torch.tensor([0, 1, 0, 1]),
        "labels": {"topic": torch.tensor([0, 1]), "people": torch.randint(0, 2, (2, 7))},
    }
    for model in (plain, checkpointed):
        torch.manual_seed(0)  # the same dropout masks: the recompute replays them
        model.train()(**batch).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(p.grad, q.grad), name
    frozen = classifier().requires_grad_(False)
    assert not enable_gradient_checkpointing(frozen)  # nothing trains: nothing to save memory on
