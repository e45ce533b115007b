"""Distillation on TREC-6 and CoNLL-2003: smaller students vs their teacher, side by side in one run.

    python benchmarks/bench_distill.py --workdir runs/bench_distill   # full data (hours on 2 CPU cores)
    python benchmarks/bench_distill.py --quick    # 300 training examples, 1 epoch: a smoke run

Per task: MiniLM (6 layers) fine-tuned is the teacher; students of 2 and 3 layers cut from it
(`--student_layers`, weights copied) are trained (a) on the labels only (`--alpha 0`) and (b) with
distillation, same seed, epochs and learning rate. Then all-mpnet-base-v2 (12 layers) fine-tuned
teaches the 6-layer MiniLM through another tokenizer; MiniLM's own fine-tuning is that student's
labels-only baseline. Every system trains in its own process (`_run.py`); the teachers' logits are
computed once per task and shared through one cache. Inference throughput of every saved model is
then measured here, in one process, on the same test texts (tokenized, batches of 64, best of
`--rounds`, round-robin over models so background load hits all alike).
With `--workdir`, a system whose folder already holds its result (`bench_row.json`) is not trained
again, so a long run can be split (`--skip_mpnet` first, then again without it) or resumed.
`--student_seeds 42 43 44` trains every cut student once per seed (the teachers once): the table gives
mean ± std over seeds and the gain over labels-only paired by seed; the first seed's models are timed.
`--transfer_file` gives the distilled cut students unlabelled text that the teacher labels (a transfer
set, e.g. AG News descriptions for CoNLL's news); `--distill_epochs` sets their epochs apart, since an
epoch then holds more rows.
Writes benchmarks/results/distill[_quick].json after every system and prints a markdown table.
"""

import json
import tempfile
import time
from pathlib import Path

from _common import (
    TASKS,
    benchmark_parser,
    group_rows,
    markdown_table,
    mean_std,
    results_path,
    run_recipe,
    write_results,
)

MINILM, MPNET = "sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-mpnet-base-v2"


def test_inputs(task: str, limit: int | None) -> list:
    """The test split as the recipes read it: texts (classification) or word lists (NER)."""
    from nlptransfer import read_file

    path = TASKS[task]["args"][TASKS[task]["args"].index("--test_file") + 1]
    rows = read_file(path).rows[:limit]
    return [row["tokens"] for row in rows] if task == "conll2003" else [row["text"] for row in rows]


def throughput(
    folders: dict[str, Path], inputs: list, rounds: int, threads: int | None = None, batch_size: int = 64
) -> dict[str, dict]:
    """Examples per second of each saved model's forward pass over `inputs` (pre-tokenized by its own
    tokenizer, longest first), the best of `rounds`; models take turns within each round."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from nlptransfer import count_parameters
    from nlptransfer.training import cpu_cores

    torch.set_num_threads(threads or cpu_cores())
    words = isinstance(inputs[0], list)
    auto = AutoModelForTokenClassification if words else AutoModelForSequenceClassification
    prepared = {}
    for name, folder in folders.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = auto.from_pretrained(folder).eval()
        encoded = tokenizer(inputs, is_split_into_words=words, truncation=True, max_length=128)
        order = sorted(range(len(inputs)), key=lambda i: -len(encoded["input_ids"][i]))
        batches = [
            tokenizer.pad({k: [encoded[k][i] for i in order[s : s + batch_size]] for k in encoded}, return_tensors="pt")
            for s in range(0, len(order), batch_size)
        ]
        prepared[name] = (model, batches)
    best = {name: float("inf") for name in folders}
    with torch.inference_mode():
        for model, batches in prepared.values():
            model(**batches[-1])  # warm-up
        for _ in range(rounds):
            for name, (model, batches) in prepared.items():
                start = time.perf_counter()
                for batch in batches:
                    model(**batch)
                best[name] = min(best[name], time.perf_counter() - start)
    return {
        name: {"examples_per_second": len(inputs) / best[name], "parameters": count_parameters(model)[1]}
        for name, (model, _) in prepared.items()
    }


def folder_name(model: str, seed: int | None = None, first_seed: int | None = None) -> str:
    name = model.replace(" ", "_").replace("←", "from")
    return name if seed is None or seed == first_seed else f"{name}_seed{seed}"


def settings(flags: list[str]) -> dict[str, str]:
    """What a run's flags set, the last value of a repeated flag winning (as in the recipes' parser); paths
    reduced to their last part (a workdir may move) and --cpu_threads left out (it does not change the run)."""
    values = dict(zip(flags[::2], flags[1::2]))
    values.pop("--cpu_threads", None)
    paths = ("--teacher_name_or_path", "--teacher_cache_dir", "--transfer_file")
    return {k: Path(v).name if k in paths else v for k, v in values.items()}


def plan(task_dir: Path, args) -> list[dict]:
    """One task's systems in training order: recipe, flags, and what the table says about each."""
    distil = ["--alpha", str(args.alpha), "--temperature", str(args.temperature)]
    cache = ["--teacher_cache_dir", str(task_dir / "teacher_cache")]  # each teacher's logits computed once
    distilled_only = ["--transfer_file", args.transfer_file] if args.transfer_file else []
    if args.transfer_file and args.max_transfer_samples:
        distilled_only += ["--max_transfer_samples", str(args.max_transfer_samples)]
    if args.distill_epochs:
        distilled_only += ["--num_train_epochs", str(args.distill_epochs)]  # the last value of a flag wins
    minilm, mpnet = "MiniLM-6 teacher", "mpnet-12 teacher"
    systems = [
        {
            "model": minilm,
            "recipe": "finetune.py",
            "flags": ["--model_name_or_path", MINILM, "--learning_rate", str(args.teacher_lr)],
            "layers": 6,
            "init": "pretrained",
            "training": "labels",
        }
    ]
    cut = [
        "--teacher_name_or_path",
        str(task_dir / folder_name(minilm)),
        "--learning_rate",
        str(args.student_lr),
        "--num_train_epochs",
        str(args.student_epochs or args.epochs),
    ]
    for seed in args.student_seeds:  # the teachers train once (--seed); the cut students once per seed
        for layers in args.student_layers:
            n, init = len(layers.split(",")), f"teacher layers {layers}"
            common = {"layers": n, "init": init, "teacher": minilm, "recipe": "distill.py", "seed": seed}
            cut_seed = [*cut, "--student_layers", layers, "--seed", str(seed)]
            systems.append(
                {"model": f"{n}L labels", "flags": [*cut_seed, "--alpha", "0"], "training": "labels", **common}
            )
            systems.append(
                {
                    "model": f"{n}L distilled",
                    "flags": [*cut_seed, *distil, *cache, *distilled_only],
                    "training": "distilled",
                    "baseline": f"{n}L labels",
                    **common,
                }
            )
    if not args.skip_mpnet:
        systems.append(
            {
                "model": mpnet,
                "recipe": "finetune.py",
                "flags": [
                    "--model_name_or_path",
                    MPNET,
                    "--learning_rate",
                    str(args.mpnet_lr),
                    "--num_train_epochs",
                    str(args.mpnet_epochs or args.epochs),
                ],
                "layers": 12,
                "init": "pretrained",
                "training": "labels",
            }
        )
        systems.append(
            {
                "model": "MiniLM-6 ← mpnet",
                "recipe": "distill.py",
                "flags": [
                    "--teacher_name_or_path",
                    str(task_dir / folder_name(mpnet)),
                    "--model_name_or_path",
                    MINILM,
                    "--learning_rate",
                    str(args.teacher_lr),
                    *distil,
                    *cache,
                ],
                "layers": 6,
                "init": "pretrained MiniLM",
                "training": "distilled",
                "teacher": mpnet,
                "baseline": minilm,  # MiniLM fine-tuned on the labels: the same student without a teacher
            }
        )
    return systems


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per (task, model): the score's mean and std over seeds, the share of the teacher's score,
    and the mean (and std) of the per-seed gain over the same student trained on labels only."""
    summary = []
    for runs in group_rows(rows, "task", "model").values():
        scores = [r["score"] for r in runs]
        entry = {k: v for k, v in runs[0].items() if k not in ("score", "seed", "args", "validation_score")}
        entry |= {"scores": scores, "seeds": [r.get("seed") for r in runs]}
        entry["score"], entry["score_std"] = mean_std(scores)
        summary.append(entry)
    by_key = {(e["task"], e["model"]): e for e in summary}
    for entry in summary:
        teacher = by_key.get((entry["task"], entry.get("teacher") or entry["model"]))
        if teacher and "examples_per_second" in entry and "examples_per_second" in teacher:
            entry["retained_percent"] = 100 * entry["score"] / teacher["score"] if teacher["score"] else None
            entry["speedup_vs_teacher"] = entry["examples_per_second"] / teacher["examples_per_second"]
        baseline = by_key.get((entry["task"], entry.get("baseline")))
        if baseline:
            paired = {
                r.get("seed"): r["score"] for r in rows if (r["task"], r["model"]) == (entry["task"], baseline["model"])
            }
            gains = [
                100 * (r["score"] - paired[r.get("seed")])
                for r in rows
                if (r["task"], r["model"]) == (entry["task"], entry["model"]) and r.get("seed") in paired
            ]
            if not gains:  # a baseline trained with another seed (MiniLM fine-tuned once, for the mpnet pair)
                gains = [100 * (entry["score"] - baseline["score"])]
            entry["delta_vs_labels_only_points"], entry["delta_std_points"] = mean_std(gains)
    return summary


def spread(value: float, std: float, fmt: str, seeds: int) -> str:
    """`value ± std` over several seeds, the value alone for one."""
    return f"{value:{fmt}}" + (f" ± {std:{fmt.lstrip('+')}}" if seeds > 1 else "")


def write(output: Path, quick: bool, rows: list[dict]) -> tuple[dict, list[dict]]:
    """Write the rows so far, their summary and the targets it meets (throughput comes once a task is done)."""
    summary = summarise(rows)
    smallest = [e for e in summary if e["training"] == "distilled" and e["layers"] == 2 and "speedup_vs_teacher" in e]
    targets = {
        "2-layer distilled keeps >= 97% of the teacher at >= 2.5x throughput": {
            e["task"]: (e["retained_percent"] or 0) >= 97 and e["speedup_vs_teacher"] >= 2.5 for e in smallest
        },
        "distillation beats labels-only by >= 1 point on some task": any(
            e.get("delta_vs_labels_only_points", 0) >= 1 for e in summary
        ),
    }
    write_results(output, {"quick": quick, "targets": targets, "summary": summary, "rows": rows})
    return targets, summary


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="300 training examples, 1 epoch",
        tasks=list(TASKS),
        seed=42,
        workdir="keep every model here (default: a temporary folder)",
        cpu_threads="torch threads (default: every core)",
    )
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--teacher_lr", type=float, default=1e-4, help="MiniLM teacher (the recipe's default)")
    parser.add_argument("--mpnet_lr", type=float, default=5e-5, help="all-mpnet-base-v2 teacher")
    parser.add_argument("--student_lr", type=float, default=1e-4)
    parser.add_argument(
        "--student_epochs", type=float, default=None, help="epochs of the cut students (default: --epochs)"
    )
    parser.add_argument(
        "--mpnet_epochs", type=float, default=None, help="epochs of the mpnet teacher (default: --epochs)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the soft-target loss")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument(
        "--student_layers",
        nargs="+",
        default=["0,3", "0,2,4"],
        help="teacher layers of each cut student (every 3rd / every 2nd from the bottom)",
    )
    parser.add_argument(
        "--student_seeds", nargs="+", type=int, default=None, help="seeds of the cut students (default: --seed)"
    )
    parser.add_argument(
        "--transfer_file", default=None, help="unlabelled text the teacher labels for the distilled cut students"
    )
    parser.add_argument("--max_transfer_samples", type=int, default=None, help="first N rows of --transfer_file")
    parser.add_argument(
        "--distill_epochs", type=float, default=None, help="epochs of the distilled cut students (default: theirs)"
    )
    parser.add_argument("--skip_mpnet", action="store_true", help="leave out the mpnet -> MiniLM pair")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per model (best is kept)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.student_epochs, args.mpnet_epochs = 1, None, None
    args.student_seeds = args.student_seeds or [args.seed]
    common = ["--seed", str(args.seed), "--num_train_epochs", str(args.epochs)]
    if args.cpu_threads:
        common += ["--cpu_threads", str(args.cpu_threads)]
    if args.quick:
        common += ["--max_train_samples", "300", "--max_eval_samples", "300", "--max_test_samples", "300"]
    output = results_path(args, "distill")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_distill_") as scratch:
        for task in args.tasks:
            spec, task_dir = TASKS[task], Path(args.workdir or scratch) / task
            folders = {}  # the first seed's model of each system: the one whose throughput is timed
            for system in plan(task_dir, args):
                name, seed = system["model"], system.get("seed", args.seed)
                folder = task_dir / folder_name(name, seed, args.seed)
                folders.setdefault(name, folder)
                done = folder / "bench_row.json"
                if done.exists():
                    row = json.loads(done.read_text())
                    stale = settings(row["args"]).items() ^ settings([*common, *system["flags"]]).items()
                    if stale:  # e.g. a student trained with another --student_lr: never reuse it silently
                        raise SystemExit(
                            f"{done} was trained with other settings ({sorted(stale)}): use another --workdir"
                        )
                    print(f"{task} / {name} / seed {seed}: already trained in {folder}", flush=True)
                    rows.append({"seed": seed, **row})
                    continue
                print(f"running {task} / {name} / seed {seed} ...", flush=True)
                flags = [*spec["args"], *common, *system.pop("flags")]
                results = run_recipe(system.pop("recipe"), flags, folder)
                rows.append(
                    {
                        "task": task,
                        "metric": spec["metric"],
                        "score": results[f"test_{spec['metric']}"],
                        "validation_score": results.get(f"eval_{spec['metric']}"),
                        "train_runtime_s": results["train_runtime"],
                        "teacher_targets": results.get("teacher_targets"),
                        "teacher_targets_s": results.get("teacher_targets_seconds"),
                        "transfer_rows": results.get("transfer_rows", 0),
                        "peak_rss_mib": results["peak_rss_mib"],
                        "args": flags[len(spec["args"]) :],
                        "seed": seed,
                        **system,
                    }
                )
                done.write_text(json.dumps(rows[-1], indent=2) + "\n")
                write(output, args.quick, rows)

            print(f"measuring inference throughput on {task} ...", flush=True)
            speed = throughput(folders, test_inputs(task, 300 if args.quick else None), args.rounds, args.cpu_threads)
            for row in rows:
                if row["task"] == task:
                    row.update(speed[row["model"]])  # every seed of a model has the same architecture
            targets, summary = write(output, args.quick, rows)

    table = []
    for e in summary:
        seeds = len(e["scores"])
        delta = (
            spread(e["delta_vs_labels_only_points"], e["delta_std_points"], "+.2f", seeds)
            if "delta_vs_labels_only_points" in e
            else "-"
        )
        retained = f"{e['retained_percent']:.1f}%" if e.get("retained_percent") is not None else "-"
        table.append(
            [
                e["task"],
                e["model"],
                e["layers"],
                e["init"],
                f"{e['metric']} {spread(e['score'], e['score_std'], '.4f', seeds)}",
            ]
            + [retained, delta, f"{e['parameters'] / 1e6:.1f}M", f"{e['examples_per_second']:.0f}"]
            + [f"{e['speedup_vs_teacher']:.2f}x"]
        )
    header = ["task", "model", "layers", "init", "test score", "% of teacher", "Δ vs labels only", "parameters"]
    print("\n" + markdown_table([*header, "examples/s", "speed-up"], table))
    for target, met in targets.items():
        print(f"- {target}: {met}")
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
