"""One run lifecycle: every recipe honours --push_to_hub and --report_to, selects in the stated direction,
scores splits with one prefix rule and prints one headline format."""

import json
import re

import pytest
from test_domain import domain_files
from test_meta import keyword_rows

from nlptransfer.errors import ConfigError
from nlptransfer.lifecycle import headline, split_prefix
from nlptransfer.training import greater_is_better

from conftest import REPO, recipe_args, write_jsonl
from hub_server import HubServer, run_client
from test_distill import FAST as DISTILL_FAST
from test_mtl_recipe import mtl_config
from test_recipe import run_recipe

SECRET = "hf_secret_token_that_must_never_show"


def test_metric_direction_is_stated_not_guessed():
    assert greater_is_better("accuracy") and greater_is_better("trec_accuracy") and greater_is_better("average")
    assert not greater_is_better("loss") and not greater_is_better("conll2003_loss") and not greater_is_better("mse")
    assert greater_is_better("macro_f1") and greater_is_better("conll2003_f1")
    assert greater_is_better("my_score", stated=True) and not greater_is_better("accuracy", stated=False)
    with pytest.raises(ConfigError, match="--greater_is_better"):
        greater_is_better("bleu")  # not ours: the user says which way is better


def test_one_prefix_rule_and_one_headline_format():
    assert [split_prefix(s) for s in ("validation", "test", "source_test")] == ["eval", "test", "source_test"]
    text = headline({"test_accuracy": 0.5, "eval_trec_f1": 0.25, "train_runtime": 3.0, "tasks": ["a"], "seed": 1})
    assert [line.strip() for line in text.splitlines()] == [
        "eval_trec_f1: 0.2500",
        "test_accuracy: 0.5000",
        "train_runtime: 3.0000",
    ]
    assert len({line.index(":") for line in text.splitlines()}) == 1  # keys right-aligned in one column


@pytest.fixture(scope="module")
def teacher(tiny_model, cls_files, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("lifecycle") / "teacher"
    run_recipe(recipe_args(tiny_model, cls_files, out, "--max_steps", "2"))
    return str(out)


def recipe_runs(tiny_model, cls_files, ner_files, teacher, folder):
    """(recipe, arguments) of a tiny run of every recipe that takes --push_to_hub and --report_to."""
    quick = ["--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1", "--logging_steps", "1"]
    domain = domain_files(folder)
    meta_data = write_jsonl(folder / "meta.jsonl", keyword_rows(4, seed=1))
    return {
        "finetune": recipe_args(tiny_model, cls_files, folder / "finetune", *quick),
        "mtl": ["--config", str(mtl_config(folder, tiny_model, cls_files, ner_files, max_steps=2))],
        "distill": [
            *recipe_args(tiny_model, cls_files, folder / "distill", *quick, *DISTILL_FAST),
            *("--teacher_name_or_path", teacher, "--student_layers", "0"),
        ],
        "domain_adapt": [
            *("--model_name_or_path", tiny_model, "--source_file", domain["source"], "--target_file", domain["target"]),
            *("--method", "dann", "--test_size", "40", "--output_dir", str(folder / "domain"), *quick),
            "--disable_tqdm",
            "true",
        ],
        "meta": [
            *recipe_args(tiny_model, {"train": str(meta_data)}, folder / "meta"),
            *("--label_column_name", "topic", "--n_way", "3", "--k_shot", "1", "--query", "1", "--meta_steps", "2"),
            *("--meta_batch_size", "1", "--inner_steps", "1", "--logging_steps", "1"),
        ],
    }


RECIPES = ["finetune", "mtl", "distill", "domain_adapt", "meta"]


# one interpreter runs every recipe in turn, as run_script does (each fresh interpreter costs ~10 s of imports),
# with a line between runs that says which recipe the output below belongs to and how the one above ended
PUSH_ALL = """
import json, runpy, sys
from accelerate.state import AcceleratorState

for recipe, argv in json.loads(sys.argv[1]):
    for stream in (sys.stdout, sys.stderr):
        print(f"@@@ {recipe}", file=stream, flush=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    sys.argv, status = argv, 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit:
        status = exit.code or 0
    print(f"@@@ exit {status}", flush=True)
"""


def per_recipe(output: str) -> dict[str, str]:
    """What follows each "@@@ <recipe>" line of PUSH_ALL's output, up to the next one."""
    parts = re.split(r"^@@@ (\S+)\n", output, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope="module")
def pushed_runs(tiny_model, cls_files, ner_files, teacher, tmp_path_factory) -> dict:
    """Every recipe's tiny run with --push_to_hub and --report_to tensorboard, one after the other in a fresh
    interpreter whose Hub is a local server: recipe -> (its folder, its arguments, its exit status, its stdout
    and stderr, the files its Hub repo holds)."""
    pytest.importorskip("tensorboard")
    folders = {recipe: tmp_path_factory.mktemp(recipe) for recipe in RECIPES}
    argvs = {}
    for recipe, folder in folders.items():
        args = recipe_runs(tiny_model, cls_files, ner_files, teacher, folder)[recipe]
        args += ["--push_to_hub", "true", "--hub_model_id", f"me/{recipe.replace('_', '-')}"]
        argvs[recipe] = [str(REPO / "recipes" / f"{recipe}.py"), *args, "--report_to", "tensorboard"]
    with HubServer() as hub:
        code = f"import sys\nsys.argv[1:] = [{json.dumps(list(argvs.items()))!r}]\n{PUSH_ALL}"
        done = run_client(hub, tmp_path_factory.mktemp("home"), code, timeout=900, env={"HF_TOKEN": SECRET})
        assert SECRET not in done.stdout + done.stderr
        stdouts, stderrs = per_recipe(done.stdout), per_recipe(done.stderr)
        outputs = {}
        for recipe, argv in argvs.items():
            try:
                files = hub.files(f"me/{recipe.replace('_', '-')}")
            except KeyError:  # nothing was pushed: its test says so
                files = {}
            stdout = stdouts.get(recipe, "")
            status = re.search(r"^@@@ exit (\S+)$", stdout, re.M)
            stderr = stderrs.get(recipe, done.stderr[-3000:])  # none of its own: the interpreter died before it
            outputs[recipe] = (folders[recipe], argv[1:], status and status[1], stdout, stderr, files)
    return outputs


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_pushes_and_logs_to_its_tracker(recipe, pushed_runs):
    tmp_path, args, status, stdout, stderr, files = pushed_runs[recipe]
    assert status == "0", stderr[-3000:]
    assert "pushed to" in stdout
    output_dir = (
        next(args[i + 1] for i, a in enumerate(args) if a == "--output_dir") if "--output_dir" in args else None
    )
    output_dir = output_dir or str(tmp_path / "mtl")  # mtl_config's output_dir
    pushed_results = json.loads(files["all_results.json"])
    assert pushed_results == json.loads((tmp_path / output_dir / "all_results.json").read_text())
    assert {"README.md", "run_config.yaml"} <= set(files)
    events = list((tmp_path / output_dir).rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 0, f"{recipe}: --report_to tensorboard wrote nothing"
