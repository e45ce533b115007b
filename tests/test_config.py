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


def test_config_strings_read_environment_variables_with_defaults(tmp_path, monkeypatch):
    from nlptransfer.config import DataArguments, ModelArguments, TrainArguments, parse_args

    config = tmp_path / "run.yaml"
    config.write_text("train_file: ${MY_DATA:-/default}/train.jsonl\noutput_dir: ${MY_OUT}/run\n")
    monkeypatch.setenv("MY_OUT", str(tmp_path))
    monkeypatch.delenv("MY_DATA", raising=False)
    _, data, train = parse_args(ModelArguments, DataArguments, TrainArguments, args=["--config", str(config)])
    assert data.train_file == "/default/train.jsonl" and train.output_dir == f"{tmp_path}/run"
    monkeypatch.setenv("MY_DATA", "/mine")
    _, data, _ = parse_args(ModelArguments, DataArguments, TrainArguments, args=["--config", str(config)])
    assert data.train_file == "/mine/train.jsonl"
    monkeypatch.delenv("MY_OUT")
    with pytest.raises(ConfigError, match=r"--config .*run.yaml: \$\{MY_OUT\} is not set in the environment"):
        parse_args(ModelArguments, DataArguments, TrainArguments, args=["--config", str(config)])


def test_a_shipped_config_is_found_by_name():
    from nlptransfer.config import config_file
    from nlptransfer.recipes import configs_folder

    assert config_file("trec_sst2_conll") == configs_folder() / "trec_sst2_conll.yaml"
    assert config_file("meta_trec.yaml") == configs_folder() / "meta_trec.yaml"
    assert config_file("ddp", kind="accelerate") == configs_folder() / "accelerate" / "ddp.yaml"
