"""recipes/mtl.py end to end on the tiny model: two tasks learn together, one artifact, single-task deltas."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from nlptransfer import (
    AdapterArguments,
    ConfigError,
    ModelArguments,
    MultiTaskArguments,
    TrainArguments,
    TransferArguments,
    parse_args,
)

from conftest import REPO, run_script

RECIPE = str(REPO / "recipes" / "mtl.py")
FAST = {"learning_rate": 2e-3, "warmup_ratio": 0.1, "per_device_train_batch_size": 16, "disable_tqdm": True}


def mtl_config(tmp_path, tiny_model, cls_files, ner_files, **extra) -> Path:
    config = {
        "model_name_or_path": tiny_model,
        "output_dir": str(tmp_path / "mtl"),
        **FAST,
        "tasks": [
            {"name": "topic", "task_type": "classification", **{f"{s}_file": f for s, f in cls_files.items()}},
            {"name": "people", "task_type": "ner", **{f"{s}_file": f for s, f in ner_files.items()}},
        ],
        **extra,
    }
    path = tmp_path / "mtl.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_mtl(args: list[str]) -> dict:
    run_script(RECIPE, args)
    out = yaml.safe_load(Path(args[args.index("--config") + 1]).read_text())["output_dir"]
    return json.loads((Path(out) / "all_results.json").read_text())


def test_two_tasks_learn_together_and_reload_as_one_model(tiny_model, cls_files, ner_files, tmp_path, capsys):
    from nlptransfer import MultiTaskModel

    config = mtl_config(tmp_path, tiny_model, cls_files, ner_files, num_train_epochs=4, compare_single_task=True)
    results = run_mtl(["--config", str(config)])
    assert results["test_topic_accuracy"] >= 0.8  # chance is 1/3
    assert results["test_people_f1"] >= 0.8
    assert results["test_topic_samples"] == 48 and results["test_people_samples"] == 40
    assert results["eval_average"] == pytest.approx((results["eval_topic_accuracy"] + results["eval_people_f1"]) / 2)
    assert results["parameters_in_sync"] is True

    out = tmp_path / "mtl"
    model = MultiTaskModel.from_pretrained(out)
    assert model.task_names == ["topic", "people"] and model.tasks["people"].labels == ["O", "B-LOC", "B-PER"]
    prediction = model.predict(["the coach and the team", "Anna visited Paris today ."], tasks=["topic", "people"])
    assert prediction[0]["topic"]["label"] == "sport"
    assert [(e["entity"], e["word"]) for e in prediction[1]["people"]] == [("PER", "Anna"), ("LOC", "Paris")]
    from nlptransfer.cli import main as cli

    capsys.readouterr()
    assert cli(["predict", str(out), "the coach and the team", "--tasks", "topic"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["prediction"]["topic"]["label"] == "sport" and set(line["prediction"]) == {"topic"}
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert [task["name"] for task in saved["tasks"]] == ["topic", "people"]  # reusable with --config

    table = json.loads((out / "single_task_comparison.json").read_text())
    assert [row["task"] for row in table] == ["topic", "people"]
    for row in table:
        alone = json.loads((out / "single_task" / row["task"] / "all_results.json").read_text())
        assert row["single_task"] == alone[f"test_{row['task']}_{row['metric']}"]
        assert alone["train_steps"] == math.ceil(results["task_batches"][row["task"]])  # same updates as in MTL
        assert row["negative_transfer"] == (row["delta"] < 0)


def test_per_task_lora_adapters_in_the_recipe_save_small_and_reload(tiny_model, cls_files, ner_files, tmp_path):
    from safetensors.torch import load_file

    from nlptransfer import MultiTaskModel

    config = mtl_config(tmp_path, tiny_model, cls_files, ner_files, max_steps=60, learning_rate=1e-2)
    results = run_mtl(["--config", str(config), "--peft", "lora", "--lora_r", "4", "--adapter_per_task", "true"])
    assert results["trainable_parameters"] < results["total_parameters"] / 2
    assert results["test_people_f1"] > 0.5  # learned through the adapters and heads alone
    out = tmp_path / "mtl"
    keys = load_file(out / "model.safetensors").keys()
    assert any(".lora_A.topic." in k for k in keys) and any(".lora_A.people." in k for k in keys)
    assert not any(k.startswith("encoder.") and "lora_" not in k for k in keys)  # frozen base not copied
    model = MultiTaskModel.from_pretrained(out)
    assert (
        model.adapter_per_task
        and model.predict(["the coach and the team"])[0]["topic"]["label"] in model.tasks["topic"].labels
    )


def test_a_layer_mix_task_learns_its_mix_at_its_own_lr_and_reloads(tiny_model, cls_files, ner_files, tmp_path):
    from nlptransfer import MultiTaskModel

    config = yaml.safe_load(mtl_config(tmp_path, tiny_model, cls_files, ner_files, num_train_epochs=3).read_text())
    config["tasks"][1]["layer_mix"] = True
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(config))
    results = run_mtl(["--config", str(tmp_path / "mix.yaml"), "--layer_mix_lr", "0.05"])
    assert results["test_people_f1"] >= 0.8 and results["test_topic_accuracy"] >= 0.8
    model = MultiTaskModel.from_pretrained(tmp_path / "mtl")
    assert list(model.layer_mix) == ["people"]
    weights = model.layer_mix["people"].weights.detach()
    # AdamW moves a weight by about its LR per step: at the model's LR the mix could not get this far
    assert float(weights.abs().max()) > 2 * results["train_steps"] * FAST["learning_rate"]
    assert torch.softmax(weights, 0).max() > 1.5 / len(weights)  # no longer the plain mean of the layers


def test_private_layers_and_weight_in_the_recipe_and_a_plain_single_task_comparison(
    tiny_model, cls_files, ner_files, tmp_path
):
    from nlptransfer import MultiTaskModel

    config = yaml.safe_load(
        mtl_config(tmp_path, tiny_model, cls_files, ner_files, num_train_epochs=4, compare_single_task=True).read_text()
    )
    config["tasks"][1].update(private_layers=1, weight=2.0)
    (tmp_path / "private.yaml").write_text(yaml.safe_dump(config))
    results = run_mtl(["--config", str(tmp_path / "private.yaml")])
    assert results["test_people_f1"] >= 0.8 and results["test_topic_accuracy"] >= 0.8
    model = MultiTaskModel.from_pretrained(tmp_path / "mtl")
    assert model.private_layers == {"people": 1}
    shared_top = model.encoder.encoder.layer[-1].output.dense.weight
    assert not torch.equal(model.private["people"][0].output.dense.weight, shared_top)  # each trained its copy
    alone = MultiTaskModel.from_pretrained(tmp_path / "mtl" / "single_task" / "people")
    assert model.task_weights["people"] == 2.0
    assert alone.private_layers == {} and alone.task_weights == {"people": 1.0}  # alone: a plain run of the task
    per_layer = sum(p.numel() for p in model.private["people"].parameters())
    assert results["total_parameters"] == sum(p.numel() for p in alone.parameters()) + per_layer + sum(
        p.numel() for p in model.heads["topic"].parameters()
    )


SHIPPED = sorted(p for p in (REPO / "recipes" / "configs").glob("*.yaml") if "tasks" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_shipped_multi_task_configs_parse_with_the_recipes_arguments(config):
    """A misspelt key or task field in a shipped config fails here, not after minutes of the main job."""
    recipe_arguments = ModelArguments, MultiTaskArguments, TrainArguments, AdapterArguments, TransferArguments
    _, mtl_args, *_ = parse_args(*recipe_arguments, args=["--config", str(config)])
    assert mtl_args.task_args and all(task.train_file or task.dataset_name for task in mtl_args.task_args)


def test_task_list_errors_name_the_task_and_field(tmp_path):
    with pytest.raises(ConfigError, match=r"tasks\[1\] \(b\): unknown field\(s\) \['text_colum'\]"):
        MultiTaskArguments(tasks=json.dumps([{"name": "a", "train_file": "x"}, {"name": "b", "text_colum": "t"}]))
    with pytest.raises(ConfigError, match=r"tasks\[0\]: give --train_file"):
        MultiTaskArguments(tasks=json.dumps([{"task_type": "ner"}]))
    with pytest.raises(ConfigError, match="names must be unique"):
        MultiTaskArguments(tasks=json.dumps([{"train_file": "d/train.jsonl"}, {"train_file": "d/other.jsonl"}]))
    with pytest.raises(ConfigError, match="--task_sampling 'random' is not known"):
        MultiTaskArguments(tasks=json.dumps([{"train_file": "x"}]), task_sampling="random")
    with pytest.raises(ConfigError, match="--loss_weighting 'magic'"):
        MultiTaskArguments(tasks=json.dumps([{"train_file": "x"}]), loss_weighting="magic")
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text("- {name: a, train_file: data/train.jsonl, weight: 2}\n")
    parsed = MultiTaskArguments(tasks=str(tasks_file))
    assert parsed.task_args[0].name == "a" and parsed.task_args[0].weight == 2


def test_a_single_task_teacher_teaches_its_task_head(tiny_model, cls_teacher, cls_files, ner_files, tmp_path):
    """Born-again multi-task: with the topic labels shuffled, only the teacher's soft targets can teach the
    topic head; the saved artifact is the plain multi-task model. The teacher: conftest's `cls_teacher`, a
    fine-tuning run of the topic task (test accuracy >= 0.9, selected on validation loss)."""
    import random

    from nlptransfer import MultiTaskModel

    teacher = Path(cls_teacher)
    rows = [json.loads(line) for line in Path(cls_files["train"]).read_text().splitlines()]
    labels = [row["label"] for row in rows]
    random.Random(0).shuffle(labels)
    noisy = dict(cls_files, train=str(tmp_path / "noisy.jsonl"))
    Path(noisy["train"]).write_text("".join(json.dumps({**r, "label": y}) + "\n" for r, y in zip(rows, labels)))

    def run(name: str, **extra) -> dict:
        config = mtl_config(tmp_path / name, tiny_model, noisy, ner_files, num_train_epochs=4, **extra)
        return run_mtl(["--config", str(config)])

    (tmp_path / "taught").mkdir(), (tmp_path / "alone").mkdir()
    taught = run("taught", teachers=f"topic={teacher}", teacher_annealing=False, distill_alpha=1.0)
    assert taught["teachers"] == {"topic": str(teacher)}
    assert taught["test_topic_accuracy"] >= 0.8, taught  # chance is 1/3, and its labels are noise
    assert taught["test_people_f1"] >= 0.8
    assert list((tmp_path / "taught" / "mtl" / "teacher_cache").glob("teacher_*.safetensors"))
    model = MultiTaskModel.from_pretrained(tmp_path / "taught" / "mtl")  # saved without the training wrapper
    assert model.predict(["the coach and the team"], tasks=["topic"])[0]["topic"]["label"] == "sport"
    alone = run("alone")
    assert alone["test_topic_accuracy"] < 0.7 and alone["teachers"] == {}


def test_teachers_flag_errors():
    tasks = json.dumps([{"name": "a", "train_file": "x"}])
    with pytest.raises(ConfigError, match=r"--teachers: 'b' is not a task of this run; the tasks are \['a'\]"):
        MultiTaskArguments(tasks=tasks, teachers="b=runs/b")
    with pytest.raises(ConfigError, match=r"expected 'task=path' pairs, got 'runs/a'"):
        MultiTaskArguments(tasks=tasks, teachers="runs/a")
    with pytest.raises(ConfigError, match=r"--distill_alpha must be in \[0, 1\]"):
        MultiTaskArguments(tasks=tasks, teachers="a=runs/a", distill_alpha=2)
    assert MultiTaskArguments(tasks=tasks, teachers=" a = runs/a ").teacher_paths == {"a": "runs/a"}
