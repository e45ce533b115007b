"""Domain adaptation on Amazon reviews (books <-> kitchen) with MiniLM: source-only vs DANN settings chosen
without target labels, with in-domain training as the ceiling, over five seeds, side by side in one run.

    python benchmarks/bench_domain.py --workdir benchmarks/results/domain_runs  # 62 runs; resumes
    python benchmarks/bench_domain.py --quick    # 1 seed, 1 epoch, 64 tokens, 2 settings: a smoke run

62 runs: ~200 s each with bf16 on a 2-core CPU with AVX512-BF16 (~3.5 h); in fp32 on a 2-core AVX2-only
EPYC, 5 min (source-only), 7.5-9 min (DANN) and 4 min (ceiling) each, ~47 min per direction and seed (~8 h).
Each run is `recipes/domain_adapt.py` in its own process: each domain split 1,600 / 400 by
--split_seed (the same split for every method and seed), model selection on a held-out 10% of the
labelled training domain (never target labels, except for the in-domain ceiling). The seed varies
initialisation and order.

The label-free choice (issue #27), fixed before these runs: DANN runs at every --domain_loss_weight x
--target_im_weight (weight 0 with IM > 0 is information maximisation alone); per direction and seed, the
setting with the lowest --criterion (default `dev_error`: Deep Embedded Validation's importance-weighted
source-validation *error*, self-normalised and flattened to an effective sample size of >= 25% of the
validation texts, see `nlptransfer.domain.deep_embedded_validation`; `dev_risk`, DEV's cross-entropy,
charges confidence and so ranks the IM settings low, see the guide) is "dann (label-free choice)". The
setting the recipe ships is the one with the best mean rank of the criterion over all directions and seeds.
"Adversary beyond IM" pairs each DANN setting with the IM weight it shares at domain loss weight 0, per
direction and seed. No target label enters any choice; target test accuracy is only reported. --workdir
keeps each run's row (`<run>.json`, committed) beside its folder (gitignored), and a second invocation
resumes. Writes benchmarks/results/domain[_quick].json and prints
markdown tables.
"""

import statistics
import tempfile
from pathlib import Path

from _common import DATA, benchmark_parser, machine, mean_std, once, results_path, run_recipe, write_results
from report import render_domain

AMAZON = DATA / "amazon_multidomain"
DIRECTIONS = [("books", "kitchen"), ("kitchen", "books")]
METHODS = ["source_only", "dann", "target_only"]


def run(source: str, target: str, method: str, seed: int, extra: list[str], output_dir: Path) -> dict:
    args = ["--source_file", str(AMAZON / f"{source}.jsonl"), "--target_file", str(AMAZON / f"{target}.jsonl")]
    return run_recipe("domain_adapt.py", [*args, "--method", method, "--seed", str(seed), *extra], output_dir)


CRITERIA = {  # lower is better; none reads a target label
    "dev_error": lambda row: row["dev_error"],
    "dev_risk": lambda row: row["dev_risk"],
    "source_validation_error": lambda row: 1 - row["validation_accuracy"],
}
CHOSEN = "dann (label-free choice)"


def setting_name(weight: float, im_weight: float) -> str:
    return f"dann {weight:g}" + (f" im {im_weight:g}" if im_weight else "")


def choose(rows: list[dict], settings: list[str], criterion: str, seeds: list[int]) -> tuple[list[dict], dict]:
    """Per direction and seed, the row of the setting with the lowest criterion (as CHOSEN rows), and each
    setting's mean rank over the (direction, seed) pairs where every setting ran (1 = best)."""
    score, chosen, ranks = CRITERIA[criterion], [], {name: [] for name in settings}
    for direction in dict.fromkeys(r["direction"] for r in rows):
        for seed in seeds:
            runs = [r for r in rows if (r["direction"], r["seed"]) == (direction, seed) and r["method"] in settings]
            if len(runs) < len(settings):
                continue
            runs.sort(key=score)
            chosen.append({**runs[0], "method": CHOSEN, "chosen": runs[0]["method"]})
            for rank, run in enumerate(runs, 1):
                ranks[run["method"]].append(rank)
    return chosen, {name: statistics.mean(r) for name, r in ranks.items() if r}


def paired(rows: list[dict], method: str, baseline: str) -> dict | None:
    """Target-accuracy differences (points) of `method` over `baseline`, paired by direction and seed."""
    base = {(r["direction"], r["seed"]): r["target_accuracy"] for r in rows if r["method"] == baseline}
    deltas = [
        100 * (r["target_accuracy"] - base[key])
        for r in rows
        if r["method"] == method
        if (key := (r["direction"], r["seed"])) in base
    ]
    if not deltas:
        return None
    mean, std = mean_std(deltas)
    return {
        "method": method,
        "baseline": baseline,
        "mean_points": mean,
        "std_points": std,
        "pairs": len(deltas),
        "wins": sum(d > 0 for d in deltas),
        "losses": sum(d < 0 for d in deltas),
    }


def run_folder(workdir: Path, source: str, target: str, name: str, seed: int) -> Path:
    """One run's folder (its row is `<folder>.json` beside it)."""
    return workdir / f"{source}-{target}-{name.replace(' ', '')}-{seed}"


def row_file(folder: Path) -> Path:
    """Where a run's row is kept: `<folder>.json` (not `with_suffix`: setting names hold dots, as in im 0.3)."""
    return folder.parent / f"{folder.name}.json"


def same_cpu_kind(group: list[dict]) -> None:
    """Stop before a run would join kept rows of its direction and seed made on another kind of CPU (bf16 is
    picked only where the CPU has AMX or AVX512-BF16): settings are compared within a direction and seed."""
    here = machine()["cpu_flags"]
    other = [r for r in group if r["machine"]["cpu_flags"] != here]
    if other:
        raise SystemExit(
            f"{len(other)} kept run(s) of {other[0]['direction']}, seed {other[0]['seed']} ran on a CPU with "
            f"{other[0]['machine']['cpu_flags']}, this one has {here}: finish that direction and seed on such a "
            "CPU, or delete its rows (<run>.json) to rerun them all here"
        )


def train(source: str, target: str, name: str, method: str, seed: int, flags: list[str], out: Path, group) -> dict:
    """One run's row (`once` saves it, with the machine): `group` holds the kept rows of its direction and seed."""
    same_cpu_kind(group)
    print(f"running {source} -> {target} / {name} / seed {seed} ...", flush=True)
    results = run(source, target, method, seed, flags, out)
    return {
        "direction": f"{source} -> {target}",
        "method": name,
        "seed": seed,
        "target_accuracy": results["test_accuracy"],
        "source_accuracy": results["source_test_accuracy"],
        "validation_accuracy": results["eval_accuracy"],
        "dev_risk": results.get("dev_risk"),
        "dev_error": results.get("dev_error"),
        **{key: results.get(key) for key in ("dev_ess", "dev_power", "dev_domain_log_loss")},
        "train_runtime_s": results["train_runtime"],
        "peak_rss_mib": results["peak_rss_mib"],
        "args": flags,
    }


def main() -> None:
    from nlptransfer.domain import DomainArguments  # what the recipe ships now, to compare the choice with

    parser = benchmark_parser(
        __doc__,
        quick="1 seed, 1 epoch, texts cut to 64 tokens, two settings",
        seeds=[42, 43, 44, 45, 46],
        workdir="keep every run here; a finished run is not trained again",
        cpu_threads="torch threads per run (default: every core)",
    )
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument(
        "--domain_loss_weight",
        type=float,
        nargs="+",
        default=[0, 0.03, 0.1],
        help="DANN's adversary weights (0: no adversary), crossed with --target_im_weight",
    )
    parser.add_argument(
        "--target_im_weight",
        type=float,
        nargs="+",
        default=[0, 0.3],
        help="weights of information maximisation on the target rows (0: plain DANN)",
    )
    parser.add_argument(
        "--criterion",
        choices=list(CRITERIA),
        default="dev_error",
        help="the label-free rule that chooses among the DANN settings",
    )
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    if args.quick:
        args.domain_loss_weight, args.target_im_weight = [0.03], [0, 0.3]
    extra = [
        "--num_train_epochs",
        "1" if args.quick else str(args.epochs),
        "--learning_rate",
        str(args.learning_rate),
        "--max_seq_length",
        "64" if args.quick else str(args.max_seq_length),
        "--per_device_train_batch_size",
        "16",
    ]
    if args.cpu_threads:
        extra += ["--cpu_threads", str(args.cpu_threads)]

    output = results_path(args, "domain")
    # (domain loss weight, IM weight); (0, 0) takes nothing from the target, so it is not a setting
    grid = [(w, e) for w in args.domain_loss_weight for e in args.target_im_weight if w or e]
    settings = [setting_name(w, e) for w, e in grid]
    systems = []  # (method as named in the table, recipe method, its flags)
    for method in args.methods:
        if method != "dann":
            systems.append((method, method, []))
        for weight, im_weight in grid if method == "dann" else []:
            flags = ["--domain_loss_weight", str(weight), "--target_im_weight", str(im_weight)]
            systems.append((setting_name(weight, im_weight), "dann", flags))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_domain_") as scratch:
        # seed by seed, so a run cut short still holds whole seeds; the ceiling on the first seed only
        for seed in seeds:
            for source, target in DIRECTIONS:
                for name, method, flags in [s for s in systems if s[1] != "target_only" or seed == seeds[0]]:
                    out, flags = run_folder(Path(args.workdir or scratch), source, target, name, seed), [*extra, *flags]
                    group = [r for r in rows if (r["direction"], r["seed"]) == (f"{source} -> {target}", seed)]
                    rows.append(
                        once(row_file(out), train, source, target, name, method, seed, flags, out, group, flags=flags)
                    )
                    write_results(output, {"partial": True, "args": extra, "rows": rows})

    methods = [name for name, _, _ in systems]
    chosen, mean_rank = choose(rows, settings, args.criterion, seeds) if "dann" in args.methods else ([], {})
    if chosen:
        rows += chosen
        methods.append(CHOSEN)
    summary = []
    for direction in dict.fromkeys(r["direction"] for r in rows):
        for method in methods:
            scores = [r["target_accuracy"] for r in rows if r["direction"] == direction and r["method"] == method]
            if not scores:
                continue
            mean, std = mean_std(scores)
            summary.append({"direction": direction, "method": method, "mean": mean, "std": std, "scores": scores})
    done = [m for m in methods if any(s["method"] == m for s in summary)]
    mean_of = {m: statistics.mean(s["mean"] for s in summary if s["method"] == m) for m in done}
    shipped = setting_name(DomainArguments.domain_loss_weight, DomainArguments.target_im_weight)
    choice = {"criterion": args.criterion, "mean_rank": mean_rank, "shipped_now": shipped}
    if mean_rank:
        choice["best"] = min(mean_rank, key=mean_rank.get)
    versus = [("source_only", m) for m in [*settings, CHOSEN]]
    versus += [(setting_name(0, e), setting_name(w, e)) for w, e in grid if w and e and (0, e) in grid]
    comparisons = [c for baseline, method in versus if (c := paired(rows, method, baseline))]
    payload = {
        "quick": args.quick,
        "args": extra,
        "seeds": seeds,
        "rows": rows,
        "summary": summary,
        "average": mean_of,
        "label_free_choice": choice,
        "paired": comparisons,
    }
    write_results(output, payload)
    print("\n" + render_domain(output.name, payload))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
