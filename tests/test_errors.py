"""Errors a user reads, not tracebacks: every recipe and CLI command turns bad input into one
`error: ...` line on stderr and exit status 2; --debug (or NLPTRANSFER_DEBUG=1) shows the traceback."""

import subprocess
import sys

import pytest

from nlptransfer.cli import main as cli

from conftest import REPO, concurrently, recipe_args, write_jsonl


def broken_jsonl(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a good match", "label": "sport"}\n{"text": "half a row\n')
    return str(path)


def recipe_cases(tiny_model, tmp_path) -> dict[str, tuple[list[str], str]]:
    """(arguments, what the one line must say) of a bad run of every recipe."""
    broken = broken_jsonl(tmp_path)
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(f"tasks:\n  - name: a\n    train_file: {broken}\n    privat_layers: 1\n")
    missing = str(tmp_path / "no-such-file.jsonl")
    return {
        "finetune": (recipe_args(tiny_model, {"train": broken}, tmp_path / "ft"), f"{broken}:2"),
        "mtl": (["--config", str(tasks), "--output_dir", str(tmp_path / "mtl")], "unknown field(s) ['privat_layers']"),
        "distill": (
            [*recipe_args(tiny_model, {"train": broken}, tmp_path / "d"), "--teacher_name_or_path", str(tmp_path)],
            "--teacher_name_or_path",
        ),
        "domain_adapt": (
            ["--source_file", missing, "--target_file", missing, "--output_dir", str(tmp_path / "da")],
            "no-such-file.jsonl",
        ),
        "meta": (recipe_args(tiny_model, {"train": broken}, tmp_path / "meta"), f"{broken}:2"),
    }


@pytest.mark.parametrize("recipe", ["finetune", "mtl", "distill", "domain_adapt", "meta"])
def test_every_recipe_reports_bad_input_in_one_line_and_exits_2(recipe, tiny_model, tmp_path, capsys):
    from conftest import run_script

    args, says = recipe_cases(tiny_model, tmp_path)[recipe]
    run_script(str(REPO / "recipes" / f"{recipe}.py"), args, exit_status=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert says in err[0] and "Traceback" not in err[0]


def test_a_real_process_prints_one_line_and_debug_shows_the_traceback(tiny_model, tmp_path):
    """As a new user meets it: `python recipes/finetune.py` on a JSONL file with a broken line 2."""
    broken = broken_jsonl(tmp_path)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(out: str, *extra: str):
        args = [sys.executable, str(REPO / "recipes" / "finetune.py")]
        args += recipe_args(tiny_model, {"train": broken}, tmp_path / out, *extra)
        return lambda: subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)

    done, debug = concurrently(run("out"), run("out-debug", "--debug"))  # independent processes, started together
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] == [done.stderr.strip()]
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "DataError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: ")


def test_an_existing_output_dir_is_one_line_and_nothing_is_touched(tiny_model, cls_files, tmp_path, capsys):
    from conftest import run_script

    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    run_script(str(REPO / "recipes" / "finetune.py"), recipe_args(tiny_model, cls_files, out, "--max_steps", "1"), 2)
    assert "exists and is not empty; pass --overwrite_output_dir" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["predict", "{tmp}/no-run-here"], "could not load model"),
        (["predict", "{tmp}"], "not a run folder"),
        (["push", "{tmp}/no-run-here", "me/x"], "nothing to push"),
        (["rank-models", "--models", "m", "--train_file", "{tmp}/missing.jsonl"], "no such file"),
    ],
    ids=["predict-missing", "predict-not-a-run", "push-missing", "rank-models-missing-file"],
)
def test_cli_commands_report_bad_input_in_one_line_and_exit_2(argv, says, tmp_path, capsys):
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "x", "label": "y"}])  # a folder with a file, but no run in it
    assert cli([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
