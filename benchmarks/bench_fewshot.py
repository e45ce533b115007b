"""Few-shot transfer to unseen classes: TREC's 50 fine labels, 5-way 1-shot and 5-shot episodes.

    python benchmarks/bench_fewshot.py --workdir runs/bench_fewshot   # 200 episodes per setting (hours on 2 CPU cores)
    python benchmarks/bench_fewshot.py --quick      # 10 episodes, 20 meta-steps, 2 steps each: a smoke run

The fine classes are split by `--class_split_seed` into meta-train and meta-test groups
(`nlptransfer.meta.episodes.split_classes`, the same call recipes/meta.py makes; its saved split is
checked against this one). Starting points, each trained only on rows of the meta-train classes:
  pretrained    all-MiniLM-L6-v2 as it is
  multi-task    recipes/finetune.py on the meta-train classes' rows (--label_column_name fine_label)
  meta-<alg>    recipes/meta.py with each of --algorithms (FOMAML, Reptile)
Every start is then scored on the SAME meta-test episodes (a pure function of --episode_seed and
the episode index): fine-tuned on the support set with the same budget (--finetune_steps at
--finetune_lr, a class-mean head, AdamW), and as a prototype classifier (nearest class mean) on
frozen features. Meta-test episodes draw on train.jsonl rows of the meta-test classes, which no
start has seen; a class with fewer than K + --query rows cannot be sampled for that K.
Reported: mean query accuracy ± 95% CI (1.96 * std / sqrt(n)) per start and setting, and paired
differences (same episodes) of the meta-learned starts against the others.
Training runs in its own process per start (`_run.py`); with --workdir, trained starts and finished
evaluations are reused. Writes benchmarks/results/fewshot[_quick].json as it goes.
"""

import json
import tempfile
import time
from pathlib import Path

from _common import DATA, benchmark_parser, markdown_table, results_path, run_recipe, write_results

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TREC_TRAIN = DATA / "trec" / "train.jsonl"


def train_starts(args, workdir: Path, meta_train: list[str], meta_test: list[str]) -> list[dict]:
    """The starting points in order; each trained one runs in its own process, once per workdir."""
    from nlptransfer import read_file

    starts = [{"start": "pretrained", "folder": MINILM, "training": "none"}]
    common = ["--seed", str(args.seed), "--max_seq_length", str(args.max_seq_length)]
    if args.cpu_threads:
        common += ["--cpu_threads", str(args.cpu_threads)]

    data = workdir / "meta_train_rows" / "train.jsonl"  # the multi-task start sees meta-train classes only
    data.parent.mkdir(parents=True, exist_ok=True)
    kept = set(meta_train)
    data.write_text(
        "".join(json.dumps(row) + "\n" for row in read_file(str(TREC_TRAIN)).rows if row["fine_label"] in kept)
    )
    budget = (
        ["--max_steps", str(args.multitask_steps)]
        if args.multitask_steps
        else ["--num_train_epochs", str(args.multitask_epochs)]
    )
    flags = ["--model_name_or_path", MINILM, "--train_file", str(data), "--label_column_name", "fine_label"]
    plan = [("multi-task", "finetune.py", [*flags, *budget, "--learning_rate", str(args.multitask_lr), *common])]
    for algorithm in args.algorithms:
        meta_flags = [
            *("--model_name_or_path", MINILM, "--train_file", str(TREC_TRAIN), "--label_column_name", "fine_label"),
            *("--meta_test_classes", str(args.meta_test_classes), "--class_split_seed", str(args.class_split_seed)),
            *("--algorithm", algorithm, "--n_way", str(args.n_way), "--k_shot", str(args.meta_k_shot)),
            *("--query", str(args.query), "--meta_steps", str(args.meta_steps)),
            *("--meta_batch_size", str(args.meta_batch_size), "--inner_steps", str(args.inner_steps)),
            *("--inner_lr", str(args.inner_lr), "--logging_steps", str(max(1, args.meta_steps // 10))),
        ]
        plan.append((f"meta-{algorithm}", "meta.py", [*meta_flags, *common]))

    for name, recipe, flags in plan:
        folder = workdir / name
        done = folder / "bench_start.json"
        if done.exists():
            print(f"{name}: already trained in {folder}", flush=True)
        else:
            print(f"training {name} ...", flush=True)
            results = run_recipe(recipe, flags, folder)
            summary = {
                "start": name,
                "folder": str(folder),
                "training": recipe,
                "args": flags,
                "train_runtime_s": results.get("train_runtime", results.get("meta_train_runtime")),
                "peak_rss_mib": results["peak_rss_mib"],
                "meta_train_query_accuracy": results.get("meta_train_query_accuracy"),
            }
            done.write_text(json.dumps(summary, indent=2) + "\n")
        summary = json.loads(done.read_text())
        if recipe == "meta.py":  # the recipe split the classes itself: it must be the same split
            saved = json.loads((folder / "nlptransfer_meta.json").read_text())
            if saved["meta_test_classes"] != meta_test or set(saved["meta_train_classes"]) & set(meta_test):
                raise RuntimeError(f"{folder}: its meta-test classes differ from this benchmark's split")
        starts.append(summary)
    return starts


def evaluate_start(start: dict, args, records, meta_test: list[str], cache: Path) -> list[dict]:
    """Per shot: the accuracy of every meta-test episode, fine-tuned and as a frozen prototype classifier."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from nlptransfer import resolve_model
    from nlptransfer.meta import EpisodeLearner, episode_accuracy, prototype_accuracy
    from nlptransfer.meta.episodes import ClassPool, EpisodeSampler

    path = resolve_model(start["folder"])
    encoder, info = AutoModel.from_pretrained(path, output_loading_info=True)
    if info["missing_keys"]:  # e.g. a classifier folder whose encoder weights did not map: a random start
        raise RuntimeError(f"{path}: encoder weights missing: {info['missing_keys'][:5]}")
    encoder.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # like recipes/meta.py's start_meta_run
    tokenizer = AutoTokenizer.from_pretrained(path)
    pool = ClassPool.from_records(records, tokenizer, args.max_seq_length, label_column="fine_label").subset(meta_test)
    learner = EpisodeLearner(encoder, pool)
    budget = {
        k: getattr(args, k) for k in ("episodes", "n_way", "query", "episode_seed", "finetune_steps", "finetune_lr")
    }
    rows = []
    for shot in args.shots:
        done = cache / f"{start['start']}_{shot}shot.json"
        if done.exists() and json.loads(done.read_text())["budget"] == budget:
            rows.append(json.loads(done.read_text()))
            continue
        sampler = EpisodeSampler(pool.class_rows, args.n_way, shot, args.query, seed=args.episode_seed)
        began, finetuned, prototype = time.perf_counter(), [], []
        for index in range(args.episodes):
            episode = sampler.episode(index)
            prototype.append(prototype_accuracy(learner, episode))
            finetuned.append(episode_accuracy(learner, episode, args.finetune_steps, args.finetune_lr))
            if (index + 1) % 50 == 0:
                print(f"  {start['start']} {shot}-shot: {index + 1} episodes", flush=True)
        row = {
            "start": start["start"],
            "shot": shot,
            "budget": budget,
            "skipped_classes": sampler.skipped,
            "finetuned": finetuned,
            "prototype": prototype,
            "eval_runtime_s": time.perf_counter() - began,
        }
        done.write_text(json.dumps(row) + "\n")
        rows.append(row)
    del encoder, learner
    return rows


def paired(rows: list[dict], a: str, b: str, shot: int, method: str = "finetuned") -> dict | None:
    """Mean ± 95% CI of a - b over the same episodes, in accuracy points."""
    from nlptransfer.meta.episodes import mean_ci95

    by = {(r["start"], r["shot"]): r for r in rows}
    if (a, shot) not in by or (b, shot) not in by:
        return None
    diffs = [100 * (x - y) for x, y in zip(by[a, shot][method], by[b, shot][method])]
    mean, ci = mean_ci95(diffs)
    return {"a": a, "b": b, "shot": shot, "method": method, "diff_points": mean, "ci95_points": ci}


def write(output: Path, args, split: dict, starts: list[dict], rows: list[dict]) -> dict:
    from nlptransfer.meta.episodes import mean_ci95

    for row in rows:
        for method in ("finetuned", "prototype"):
            row[f"{method}_accuracy"], row[f"{method}_ci95"] = mean_ci95(row[method])
    metas = [s["start"] for s in starts if s["start"].startswith("meta-")]
    comparisons = [
        p for m in metas for b in ("pretrained", "multi-task") for shot in args.shots if (p := paired(rows, m, b, shot))
    ]
    five = {(p["a"], p["b"]): p for p in comparisons if p["shot"] == 5}
    targets = {}
    for m in metas:
        if (m, "pretrained") in five:
            targets[f"{m} beats pretrained by >= 5 points (5-way 5-shot, fine-tuned)"] = (
                five[m, "pretrained"]["diff_points"] >= 5
            )
        if (m, "multi-task") in five:
            level = five[m, "multi-task"]
            targets[f"{m} at least level with multi-task (5-shot; paired 95% CI reaches 0 or above)"] = (
                level["diff_points"] + level["ci95_points"] >= 0
            )
    settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "output")}
    write_results(
        output,
        {
            "quick": args.quick,
            "settings": settings,
            "class_split": split,
            "targets": targets,
            "starts": starts,
            "paired": comparisons,
            "rows": rows,
        },
    )
    return {"targets": targets, "paired": comparisons}


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="10 episodes, 20 meta-steps, 2 inner/fine-tuning steps",
        workdir="keep trained starts and evaluations here (reused)",
        cpu_threads="torch threads (default: every core)",
    )
    parser.add_argument("--episodes", type=int, default=200, help="meta-test episodes per setting")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--n_way", type=int, default=5)
    parser.add_argument("--query", type=int, default=5, help="query rows per class and episode")
    parser.add_argument("--meta_test_classes", type=float, default=0.4, help="fraction (or number) of fine classes")
    parser.add_argument("--class_split_seed", type=int, default=0)
    parser.add_argument("--episode_seed", type=int, default=0, help="seed of the meta-test episodes")
    parser.add_argument("--seed", type=int, default=42, help="seed of the training runs")
    parser.add_argument("--finetune_steps", type=int, default=10, help="per-episode fine-tuning steps, every start")
    parser.add_argument("--finetune_lr", type=float, default=1e-4)
    parser.add_argument("--algorithms", nargs="+", default=["fomaml", "reptile"])
    parser.add_argument("--meta_k_shot", type=int, default=5, help="K of the meta-training episodes")
    parser.add_argument("--meta_steps", type=int, default=200)
    parser.add_argument("--meta_batch_size", type=int, default=4)
    parser.add_argument("--inner_steps", type=int, default=5)
    parser.add_argument("--inner_lr", type=float, default=1e-4)
    parser.add_argument("--multitask_epochs", type=float, default=3)
    parser.add_argument("--multitask_steps", type=int, default=None, help="instead of --multitask_epochs")
    parser.add_argument("--multitask_lr", type=float, default=1e-4, help="the fine-tuning recipe's default")
    parser.add_argument("--max_seq_length", type=int, default=64)
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.meta_steps, args.meta_batch_size = 10, 20, 2
        args.inner_steps, args.finetune_steps, args.multitask_steps = 2, 2, 20
    output = results_path(args, "fewshot")

    import torch

    from nlptransfer import read_file
    from nlptransfer.meta.episodes import split_classes
    from nlptransfer.training import cpu_cores

    torch.set_num_threads(args.cpu_threads or cpu_cores())
    records = read_file(str(TREC_TRAIN))
    meta_train, meta_test = split_classes(
        sorted({row["fine_label"] for row in records.rows}), args.meta_test_classes, args.class_split_seed
    )
    split = {"meta_train": meta_train, "meta_test": meta_test}
    print(f"{len(meta_train)} meta-train / {len(meta_test)} meta-test fine classes; meta-test: {meta_test}")

    with tempfile.TemporaryDirectory(prefix="bench_fewshot_") as scratch:
        workdir = Path(args.workdir or scratch)
        starts = train_starts(args, workdir, meta_train, meta_test)
        cache = workdir / "eval"
        cache.mkdir(parents=True, exist_ok=True)
        rows = []
        for start in starts:
            print(f"evaluating {start['start']} on {args.episodes} episodes per setting ...", flush=True)
            rows += evaluate_start(start, args, records, meta_test, cache)
            summary = write(output, args, split, starts, rows)

    print(f"\n{args.n_way}-way, {args.query} queries per class, {args.episodes} episodes; mean accuracy ± 95% CI (%)")
    header = ["start", *(f"{k}-shot {m}" for k in args.shots for m in ("fine-tuned", "prototype"))]
    by = {(r["start"], r["shot"]): r for r in rows}
    table = [
        [start["start"]]
        + [
            f"{100 * by[start['start'], k][f'{m}_accuracy']:.1f} ± {100 * by[start['start'], k][f'{m}_ci95']:.1f}"
            for k in args.shots
            for m in ("finetuned", "prototype")
        ]
        for start in starts
    ]
    print("\n" + markdown_table(header, table))
    print("\npaired differences, fine-tuned (same episodes), points:")
    for p in summary["paired"]:
        print(f"- {p['a']} - {p['b']}, {p['shot']}-shot: {p['diff_points']:+.1f} ± {p['ci95_points']:.1f}")
    for target, met in summary["targets"].items():
        print(f"- {target}: {met}")
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
