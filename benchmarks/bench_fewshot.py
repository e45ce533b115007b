"""Few-shot transfer to unseen classes: TREC's 50 fine labels, 5-way 1-shot and 5-shot episodes.

    python benchmarks/bench_fewshot.py --workdir benchmarks/results/fewshot_runs   # (about an hour on 2 CPU cores)
    python benchmarks/bench_fewshot.py --quick      # few episodes, 20 meta-steps, 2 steps each: a smoke run

The fine classes are split by `--class_split_seed` into meta-train, meta-validation and meta-test groups
(`nlptransfer.meta.split_meta_classes`, the call recipes/meta.py makes; its saved split is checked against
this one; the meta-test group is the one the benchmark had before it had a validation group). Starting
points, each trained only on rows of the meta-train classes:
  pretrained    all-MiniLM-L6-v2 as it is
  multi-task    recipes/finetune.py on the meta-train classes' rows (--label_column_name fine_label)
  meta-<alg>    recipes/meta.py with each of --algorithms, at each --inner_lrs (seed --seed)
Every start adapts to an episode in each of several ways: as a prototype classifier (nearest class mean on
frozen features) and fine-tuned on the support set with each budget of --finetune_steps x --finetune_lrs
(a class-mean head, AdamW).

What is chosen, and on what (no meta-test label takes part):
- per start and shot, the adaptation with the best mean accuracy on --val_episodes meta-validation episodes;
- per algorithm, the --inner_lrs setting whose start (seed --seed) scores best on 5-shot meta-validation (at
  its chosen adaptation); that setting is then meta-trained again with each of --meta_seeds.
Only the chosen adaptations are scored on the --episodes meta-test episodes, every start on the same ones (an
episode is a pure function of --episode_seed and its index). Reported: meta-test accuracy ± 95% CI per start
and shot, and each meta-learned start against the pretrained start at its best adaptation, paired by episode,
per meta-training seed and averaged over them. A class with fewer than K + --query rows is not sampled.
Training runs in its own process per start (`_run.py`); with --workdir, trained starts and finished
evaluations are reused. Writes benchmarks/results/fewshot[_quick].json as it goes.
"""

import json
import tempfile
import time
from pathlib import Path

from _common import DATA, benchmark_parser, results_path, run_recipe, write_results
from report import render_fewshot

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TREC_TRAIN = DATA / "trec" / "train.jsonl"
PROTOTYPE = "prototype"


def adaptations(args) -> list[str]:
    """Every way a start adapts to an episode: the prototype classifier and each fine-tuning budget."""
    return [
        PROTOTYPE,
        *(f"fine-tune {steps} steps, lr {lr:g}" for steps in args.finetune_steps for lr in args.finetune_lrs),
    ]


def budget_of(adaptation: str) -> tuple[int, float]:
    """(steps, lr) of a fine-tuning adaptation's name."""
    steps, lr = adaptation.removeprefix("fine-tune ").split(" steps, lr ")
    return int(steps), float(lr)


def train_start(name: str, recipe: str, flags: list[str], workdir: Path, split: dict) -> dict:
    """A trained start, once per workdir (its folder, settings and run time)."""
    folder = workdir / name.replace(" ", "_")
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
        for group in ("train", "val", "test"):
            if saved[f"meta_{group}_classes"] != split[f"meta_{group}"]:
                raise RuntimeError(f"{folder}: its meta-{group} classes differ from this benchmark's split")
    return summary


def meta_flags(args, algorithm: str, inner_lr: float, seed: int) -> list[str]:
    return [
        *("--model_name_or_path", MINILM, "--train_file", str(TREC_TRAIN), "--label_column_name", "fine_label"),
        *("--meta_test_classes", str(args.meta_test_classes), "--meta_val_classes", str(args.meta_val_classes)),
        *("--class_split_seed", str(args.class_split_seed), "--algorithm", algorithm, "--n_way", str(args.n_way)),
        *("--k_shot", str(args.meta_k_shot), "--query", str(args.query), "--meta_steps", str(args.meta_steps)),
        *("--meta_batch_size", str(args.meta_batch_size), "--inner_steps", str(args.inner_steps)),
        *("--inner_lr", str(inner_lr), "--logging_steps", str(max(1, args.meta_steps // 10))),
        *("--seed", str(seed), "--max_seq_length", str(args.max_seq_length)),
        *(["--cpu_threads", str(args.cpu_threads)] if args.cpu_threads else []),
    ]


def multitask_start(args, workdir: Path, split: dict) -> dict:
    from nlptransfer import read_file

    data = workdir / "meta_train_rows" / "train.jsonl"  # the multi-task start sees meta-train classes only
    data.parent.mkdir(parents=True, exist_ok=True)
    kept = set(split["meta_train"])
    rows = read_file(str(TREC_TRAIN)).rows
    data.write_text("".join(json.dumps(row) + "\n" for row in rows if row["fine_label"] in kept))
    budget = ["--max_steps", str(args.multitask_steps)] if args.multitask_steps else []
    budget = budget or ["--num_train_epochs", str(args.multitask_epochs)]
    flags = ["--model_name_or_path", MINILM, "--train_file", str(data), "--label_column_name", "fine_label"]
    flags += [*budget, "--learning_rate", str(args.multitask_lr), "--seed", str(args.seed)]
    flags += ["--max_seq_length", str(args.max_seq_length)]
    flags += ["--cpu_threads", str(args.cpu_threads)] if args.cpu_threads else []
    return train_start("multi-task", "finetune.py", flags, workdir, split)


class Scorer:
    """Scores starts on seeded episodes of a class group, each adaptation on the same episodes; results are
    cached per start, group, shot and adaptation in `cache`."""

    def __init__(self, args, records, cache: Path):
        self.args, self.records, self.cache = args, records, cache

    def path(self, start: dict, group: str, shot: int) -> Path:
        return self.cache / f"{start['start'].replace(' ', '_')}_{group}_{shot}shot.json"

    def __call__(self, start: dict, group: str, classes: list[str], episodes: int, wanted: list[str]) -> dict:
        """{shot: {adaptation: [accuracy per episode]}} for the `wanted` adaptations."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from nlptransfer import resolve_model
        from nlptransfer.meta import EpisodeLearner, episode_accuracy, prototype_accuracy
        from nlptransfer.meta.episodes import ClassPool, EpisodeSampler

        args, out, todo = self.args, {}, {}
        key = {k: getattr(args, k) for k in ("n_way", "query", "episode_seed")} | {"episodes": episodes}
        for shot in args.shots:
            path = self.path(start, group, shot)
            kept = json.loads(path.read_text()) if path.exists() else {"key": key, "scores": {}}
            if kept["key"] != key:
                kept = {"key": key, "scores": {}}
            out[shot], todo[shot] = kept, [a for a in wanted if a not in kept["scores"]]
        if any(todo.values()):
            path = resolve_model(start["folder"])
            encoder, info = AutoModel.from_pretrained(path, output_loading_info=True)
            if info["missing_keys"]:  # e.g. a classifier folder whose encoder weights did not map: a random start
                raise RuntimeError(f"{path}: encoder weights missing: {info['missing_keys'][:5]}")
            encoder.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # as recipes/meta.py does
            tokenizer = AutoTokenizer.from_pretrained(path)
            pool = ClassPool.from_records(self.records, tokenizer, args.max_seq_length, label_column="fine_label")
            pool = pool.subset(classes)
            learner = EpisodeLearner(encoder, pool)
            for shot, adaptations_left in todo.items():
                if not adaptations_left:
                    continue
                sampler = EpisodeSampler(pool.class_rows, args.n_way, shot, args.query, args.episode_seed)
                scores, began = {a: [] for a in adaptations_left}, time.perf_counter()
                for index in range(episodes):
                    episode = sampler.episode(index)
                    for adaptation in adaptations_left:
                        if adaptation == PROTOTYPE:
                            scores[adaptation].append(prototype_accuracy(learner, episode))
                        else:
                            scores[adaptation].append(episode_accuracy(learner, episode, *budget_of(adaptation)))
                print(
                    f"  {start['start']} {group} {shot}-shot: {episodes} episodes x {len(adaptations_left)} "
                    f"adaptations in {time.perf_counter() - began:.0f} s",
                    flush=True,
                )
                out[shot]["scores"] |= scores
                out[shot]["skipped_classes"] = sampler.skipped
                self.path(start, group, shot).write_text(json.dumps(out[shot]) + "\n")
            del encoder, learner
        return {shot: {a: out[shot]["scores"][a] for a in wanted} for shot in args.shots}


def chosen(validation: dict) -> dict:
    """{shot: (adaptation, mean validation accuracy)}: per shot, the adaptation best on validation."""
    import statistics

    return {
        shot: max(((a, statistics.fmean(acc)) for a, acc in scores.items()), key=lambda item: item[1])
        for shot, scores in validation.items()
    }


def paired(a: list[float], b: list[float]) -> dict:
    """Mean ± 95% CI of a - b over the same episodes, in accuracy points."""
    from nlptransfer.meta.episodes import mean_ci95

    mean, ci = mean_ci95([100 * (x - y) for x, y in zip(a, b, strict=True)])
    return {"diff_points": mean, "ci95_points": ci}


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="10 episodes, 20 meta-steps, 2 inner steps, two adaptations",
        workdir="keep trained starts and evaluations here (reused)",
        cpu_threads="torch threads (default: every core)",
    )
    parser.add_argument("--episodes", type=int, default=200, help="meta-test episodes per shot")
    parser.add_argument("--val_episodes", type=int, default=100, help="meta-validation episodes per shot")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--n_way", type=int, default=5)
    parser.add_argument("--query", type=int, default=5, help="query rows per class and episode")
    parser.add_argument("--meta_test_classes", type=float, default=0.4, help="fraction (or number) of fine classes")
    parser.add_argument("--meta_val_classes", type=float, default=10, help="of the rest: held out to choose on")
    parser.add_argument("--class_split_seed", type=int, default=0)
    parser.add_argument("--episode_seed", type=int, default=0, help="seed of the episodes")
    parser.add_argument("--seed", type=int, default=42, help="seed of the training runs that choose settings")
    parser.add_argument("--meta_seeds", type=int, nargs="+", default=[42, 43, 44], help="seeds of the chosen setting")
    parser.add_argument("--finetune_steps", type=int, nargs="+", default=[5, 10, 20], help="per-episode budgets")
    parser.add_argument("--finetune_lrs", type=float, nargs="+", default=[1e-4, 3e-4])
    parser.add_argument("--algorithms", nargs="+", default=["fomaml", "reptile"])
    parser.add_argument("--inner_lrs", type=float, nargs="+", default=[1e-4, 3e-4], help="meta-training settings")
    parser.add_argument("--meta_k_shot", type=int, default=5, help="K of the meta-training episodes")
    parser.add_argument("--meta_steps", type=int, default=200)
    parser.add_argument("--meta_batch_size", type=int, default=4)
    parser.add_argument("--inner_steps", type=int, default=5)
    parser.add_argument("--multitask_epochs", type=float, default=3)
    parser.add_argument("--multitask_steps", type=int, default=None, help="instead of --multitask_epochs")
    parser.add_argument("--multitask_lr", type=float, default=1e-4, help="the fine-tuning recipe's default")
    parser.add_argument("--max_seq_length", type=int, default=64)
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.val_episodes, args.meta_steps, args.meta_batch_size = 10, 10, 20, 2
        args.inner_steps, args.multitask_steps, args.finetune_steps, args.finetune_lrs = 2, 20, [2], [1e-4]
        args.inner_lrs, args.meta_seeds = args.inner_lrs[:1], args.meta_seeds[:2]
    output = results_path(args, "fewshot")

    import torch

    from nlptransfer import read_file
    from nlptransfer.meta import split_meta_classes
    from nlptransfer.training import cpu_cores

    torch.set_num_threads(args.cpu_threads or cpu_cores())
    records = read_file(str(TREC_TRAIN))
    groups = split_meta_classes(
        sorted({row["fine_label"] for row in records.rows}),
        args.meta_test_classes,
        args.meta_val_classes,
        args.class_split_seed,
    )
    split = dict(zip(("meta_train", "meta_val", "meta_test"), groups))
    print(", ".join(f"{len(classes)} {group}" for group, classes in split.items()) + " fine classes")
    settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "output")}
    payload = {"quick": args.quick, "protocol": "meta-validation", "settings": settings, "class_split": split}

    with tempfile.TemporaryDirectory(prefix="bench_fewshot_") as scratch:
        workdir = Path(args.workdir or scratch)
        (cache := workdir / "eval").mkdir(parents=True, exist_ok=True)
        score = Scorer(args, records, cache)
        everything = adaptations(args)

        def validate(start: dict) -> dict:
            best = chosen(score(start, "val", split["meta_val"], args.val_episodes, everything))
            start["chosen"] = {str(shot): name for shot, (name, _) in best.items()}
            start["val_accuracy"] = {str(shot): acc for shot, (_, acc) in best.items()}
            return start

        # 1. every start on meta-validation; per algorithm, the meta-training setting meta-validation prefers
        starts = [validate({"start": "pretrained", "folder": MINILM, "training": "none", "seed": None})]
        starts.append(validate({**multitask_start(args, workdir, split), "seed": args.seed}))
        choice = {}
        for algorithm in args.algorithms:
            candidates = []
            for inner_lr in args.inner_lrs:
                name = f"meta-{algorithm} inner_lr {inner_lr:g} seed {args.seed}"
                start = train_start(name, "meta.py", meta_flags(args, algorithm, inner_lr, args.seed), workdir, split)
                candidates.append(validate({**start, "algorithm": algorithm, "inner_lr": inner_lr, "seed": args.seed}))
            shot = str(max(args.shots))
            best = max(candidates, key=lambda s: s["val_accuracy"][shot])
            choice[algorithm] = {"inner_lr": best["inner_lr"], "on": f"{shot}-shot meta-validation accuracy"}
            starts += candidates
            for seed in [s for s in args.meta_seeds if s != args.seed]:
                name = f"meta-{algorithm} inner_lr {best['inner_lr']:g} seed {seed}"
                flags = meta_flags(args, algorithm, best["inner_lr"], seed)
                start = train_start(name, "meta.py", flags, workdir, split)
                starts.append(validate({**start, "algorithm": algorithm, "inner_lr": best["inner_lr"], "seed": seed}))
            write_results(output, {**payload, "partial": True, "choice": choice, "starts": starts})

        # 2. the chosen adaptation of the starts that are compared, on the same meta-test episodes
        compared = [s for s in starts if "algorithm" not in s or s["inner_lr"] == choice[s["algorithm"]]["inner_lr"]]
        test = {}
        for start in compared:
            wanted = sorted(set(start["chosen"].values()) | {PROTOTYPE})
            test[start["start"]] = score(start, "test", split["meta_test"], args.episodes, wanted)

    from nlptransfer.meta.episodes import mean_ci95

    rows = []
    for start in compared:
        for shot in args.shots:
            picked = start["chosen"][str(shot)]
            accuracy, ci = mean_ci95(test[start["start"]][shot][picked])
            proto, proto_ci = mean_ci95(test[start["start"]][shot][PROTOTYPE])
            rows.append(
                {"start": start["start"], "algorithm": start.get("algorithm"), "seed": start.get("seed")}
                | {"shot": shot, "adaptation": picked, "val_accuracy": start["val_accuracy"][str(shot)]}
                | {"accuracy": accuracy, "ci95": ci, "prototype_accuracy": proto, "prototype_ci95": proto_ci}
            )
    comparisons = []
    for algorithm in args.algorithms:
        for shot in args.shots:
            base = test["pretrained"][shot][starts[0]["chosen"][str(shot)]]
            per_seed = [
                {"seed": s["seed"], **paired(test[s["start"]][shot][s["chosen"][str(shot)]], base)}
                for s in compared
                if s.get("algorithm") == algorithm
            ]
            mean = sum(p["diff_points"] for p in per_seed) / len(per_seed)
            comparisons.append(
                {"start": f"meta-{algorithm}", "against": "pretrained (its best adaptation)", "shot": shot}
                | {"mean_over_seeds_points": mean, "per_seed": per_seed}
            )
    largest = max(args.shots)
    targets = {
        f"{c['start']} beats the pretrained start at its best by >= 5 points ({args.n_way}-way {largest}-shot, "
        f"mean over {len(c['per_seed'])} meta-training seeds)": c["mean_over_seeds_points"] >= 5
        for c in comparisons
        if c["shot"] == largest
    }
    payload |= {"choice": choice, "starts": starts, "rows": rows, "paired": comparisons, "targets": targets}
    write_results(output, payload)
    print("\n" + render_fewshot(output.name, payload))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
