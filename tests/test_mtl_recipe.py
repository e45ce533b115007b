"""recipes/mtl.py end to end on the tiny model: two tasks learn together, one artifact, single-task deltas."""

import json
import math
from pathlib import Path

import pytest
import yaml

from nlptransfer import ConfigError, MultiTaskArguments

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
