import pytest
import yaml

from nlptransfer.config import ConfigError, DataArguments, ModelArguments, TrainArguments, parse_args, save_config

TYPES = (ModelArguments, DataArguments, TrainArguments)


def test_yaml_then_cli_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train_file: a.jsonl\nlearning_rate: 1.0e-4\nnum_train_epochs: 2\ntask_type: ner\n")
    _, data, train = parse_args(*TYPES, args=["--config", str(config), "--learning_rate", "3e-5"])
    assert data.train_file == "a.jsonl" and data.task_type == "ner"
    assert train.learning_rate == 3e-5 and train.num_train_epochs == 2


def test_saved_config_round_trips(tmp_path):
    parsed = parse_args(*TYPES, args=["--train_file", "a.jsonl", "--max_steps", "7", "--group_by_length", "true"])
    save_config(tmp_path / "run_config.yaml", *parsed)
    assert yaml.safe_load((tmp_path / "run_config.yaml").read_text())["max_steps"] == 7
    again = parse_args(*TYPES, args=["--config", str(tmp_path / "run_config.yaml")])
    assert again == parsed


def test_unknown_yaml_key_is_named(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train_file: a.jsonl\nlearnig_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown option '--learnig_rate'"):
        parse_args(*TYPES, args=["--config", str(config)])


def test_bad_values_fail_early():
    with pytest.raises(ConfigError, match="--task_type 'pos' is not known"):
        parse_args(*TYPES, args=["--train_file", "a", "--task_type", "pos"])
    with pytest.raises(ConfigError, match="--train_file"):
        parse_args(*TYPES, args=[])
    with pytest.raises(ConfigError, match="--eval_strategy steps needs --eval_steps"):
        parse_args(*TYPES, args=["--train_file", "a", "--eval_strategy", "steps"])
    with pytest.raises(ConfigError, match="--checkpointing_steps must be"):
        parse_args(*TYPES, args=["--train_file", "a", "--checkpointing_steps", "often"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="--config nope.yaml: no such file"):
        parse_args(*TYPES, args=["--config", "nope.yaml"])


def test_every_recipe_flag_set_prints_its_help():
    # argparse formats help strings with %: a bare "%" in a help text crashes --help
    from transformers import HfArgumentParser

    from nlptransfer import (
        AdapterArguments,
        DataArguments,
        ModelArguments,
        MultiTaskArguments,
        TrainArguments,
        TransferArguments,
    )
    from nlptransfer.domain import DomainArguments

    for types in (
        (ModelArguments, DataArguments, TrainArguments, AdapterArguments, TransferArguments),
        (ModelArguments, MultiTaskArguments, TrainArguments, AdapterArguments, TransferArguments),
        (ModelArguments, DomainArguments, TrainArguments),
    ):
        assert "--output_dir" in HfArgumentParser(types).format_help()
