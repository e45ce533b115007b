"""Long texts: Amazon reviews (books, kitchen) at a 128-token window, truncated vs chunked, and a 512-token window.

    python benchmarks/bench_long_text.py            # both domains, 3 epochs (about 30 min on 2 CPU cores)
    python benchmarks/bench_long_text.py --quick    # 300 training reviews, 1 epoch: a smoke run

Each domain's 2,000 reviews are split once, seeded: 1,400 train / 200 validation / 400 test (written to a
scratch folder; the shared data is only read). Every system runs `recipes/finetune.py` with the recipe's
defaults and the same seed: `--max_seq_length 128` truncated (the default), `--long_text chunk` (windows of 128
overlapping by --doc_stride, mean of the windows' logits per review), and `--max_seq_length 512`.
Writes benchmarks/results/long_text[_quick].json and prints a markdown table.
"""

import json
import random
import tempfile
from pathlib import Path

from _common import DATA, benchmark_parser, markdown_table, results_path, run_recipe, write_results

DOMAINS = {"books": "books.jsonl", "kitchen": "kitchen.jsonl"}
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def split_domain(name: str, folder: Path, seed: int, limit: int | None) -> tuple[dict[str, str], dict]:
    rows = [json.loads(line) for line in (DATA / "amazon_multidomain" / DOMAINS[name]).open() if line.strip()]
    random.Random(seed).shuffle(rows)
    parts = {"train": rows[:1400][:limit], "validation": rows[1400:1600], "test": rows[1600:]}
    files = {}
    for split, part in parts.items():
        path = folder / f"{name}-{split}.jsonl"
        path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in part))
        files[split] = str(path)
    return files, {split: len(part) for split, part in parts.items()}


def token_lengths(files: dict[str, str]) -> dict:
    from transformers import AutoTokenizer

    from nlptransfer.resolve import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    texts = [json.loads(line)["text"] for line in open(files["test"])]
    lengths = sorted(len(ids) for ids in tokenizer(texts)["input_ids"])
    return {
        "median": lengths[len(lengths) // 2],
        "p90": lengths[int(0.9 * len(lengths))],
        "over_128": sum(n > 128 for n in lengths) / len(lengths),
        "over_512": sum(n > 512 for n in lengths) / len(lengths),
    }


def main() -> None:
    parser = benchmark_parser(__doc__, quick="300 training reviews, 1 epoch", seed=42)
    parser.add_argument("--domains", nargs="+", choices=list(DOMAINS), default=list(DOMAINS))
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--doc_stride", type=int, default=32)
    args = parser.parse_args()
    systems = {
        "truncate, 128": ["--max_seq_length", "128"],
        "chunk, 128 (mean)": ["--max_seq_length", "128", "--long_text", "chunk", "--doc_stride", str(args.doc_stride)],
        "truncate, 512": ["--max_seq_length", "512"],
    }
    common = ["--model_name_or_path", MODEL, "--seed", str(args.seed), "--num_train_epochs"]
    common.append("1" if args.quick else str(args.epochs))
    rows, lengths = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_long_text_") as scratch:
        for domain in args.domains:
            files, sizes = split_domain(domain, Path(scratch), args.seed, 300 if args.quick else None)
            lengths[domain] = token_lengths(files)
            data = [arg for split, path in files.items() for arg in (f"--{split}_file", path)]
            for system, options in systems.items():
                print(f"{domain} / {system} ...", flush=True)
                out = Path(scratch) / f"{domain}-{len(rows)}"
                results = run_recipe("finetune.py", [*common, *data, *options], out)
                rows.append(
                    {
                        "domain": domain,
                        "system": system,
                        "sizes": sizes,
                        "test_accuracy": results["test_accuracy"],
                        "eval_accuracy": results["eval_accuracy"],
                        "train_runtime_s": results["train_runtime"],
                        "wall_time_s": results["wall_time_s"],
                        "peak_rss_mib": results["peak_rss_mib"],
                    }
                )
    table = markdown_table(
        ["domain", "system", "test accuracy", "validation accuracy", "train s", "peak RSS MiB"],
        [
            [r["domain"], r["system"], f"{r['test_accuracy']:.4f}", f"{r['eval_accuracy']:.4f}",
             f"{r['train_runtime_s']:.0f}", f"{r['peak_rss_mib']:.0f}"]
            for r in rows
        ],
    )  # fmt: skip
    print(table)
    print("test review lengths (tokens):", json.dumps(lengths))
    write_results(results_path(args, "long_text"), {"rows": rows, "test_token_lengths": lengths, "table": table})


if __name__ == "__main__":
    main()
