"""One run lifecycle: every recipe honours --push_to_hub and --report_to, selects in the stated direction,
scores splits with one prefix rule and prints one headline format."""

import json
import textwrap

import pytest
from test_domain import domain_files
from test_meta import keyword_rows

from nlptransfer.errors import ConfigError
from nlptransfer.lifecycle import headline, split_prefix
from nlptransfer.training import greater_is_better

from conftest import REPO, concurrently, recipe_args, write_jsonl
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


@pytest.fixture(scope="module")
def pushed_runs(tiny_model, cls_files, ner_files, teacher, tmp_path_factory) -> dict:
    """Every recipe's tiny run with --push_to_hub and --report_to tensorboard, each in a fresh process of its own
    pushing to a Hub server of its own (independent runs, as many at a time as there are cores): recipe ->
    (its folder, its arguments, the finished process, the files its Hub repo holds)."""
    pytest.importorskip("tensorboard")

    def push_run(recipe: str):
        folder = tmp_path_factory.mktemp(recipe)
        args = recipe_runs(tiny_model, cls_files, ner_files, teacher, folder)[recipe]
        args += ["--push_to_hub", "true", "--hub_model_id", f"me/{recipe.replace('_', '-')}"]
        args += ["--report_to", "tensorboard"]
        code = f"""
            import runpy, sys
            sys.argv = [{str(REPO / "recipes" / f"{recipe}.py")!r}, *{args!r}]
            runpy.run_path(sys.argv[0], run_name="__main__")
        """

        def run():
            with HubServer() as hub:
                done = run_client(hub, folder / "home", textwrap.dedent(code), timeout=300, env={"HF_TOKEN": SECRET})
                try:
                    files = hub.files(f"me/{recipe.replace('_', '-')}")
                except KeyError:  # nothing was pushed: its test says so
                    files = {}
            return folder, args, done, files

        return run

    return dict(zip(RECIPES, concurrently(*map(push_run, RECIPES))))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_pushes_and_logs_to_its_tracker(recipe, pushed_runs):
    tmp_path, args, done, files = pushed_runs[recipe]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pushed to" in done.stdout and SECRET not in done.stdout + done.stderr
    output_dir = (
        next(args[i + 1] for i, a in enumerate(args) if a == "--output_dir") if "--output_dir" in args else None
    )
    output_dir = output_dir or str(tmp_path / "mtl")  # mtl_config's output_dir
    pushed_results = json.loads(files["all_results.json"])
    assert pushed_results == json.loads((tmp_path / output_dir / "all_results.json").read_text())
    assert {"README.md", "run_config.yaml"} <= set(files)
    events = list((tmp_path / output_dir).rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 0, f"{recipe}: --report_to tensorboard wrote nothing"
