import json

from nlptransfer.cli import main


def test_predict_prints_label_names(trained_runs, capsys):
    out = trained_runs["classification"]
    capsys.readouterr()
    assert main(["predict", str(out), "the new pasta story today", "a good match with the coach"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prediction"]["label"] for line in lines] == ["food", "sport"]


def test_models_lists_aliases(capsys):
    assert main(["models"]) == 0
    assert "sentence-transformers/all-minilm-l6-v2" in capsys.readouterr().out


def test_run_reports_bad_launcher_flags_and_configs_in_one_line(capsys):
    for argv, message in (
        (["run", "mtl", "--num_processes", "two"], "invalid int value: 'two'"),
        (["run", "mtl", "--num_processes", "0"], "--num_processes must be at least 1, got 0"),
        (["run", "mtl", "--accelerate_config", "zero9"], "--accelerate_config zero9: no such file, nor a shipped"),
        (["run", "mtl", "--config", "nope"], "--config nope: no such file, nor a shipped configuration"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_run_command_lines(monkeypatch):
    """What `nlptransfer run` hands `accelerate launch`: the recipe as a module, gloo CPU ranks without a GPU,
    a shipped launcher configuration by name."""
    from nlptransfer.launch import launch_command, split_launcher_args
    from nlptransfer.recipes import shipped_configs

    launcher, rest = split_launcher_args(["--config", "x.yaml", "--num-processes", "2", "--seed", "3"])
    assert launcher.num_processes == 2 and rest == ["--config", "x.yaml", "--seed", "3"]
    command, env = launch_command("domain-adapt", launcher, rest, cuda=False)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and env == {"ACCELERATE_USE_CPU": "1"}
    assert "--multi_gpu" in command and command[-5:] == ["nlptransfer.recipes.domain_adapt", *rest]
    assert launch_command("mtl", launcher, rest, cuda=True)[1] == {}
    launcher, rest = split_launcher_args(["--accelerate_config", "deepspeed_zero2", "--num_processes", "2"])
    command, env = launch_command("mtl", launcher, rest, cuda=False)
    at = command.index("--config_file")
    assert command[at + 1] == str(shipped_configs("accelerate")["deepspeed_zero2"].resolve())
    assert "--multi_gpu" not in command and env == {}  # the configuration says how
