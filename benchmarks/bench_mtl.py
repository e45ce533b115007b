"""Multi-task vs single-task MiniLM on TREC-6 + SST-2 + CoNLL-2003, side by side in one run.

    python benchmarks/bench_mtl.py            # the shipped config, 3 epochs (about 35 min on 2 CPU cores)
    python benchmarks/bench_mtl.py --quick    # 300 examples per task, 1 epoch: a smoke run
    python benchmarks/bench_mtl.py --seeds 42 43 44 --workdir runs/bench_mtl   # mean ± std over seeds

Per seed (`--seeds`), one `recipes/mtl.py --compare_single_task` run trains the multi-task model and
then each task alone for as many updates as that task got in the multi-task run (same seed and settings);
scores are means over seeds, deltas paired by seed. With `--born_again`, each seed's single-task models then
teach a second multi-task model (`recipes/mtl.py --teachers`, same seed and config: the same updates per
task), and that one is compared with them (the plain multi-task scores are kept beside it);
`--born_again trec sst2` gives only those tasks a teacher. With
`--single_task_from runs/other`, a setting that only changes multi-task options (a task's weight or
private_layers) is compared with that workdir's single-task runs instead of training them again
(they do not depend on those options; the configs and the updates per task are checked). The first
seed's models are the ones served. Then, in this
process, serving throughput: one multi-task `predict` over all three tasks vs the three single-task
models each predicting its task, on the same texts, timed back to back in each of `--repeats` rounds
after an untimed one (the speedup is the median of the rounds' ratios; a finished workdir re-measures
only this; it must be given the config its runs were trained with). Writes benchmarks/results/mtl[_quick].json and
prints a markdown table.
"""

import json
import shlex
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

from nlptransfer import TASK_KINDS, MultiTaskArguments, MultiTaskModel
from nlptransfer.config import expand_variables
from nlptransfer.readers import read_file
from nlptransfer.training import cpu_cores

from _common import ROOT, benchmark_parser, markdown_table, mean_std, results_path, run_recipe, write_results

DEFAULT_CONFIG = ROOT / "recipes" / "configs" / "trec_sst2_conll.yaml"


def run_mtl(config: Path, output_dir: Path, seed: int, extra: list[str], single_task: bool = True) -> dict:
    args = ["--config", str(config), "--compare_single_task", str(single_task).lower(), "--seed", str(seed), *extra]
    return run_recipe("mtl.py", args, output_dir)


# what a task may set without changing its single-task run (the single-task comparison drops both)
MULTI_TASK_ONLY = ("weight", "private_layers")


def single_task_settings(config: dict) -> dict:
    tasks = [{k: v for k, v in task.items() if k not in MULTI_TASK_ONLY} for task in config["tasks"]]
    return {**{k: v for k, v in config.items() if k != "output_dir"}, "tasks": tasks}


class _Absent:
    """A field one config lacks (unequal to any value the other may hold, "absent" included)."""

    def __repr__(self) -> str:
        return "absent"


ABSENT = _Absent()


def config_changes(old: dict, new: dict, where: str = "") -> list[str]:
    """Each field that differs between two configs, as `path: old -> new` (tasks by index and name)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for key in dict.fromkeys([*old, *new])
            for change in config_changes(old.get(key, ABSENT), new.get(key, ABSENT), f"{where}.{key}".lstrip("."))
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            change
            for i, (a, b) in enumerate(zip(old, new))
            for change in config_changes(
                a, b, f"{where}[{i}]" + (f" ({a['name']})" if isinstance(a, dict) and "name" in a else "")
            )
        ]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def serving_texts(config: dict, per_task: int) -> list[str]:
    """The same inputs for every system: the first test rows of each task, as plain text."""
    texts = []
    for task in config["tasks"]:
        rows = read_file(str(ROOT / task["test_file"])).rows[:per_task]
        texts += [" ".join(row["tokens"]) if "tokens" in row else row["text"] for row in rows]
    return texts


def paired_throughput(multi, singles, texts: list[str], repeats: int) -> tuple[float, float, list[float]]:
    """(multi texts/s, singles texts/s, each round's speedup): medians over `repeats` rounds, each round timing
    both systems back to back, so a slow spell of the machine slows both sides of a round's ratio alike."""
    multi(texts), singles(texts)  # an untimed round: a first timed round's ratio came out ~13% below the rest
    rounds = []
    for _ in range(repeats):
        times = []
        for predict in (multi, singles):
            start = time.perf_counter()
            predict(texts)
            times.append(time.perf_counter() - start)
        rounds.append(times)
    multi_tps = len(texts) / statistics.median(t for t, _ in rounds)
    singles_tps = len(texts) / statistics.median(t for _, t in rounds)
    return multi_tps, singles_tps, [t_single / t_multi for t_multi, t_single in rounds]


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="300 examples per task, 1 epoch",
        seeds=[42],
        seeds_help="one multi-task run (+ singles) per seed",
        workdir="keep the runs here; a finished seed is not trained again",
        cpu_threads="torch threads of the serving measurement (default: every core)",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (on a GPU; 1 for CPU timings)")
    parser.add_argument(
        "--recipe_args",
        default="",
        help='more flags for recipes/mtl.py, e.g. "--task_sampling uniform" (compare settings: one workdir each)',
    )
    parser.add_argument(
        "--born_again",
        nargs="*",
        default=None,
        metavar="TASK",
        help="distil each seed's single-task models into a second multi-task model and compare that one; "
        "with task names, only those tasks get a teacher (the others learn from their labels alone)",
    )
    parser.add_argument(
        "--single_task_from",
        default=None,
        help="another --workdir of this benchmark whose config differs only in multi-task settings (a task's weight "
        "or private_layers): its single-task runs are compared with, not trained again",
    )
    parser.add_argument("--serving_texts_per_task", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5, help="serving rounds (each times both systems)")
    args = parser.parse_args()
    config = expand_variables(yaml.safe_load(Path(args.config).read_text()), args.config)  # ${NLPTRANSFER_DATA:-...}
    if args.quick:
        config["num_train_epochs"] = 1
        for task in config["tasks"]:
            task.update(max_train_samples=300, max_eval_samples=200, max_test_samples=200)
    torch.set_num_threads(args.cpu_threads or cpu_cores())

    with tempfile.TemporaryDirectory(prefix="bench_mtl_") as scratch:
        workdir = Path(args.workdir or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        stored = workdir / "config.yaml"
        if stored.is_file() and any(workdir.glob("seed*/bench_result*.json")):  # finished runs: same config only
            changes = config_changes(yaml.safe_load(stored.read_text()), config)
            if changes:
                raise SystemExit(
                    f"--workdir {workdir}: its finished runs were trained with {stored}, not with --config "
                    f"{args.config}: {'; '.join(changes)}. Use another --workdir (one per setting)."
                )
        stored.write_text(yaml.safe_dump(config, sort_keys=False))
        if args.single_task_from:
            theirs = yaml.safe_load((Path(args.single_task_from) / "config.yaml").read_text())
            changes = config_changes(single_task_settings(theirs), single_task_settings(config))
            if changes:
                raise SystemExit(
                    f"--single_task_from {args.single_task_from}: its config differs in more than {MULTI_TASK_ONLY}: "
                    f"{'; '.join(changes)}"
                )

        born_again = args.born_again  # None: no born-again run; []: every task gets a teacher
        names = [task.name for task in MultiTaskArguments(tasks=json.dumps(config["tasks"])).task_args]
        if set(born_again or []) - set(names):
            parser.error(f"--born_again {' '.join(born_again)}: the tasks of {args.config} are {names}")
        born_again_name = "_".join(["born_again", *sorted(born_again or [])])  # one folder per teacher set
        taught = born_again or names  # the tasks that get a teacher in the born-again run

        def single_task_runs(seed: int) -> Path:
            """The folder of `seed`'s single-task runs: this workdir's, or --single_task_from's."""
            return Path(args.single_task_from or workdir) / f"seed{seed}" / "mtl" / "single_task"

        def train(seed: int) -> tuple[dict, dict, dict]:
            """(the compared multi-task run of `seed`, its single-task runs, the plain multi-task run), each
            trained here unless already done; without --born_again the first and last are the same run."""
            folder = workdir / f"seed{seed}" / "mtl"
            done = workdir / f"seed{seed}" / "bench_result.json"  # the run's results + wall time and peak RSS
            extra = shlex.split(args.recipe_args)
            if not done.is_file():
                then = "" if args.single_task_from else ", then each task alone"
                print(f"seed {seed}: training the multi-task model{then} ...", flush=True)
                result = run_mtl(workdir / "config.yaml", folder, seed, extra, single_task=not args.single_task_from)
                done.write_text(json.dumps(result, indent=2) + "\n")
            plain = json.loads(done.read_text())
            single = {
                name: json.loads((single_task_runs(seed) / name / "all_results.json").read_text())
                for name in plain["tasks"]
            }
            for name, run in single.items():  # the same updates per task, or the comparison is off
                if run["train_steps"] != plain["task_batches"][name]:
                    raise SystemExit(
                        f"{single_task_runs(seed)}: {name} trained {run['train_steps']} steps alone, not {plain['task_batches'][name]}"
                    )
            if born_again is None:
                return plain, single, plain
            done = workdir / f"seed{seed}" / f"bench_result_{born_again_name}.json"
            if not done.is_file():
                print(
                    f"seed {seed}: single-task models ({', '.join(taught)}) teach a second multi-task model ...",
                    flush=True,
                )
                teachers = ",".join(f"{name}={single_task_runs(seed) / name}" for name in taught)
                config = ["--config", str(workdir / "config.yaml"), "--seed", str(seed), "--teachers", teachers]
                result = run_recipe("mtl.py", [*config, *extra], workdir / f"seed{seed}" / born_again_name)
                done.write_text(json.dumps(result, indent=2) + "\n")
            return json.loads(done.read_text()), single, plain

        with ThreadPoolExecutor(args.jobs) as pool:
            runs = dict(zip(args.seeds, pool.map(train, args.seeds)))
        results, single, _ = runs[args.seeds[0]]  # the first seed's models are the ones served and timed
        print("measuring serving throughput ...", flush=True)
        texts = serving_texts(config, args.serving_texts_per_task)
        first = workdir / f"seed{args.seeds[0]}"
        multi = MultiTaskModel.from_pretrained(first / (born_again_name if born_again is not None else "mtl"))
        singles = {name: MultiTaskModel.from_pretrained(single_task_runs(args.seeds[0]) / name) for name in single}
        multi_tps, singles_tps, speedups = paired_throughput(
            lambda batch: multi.predict(batch, tasks=multi.task_names),
            lambda batch: [model.predict(batch) for model in singles.values()],
            texts,
            args.repeats,
        )
    rows = []
    for name in results["tasks"]:
        kind = next(t["task_type"] for t in config["tasks"] if t["name"] == name)
        metric = TASK_KINDS[kind].default_metric
        m = [runs[seed][0][f"test_{name}_{metric}"] for seed in args.seeds]
        s = [runs[seed][1][name][f"test_{name}_{metric}"] for seed in args.seeds]
        delta, delta_std = mean_std(100 * (a - b) for a, b in zip(m, s))  # paired by seed
        # the same on validation: what choosing between settings may look at (test never)
        val = [
            100 * (runs[seed][0][f"eval_{name}_{metric}"] - runs[seed][1][name][f"eval_{name}_{metric}"])
            for seed in args.seeds
        ]
        plain = [runs[seed][2][f"test_{name}_{metric}"] for seed in args.seeds]
        rows.append(
            {
                "task": name,
                "metric": metric,
                "multi_task": statistics.mean(m),
                "plain_multi_task": statistics.mean(plain),  # = multi_task unless --born_again
                "single_task": statistics.mean(s),
                "delta_points": delta,
                "multi_task_scores": m,
                "single_task_scores": s,
                "delta_std_points": delta_std,
                "validation_delta_points": statistics.mean(val),
                "multi_task_updates": results["task_batches"][name],
                "single_task_updates": single[name]["train_steps"],
            }
        )
    # the average over tasks, per seed: its spread says how far the average Δ can be trusted
    per_seed = [
        statistics.mean(100 * (r["multi_task_scores"][i] - r["single_task_scores"][i]) for r in rows)
        for i in range(len(args.seeds))
    ]
    average_delta, average_std = mean_std(per_seed)
    summary = {
        "average_delta_points": average_delta,
        "average_delta_per_seed_points": per_seed,
        "average_delta_stderr_points": average_std / len(per_seed) ** 0.5,
        "multi_task_average": statistics.mean(r["multi_task"] for r in rows),
        "single_task_average": statistics.mean(r["single_task"] for r in rows),
        "worst_task_delta_points": min(r["delta_points"] for r in rows),
        "multi_task_parameters": results["total_parameters"],
        "single_task_parameters": sum(s["total_parameters"] for s in single.values()),
        "multi_task_train_s": results["train_runtime"],
        "single_task_train_s": sum(s["train_runtime"] for s in single.values()),
        "serving_texts": len(texts),
        "multi_task_texts_per_s": multi_tps,
        "single_task_models_texts_per_s": singles_tps,
        "peak_rss_mib": results["peak_rss_mib"],
    }
    summary["parameter_ratio"] = summary["multi_task_parameters"] / summary["single_task_parameters"]
    summary["serving_speedup"] = statistics.median(speedups)
    summary["serving_round_speedups"] = speedups
    summary["targets"] = {
        "average >= single-task average": summary["multi_task_average"] >= summary["single_task_average"],
        "no task more than 0.5 points below": summary["worst_task_delta_points"] >= -0.5,
        "parameters <= 0.4x three models": summary["parameter_ratio"] <= 0.4,
        "serving >= 2.5x three models": summary["serving_speedup"] >= 2.5,
    }
    output = results_path(args, "mtl")
    summary["validation_average_delta_points"] = statistics.mean(r["validation_delta_points"] for r in rows)
    record = {
        "quick": args.quick,
        "seeds": args.seeds,
        "config": config,
        "recipe_args": args.recipe_args,
        "born_again": args.born_again,
        "single_task_from": args.single_task_from,
        "rows": rows,
        "summary": summary,
    }
    write_results(output, record)

    kind = (
        f"born-again multi-task (single-task teachers: {', '.join(taught)})" if born_again is not None else "multi-task"
    )
    print(
        f"\nseeds {args.seeds}: {kind}; means (Δ: mean ± std of the per-seed difference; average: ± its standard error)"
    )
    table = []
    for r in rows:
        flag = " negative transfer" if r["delta_points"] < 0 else ""
        spread = f" ± {r['delta_std_points']:.2f}" if len(args.seeds) > 1 else ""
        table.append(
            [r["task"], r["metric"], f"{r['multi_task']:.4f}", f"{r['single_task']:.4f}"]
            + [f"{r['delta_points']:+.2f}{spread}{flag}", f"{r['validation_delta_points']:+.2f}"]
        )
    average_spread = f" ± {summary['average_delta_stderr_points']:.2f}" if len(args.seeds) > 1 else ""
    table.append(
        ["**average**", "", f"{summary['multi_task_average']:.4f}", f"{summary['single_task_average']:.4f}"]
        + [f"{average_delta:+.2f}{average_spread}", f"{summary['validation_average_delta_points']:+.2f}"]
    )
    header = ["task", "metric", "multi-task", "single-task (same updates)", "Δ (points)", "Δ validation"]
    print(markdown_table(header, table))
    costs = [
        ["parameters", f"{summary['multi_task_parameters']:,}", f"{summary['single_task_parameters']:,}"]
        + [f"{summary['parameter_ratio']:.2f}x"],
        ["training time", f"{summary['multi_task_train_s']:.0f} s", f"{summary['single_task_train_s']:.0f} s"]
        + [f"{summary['multi_task_train_s'] / summary['single_task_train_s']:.2f}x"],
        [f"serving, texts/s ({len(texts)} texts, all 3 tasks)", f"{multi_tps:.1f}", f"{singles_tps:.1f}"]
        + [f"{summary['serving_speedup']:.2f}x (median of {args.repeats} paired rounds)"],
    ]
    print("\n" + markdown_table(["", "multi-task (1 model)", "single-task (3 models)", "ratio"], costs))
    print("\n" + "\n".join(f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in summary["targets"].items()))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
