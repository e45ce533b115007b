"""Distillation against a labels-only student given the same search budget (issue #27), CoNLL-2003, one run.

    python benchmarks/bench_distill_fair.py --workdir benchmarks/results/distill_fair_runs   # (hours on 2 CPU cores)
    python benchmarks/bench_distill_fair.py --quick     # 300 sentences, 1 epoch, 2 settings, 2 seeds: a smoke run

The distilled 2-layer CoNLL student of `distill_conll.json` had 8 settings tried on validation F1 (seed 42:
learning rate, epochs, a hidden-state loss, other layers, a transfer set) while its labels-only baseline reused
the winner's learning rate and epochs. Here, against one MiniLM teacher (recipes/finetune.py, seed --seed):
- labels only (`recipes/distill.py --alpha 0`, the same cut layers): every --labels_lrs x --labels_epochs
  setting (8 by default, the distilled student's budget) at seed --seed; the one with the best validation F1
  is trained again with each of --seeds;
- distilled, the settings the earlier search chose: without a transfer set (lr 3e-4, 10 epochs) and with one
  (lr 3e-4, 8 epochs, the first 5,000 AG News descriptions the teacher labels), each with --seeds.
The labels-only student cannot use unlabelled text; the transfer set is what distillation adds beyond a
better-tuned student. Reported: test F1 mean ± std over seeds, and each distilled student's gain over the tuned
labels-only one, paired by seed. Validation chooses; test labels choose nothing. --workdir keeps every run's
row (`<name>.json`, committed) beside its folder (gitignored); a second invocation resumes.
Writes benchmarks/results/distill_fair[_quick].json.
"""

import tempfile
from pathlib import Path

from _common import (
    DATA,
    TASKS,
    benchmark_parser,
    group_rows,
    markdown_table,
    mean_std,
    once,
    paired_points,
    results_path,
    run_recipe,
    write_results,
)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TRANSFER = DATA / "ag_news" / "train_subset10k_alps.jsonl"


def run(flags: list[str], recipe: str, folder: Path) -> dict:
    results = run_recipe(recipe, [*TASKS["conll2003"]["args"], *flags], folder)
    return {
        "test_f1": results["test_f1"],
        "validation_f1": results["eval_f1"],
        "train_runtime_s": results["train_runtime"],
        "peak_rss_mib": results["peak_rss_mib"],
        "args": flags,
    }


def summarise(rows: list[dict], baseline: str) -> list[dict]:
    """Per system: test F1 mean ± std over seeds, and the gain over `baseline` paired by seed (points)."""
    base = {r["seed"]: r["test_f1"] for r in rows if r["system"] == baseline}
    summary = []
    for (system,), runs in group_rows(rows, "system").items():
        entry = {"system": system, "seeds": [r["seed"] for r in runs], "scores": [r["test_f1"] for r in runs]}
        entry["test_f1"], entry["test_f1_std"] = mean_std(entry["scores"])
        entry["validation_f1"], _ = mean_std(r["validation_f1"] for r in runs)
        entry["train_runtime_s"], _ = mean_std(r["train_runtime_s"] for r in runs)
        if system != baseline and (gain := paired_points(runs, base, "test_f1")):
            entry["gain_points"], entry["gain_std_points"] = gain
        summary.append(entry)
    return summary


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        quick="300 training sentences, 1 epoch, two labels-only settings, seeds 42 and 43",
        seeds=[42, 43, 44],
        seed=42,
        workdir="keep every run's row here; a finished run is not trained again",
        cpu_threads="torch threads per run (default: every core)",
    )
    parser.add_argument("--student_layers", default="0,3", help="the teacher layers the 2-layer student keeps")
    parser.add_argument("--labels_lrs", type=float, nargs="+", default=[1e-4, 3e-4, 5e-4, 1e-3])
    parser.add_argument("--labels_epochs", type=float, nargs="+", default=[6, 10])
    parser.add_argument("--max_transfer_samples", type=int, default=5000)
    args = parser.parse_args()
    common = ["--cpu_threads", str(args.cpu_threads)] if args.cpu_threads else []
    if args.quick:
        common += ["--max_train_samples", "300", "--max_eval_samples", "300", "--max_test_samples", "300"]
        args.labels_lrs, args.labels_epochs, args.seeds, args.max_transfer_samples = [1e-4, 3e-4], [1], [42, 43], 300
    output = results_path(args, "distill_fair")

    def epochs(n: float) -> str:
        return "1" if args.quick else f"{n:g}"

    with tempfile.TemporaryDirectory(prefix="bench_distill_fair_") as scratch:
        folder = Path(args.workdir or scratch) / ("quick" if args.quick else "")
        teacher_flags = ["--model_name_or_path", MINILM, "--learning_rate", "1e-4", "--seed", str(args.seed)]
        teacher_flags += ["--num_train_epochs", epochs(3), *common]
        print("MiniLM-6 teacher ...", flush=True)
        teacher = once(
            folder / "teacher.json", run, teacher_flags, "finetune.py", folder / "teacher", flags=teacher_flags
        )
        student = ["--teacher_name_or_path", str(folder / "teacher"), "--student_layers", args.student_layers]
        student += ["--teacher_cache_dir", str(folder / "teacher_cache"), *common]

        def train(system: str, name: str, flags: list[str], seed: int) -> dict:
            print(f"{system} / seed {seed} ...", flush=True)
            flags = [*flags, "--seed", str(seed)]
            row = once(folder / f"{name}-{seed}.json", run, flags, "distill.py", folder / f"{name}-{seed}", flags=flags)
            return {"system": system, "seed": seed, **row}

        # labels only: the search on validation (seed --seed), then the chosen setting with every seed
        search = []
        for lr in args.labels_lrs:
            for n in args.labels_epochs:
                flags = [*student, "--alpha", "0", "--learning_rate", str(lr), "--num_train_epochs", epochs(n)]
                row = train(f"labels only, lr {lr:g}, {n:g} epochs", f"labels-lr{lr:g}-ep{n:g}", flags, args.seed)
                search.append({**row, "learning_rate": lr, "epochs": n, "flags": flags})
        best = max(search, key=lambda r: r["validation_f1"])
        tuned = f"labels only, tuned (lr {best['learning_rate']:g}, {best['epochs']:g} epochs)"
        name = f"labels-lr{best['learning_rate']:g}-ep{best['epochs']:g}"
        rows = [{**best, "system": tuned}]
        rows += [train(tuned, name, best["flags"], seed) for seed in args.seeds if seed != args.seed]

        # distilled: the settings the earlier validation search chose, without and with the transfer set
        distil = [*student, "--alpha", "0.5", "--temperature", "2", "--learning_rate", "3e-4"]
        transfer = ["--transfer_file", str(TRANSFER), "--max_transfer_samples", str(args.max_transfer_samples)]
        distilled = {
            "distilled (lr 3e-4, 10 epochs)": ("distilled-ep10", [*distil, "--num_train_epochs", epochs(10)]),
            "distilled + transfer set (lr 3e-4, 8 epochs)": (
                "distilled-transfer-ep8",
                [*distil, "--num_train_epochs", epochs(8), *transfer],
            ),
        }
        for system, (name, flags) in distilled.items():
            rows += [train(system, name, flags, seed) for seed in args.seeds]

    summary = summarise(rows, tuned)
    payload = {"quick": args.quick, "teacher": teacher, "search": search, "chosen": tuned}
    payload |= {"summary": summary, "rows": rows}
    write_results(output, payload)
    table = [
        [s["system"], len(s["seeds"]), f"{s['test_f1']:.4f} ± {s['test_f1_std']:.4f}", f"{s['validation_f1']:.4f}"]
        + [f"{s['gain_points']:+.2f} ± {s['gain_std_points']:.2f}" if "gain_points" in s else "-"]
        for s in summary
    ]
    header = ["system", "seeds", "test F1", "validation F1", "gain over tuned labels only (points)"]
    print(f"\nteacher: test F1 {teacher['test_f1']:.4f}\n\n" + markdown_table(header, table))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
