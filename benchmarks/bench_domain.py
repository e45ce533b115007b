"""Domain adaptation on Amazon reviews (books <-> kitchen) with MiniLM: source-only vs DANN, with
in-domain training as the ceiling, over several seeds, side by side in one run.

    python benchmarks/bench_domain.py            # 2 directions x (source_only, dann) x 3 seeds + the ceiling
    python benchmarks/bench_domain.py --quick    # 1 seed, 1 epoch, 64 tokens: a smoke run
    python benchmarks/bench_domain.py --domain_loss_weight 0.03 0.1 --workdir runs/bench_domain
        # DANN at each weight, and with the weight chosen per direction and seed by DEV (no target label)
    python benchmarks/bench_domain.py --domain_loss_weight 0.03 --target_im_weight 0 0.3
        # DANN with and without information maximisation on the target rows

Each run is `recipes/domain_adapt.py` in its own process: each domain split 1,600 / 400 by
--split_seed (the same split for every method and seed), model selection on a held-out 10% of the
labelled training domain (never target labels, except for the in-domain ceiling). The seed varies
initialisation and order. Writes benchmarks/results/domain[_quick].json and prints markdown tables.
"""

import json
import statistics
import tempfile
from pathlib import Path

from _common import DATA, benchmark_parser, markdown_table, mean_std, results_path, run_recipe, write_results

AMAZON = DATA / "amazon_multidomain"
DIRECTIONS = [("books", "kitchen"), ("kitchen", "books")]
METHODS = ["source_only", "dann", "target_only"]


def run(source: str, target: str, method: str, seed: int, extra: list[str], output_dir: Path) -> dict:
    args = ["--source_file", str(AMAZON / f"{source}.jsonl"), "--target_file", str(AMAZON / f"{target}.jsonl")]
    return run_recipe("domain_adapt.py", [*args, "--method", method, "--seed", str(seed), *extra], output_dir)


def main() -> None:
    from nlptransfer.domain import DomainArguments  # the recipe's defaults are the benchmark's

    parser = benchmark_parser(
        __doc__,
        quick="1 seed, 1 epoch, texts cut to 64 tokens",
        seeds=[42, 43, 44],
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
        default=[DomainArguments.domain_loss_weight],
        help="DANN's weight(s); with several settings, DANN also appears with the one DEV chooses per direction and seed",
    )
    parser.add_argument(
        "--target_im_weight",
        type=float,
        nargs="+",
        default=[DomainArguments.target_im_weight],
        help="DANN's target information-maximisation weight(s), crossed with --domain_loss_weight (0: plain DANN; "
        "with domain loss weight 0, the information-maximisation term alone: an ablation)",
    )
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
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
    settings = [(w, e) for w in args.domain_loss_weight for e in args.target_im_weight if w or e]
    systems = []  # (method as named in the table, recipe method, its flags)
    adversarial = set()  # the names of the settings DEV chooses among (weight 0 is the IM-only ablation)
    for method in args.methods:
        if method != "dann":
            systems.append((method, method, []))
        for weight, im_weight in settings if method == "dann" else []:
            name = f"dann {weight:g}" + (f" im {im_weight:g}" if im_weight else "") if len(settings) > 1 else "dann"
            flags = ["--domain_loss_weight", str(weight), "--target_im_weight", str(im_weight)]
            systems.append((name, "dann", flags))
            if weight > 0:
                adversarial.add(name)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_domain_") as scratch:
        # seed by seed, so a run cut short still holds whole seeds; the ceiling on the first seed only
        for seed in seeds:
            for source, target in DIRECTIONS:
                for name, method, flags in [s for s in systems if s[1] != "target_only" or seed == seeds[0]]:
                    out = Path(args.workdir or scratch) / f"{source}-{target}-{name.replace(' ', '')}-{seed}"
                    done = out / "bench_row.json"
                    row = json.loads(done.read_text()) if done.is_file() else None
                    if row is not None and row["args"] == [*extra, *flags]:
                        print(f"{source} -> {target} / {name} / seed {seed}: already run in {out}", flush=True)
                        rows.append({**row, "method": name})  # the same flags, whatever the table called them
                        continue
                    print(f"running {source} -> {target} / {name} / seed {seed} ...", flush=True)
                    results = run(source, target, method, seed, [*extra, *flags], out)
                    rows.append(
                        {
                            "direction": f"{source} -> {target}",
                            "method": name,
                            "seed": seed,
                            "target_accuracy": results["test_accuracy"],
                            "source_accuracy": results["source_test_accuracy"],
                            "validation_accuracy": results["eval_accuracy"],
                            "dev_risk": results.get("dev_risk"),
                            "train_runtime_s": results["train_runtime"],
                            "peak_rss_mib": results["peak_rss_mib"],
                            "args": [*extra, *flags],
                        }
                    )
                    done.write_text(json.dumps(rows[-1], indent=2) + "\n")
                    write_results(output, {"partial": True, "args": extra, "rows": rows})

    methods = [name for name, _, _ in systems]
    if len(adversarial) > 1:  # per direction and seed, the DANN setting with the lowest DEV risk (no target label)
        methods.append("dann (DEV-chosen setting)")
        for direction in dict.fromkeys(r["direction"] for r in rows):
            for seed in seeds:
                runs = [
                    r for r in rows if (r["direction"], r["seed"]) == (direction, seed) and r["method"] in adversarial
                ]
                if len(runs) == len(adversarial):
                    chosen = min(runs, key=lambda r: r["dev_risk"])
                    rows.append({**chosen, "method": methods[-1], "chosen": chosen["method"]})

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
    payload = {"quick": args.quick, "args": extra, "seeds": seeds, "rows": rows, "summary": summary, "average": mean_of}
    write_results(output, payload)

    table = [
        [s["direction"], s["method"], f"{s['mean']:.4f} ± {s['std']:.4f}", ", ".join(f"{x:.4f}" for x in s["scores"])]
        for s in summary
    ]
    header = ["direction", "method", "target accuracy (mean ± std over seeds)", "per seed"]
    print("\n" + markdown_table(header, table))
    table = [[method, f"{value:.4f}"] for method, value in mean_of.items()]
    print("\n" + markdown_table(["method", "average target accuracy over both directions"], table))
    for method in [m for m in mean_of if m.startswith("dann") and "source_only" in mean_of]:
        print(f"{method} - source-only: {100 * (mean_of[method] - mean_of['source_only']):+.2f} points")
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
