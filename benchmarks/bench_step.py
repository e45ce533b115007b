"""Training-step speed of the fine-tuning recipe's model under one setting changed at a time.

    python benchmarks/bench_step.py                      # TREC-6 and CoNLL-2003, every setting
    python benchmarks/bench_step.py --settings baseline bf16 --steps 20

Each setting builds the recipe's model, batches and optimizer (`nlptransfer` pieces, not a copy),
runs `--warmup` steps, then times `--steps` full steps (forward, backward, clipping, AdamW, schedule)
on the same batches, in one process, settings taking turns over `--rounds` rounds (the best round
counts) so that background load hits all alike. Reports ms/step, real tokens/s and model FLOP
utilisation against the fp32/bf16 matmul peak measured in the same run.
Writes benchmarks/results/step.json and prints a markdown table.
"""

import argparse
import contextlib
import time

import torch

from nlptransfer import (
    DataArguments,
    ModelArguments,
    PaddingCollator,
    TaskSpec,
    TrainArguments,
    encode_splits,
    load_model_for_task,
    load_splits,
    load_tokenizer,
    parse_args,
    train_dataloader,
)
from nlptransfer.allocator import ALLOCATORS
from nlptransfer.profiling import peak_flops
from nlptransfer.training import build_optimizer, cpu_cores

from _common import TASKS, benchmark_parser, markdown_table, results_path, write_results
from bench_finetune import MAX_SEQ_LENGTH, MODEL, train_flops_per_epoch


def untouched(model, optimizer_kwargs):
    return model, optimizer_kwargs, contextlib.nullcontext


def bf16(model, optimizer_kwargs):
    return model, optimizer_kwargs, lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def fused_adamw(model, optimizer_kwargs):
    return model, {**optimizer_kwargs, "fused": True}, contextlib.nullcontext


def bf16_fused(model, optimizer_kwargs):
    return model, {**optimizer_kwargs, "fused": True}, lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def bf16_fused_frozen_embeddings(model, optimizer_kwargs):
    model.get_input_embeddings().weight.requires_grad_(False)
    return bf16_fused(model, optimizer_kwargs)


def bf16_fused_compiled(model, optimizer_kwargs):
    model.forward = torch.compile(model.forward, dynamic=True)
    return bf16_fused(model, optimizer_kwargs)


def fused_frozen_embeddings(model, optimizer_kwargs):
    model.get_input_embeddings().weight.requires_grad_(False)
    return fused_adamw(model, optimizer_kwargs)


def fused_compiled_layers(model, optimizer_kwargs):
    """Regional compilation: each encoder layer compiled (one graph, reused by all six), the rest eager."""
    from nlptransfer.encoders import encoder_layers, encoder_module

    for layer in encoder_layers(encoder_module(model)):
        layer.compile(dynamic=True)
    return fused_adamw(model, optimizer_kwargs)


def eager_attention(model, optimizer_kwargs):
    model.set_attn_implementation("eager")
    return model, optimizer_kwargs, contextlib.nullcontext


def bf16_fused_eager(model, optimizer_kwargs):
    model.set_attn_implementation("eager")
    return bf16_fused(model, optimizer_kwargs)


# one change each, against `baseline` (fp32, SDPA attention, foreach AdamW: the recipe's settings before #3);
# bf16+fused_adamw is the recipe's default now (--mixed_precision auto on a CPU with AMX, --optim adamw_torch_fused)
SETTINGS = {
    "baseline": untouched,
    "bf16": bf16,
    "fused_adamw": fused_adamw,
    "bf16+fused_adamw": bf16_fused,
    "eager_attention": eager_attention,
    "bf16+fused+eager_attention": bf16_fused_eager,
    "bf16+fused+frozen_word_embeddings": bf16_fused_frozen_embeddings,
    "bf16+fused+compile": bf16_fused_compiled,
    # fp32, where bf16 is slow (no AMX or AVX512-BF16)
    "fused+frozen_word_embeddings": fused_frozen_embeddings,
    "fused+compiled_layers": fused_compiled_layers,
}


def precision_of(setting: str) -> str:
    return "bf16" if "bf16" in setting else "fp32"


def build(task: str, setting: str, batch_size: int, limit: int):
    model_args, data_args, train_args = parse_args(
        ModelArguments,
        DataArguments,
        TrainArguments,
        args=[*TASKS[task]["args"], "--model_name_or_path", MODEL, "--max_train_samples", str(limit)]
        + ["--per_device_train_batch_size", str(batch_size), "--max_seq_length", str(MAX_SEQ_LENGTH)]
        + ["--optim", "adamw_torch"],  # foreach AdamW; settings that fuse it say so
    )
    spec = TaskSpec.from_data_args(data_args)
    tokenizer = load_tokenizer(model_args)
    splits = load_splits(data_args, train_args.seed)
    features = encode_splits({"train": splits["train"]}, spec, tokenizer, data_args.max_seq_length)["train"].features
    torch.manual_seed(0)
    model = load_model_for_task(model_args, spec)
    model, optimizer_kwargs, autocast = SETTINGS[setting](model, {})
    if not optimizer_kwargs:  # the recipe's own optimizer as it is
        optimizer_kwargs = None
    model.train()
    optimizer = build_optimizer(model, train_args)
    if optimizer_kwargs is not None:
        groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in optimizer.param_groups]
        optimizer = type(optimizer)(groups, **optimizer_kwargs)
    loader = train_dataloader(features, batch_size, PaddingCollator(tokenizer.pad_token_id), 0, True)
    batches = [{k: v for k, v in batch.items() if k != "feature_index"} for batch in loader]
    return model, optimizer, autocast, batches


def step(model, optimizer, autocast, batch) -> None:
    with autocast():
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_parser(doc: str, settings: list[str], steps: int) -> argparse.ArgumentParser:
    """The flags bench_step.py and profile_step.py share."""
    parser = benchmark_parser(doc, tasks=list(TASKS))
    parser.add_argument("--settings", nargs="+", default=settings, choices=list(SETTINGS))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument(
        "--cpu_allocator", default="reuse", choices=list(ALLOCATORS), help="as the recipes' flag (one per process)"
    )
    return parser


def threads_and_peaks(requested: int | None) -> tuple[int, dict[str, float]]:
    """The thread count (every core unless `requested`), set for torch after measuring the fp32/bf16 peaks."""
    threads = requested or cpu_cores()
    peak = {name: peak_flops(name, threads) for name in ("fp32", "bf16")}
    torch.set_num_threads(threads)
    return threads, peak


def main() -> None:
    parser = step_parser(__doc__, list(SETTINGS), 30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ALLOCATORS[args.cpu_allocator]()
    output = results_path(args, "step")
    threads, peak = threads_and_peaks(args.threads)
    rows = []
    for task in args.tasks:
        limit = args.batch_size * (args.steps + args.warmup)
        built = {name: build(task, name, args.batch_size, limit) for name in args.settings}
        best = {name: float("inf") for name in args.settings}
        warmup_s = {}  # the warm-up steps, compilation included
        for name, (model, optimizer, autocast, batches) in built.items():
            start = time.perf_counter()
            for batch in batches[: args.warmup]:
                step(model, optimizer, autocast, batch)
            warmup_s[name] = time.perf_counter() - start
        for _ in range(args.rounds):
            for name, (model, optimizer, autocast, batches) in built.items():
                start = time.perf_counter()
                for batch in batches[args.warmup : args.warmup + args.steps]:
                    step(model, optimizer, autocast, batch)
                best[name] = min(best[name], time.perf_counter() - start)
        for name, (_, _, _, batches) in built.items():
            timed = batches[args.warmup : args.warmup + args.steps]
            lengths = [int(n) for batch in timed for n in batch["attention_mask"].sum(1)]
            flops = train_flops_per_epoch(lengths)
            precision = precision_of(name)
            rows.append(
                {
                    "task": task,
                    "setting": name,
                    "warmup_s": warmup_s[name],
                    "ms_per_step": 1000 * best[name] / len(timed),
                    "real_tokens_per_second": sum(lengths) / best[name],
                    "padded_tokens_per_second": sum(b["input_ids"].numel() for b in timed) / best[name],
                    "mfu": flops / best[name] / peak[precision],
                    "precision": precision,
                }
            )
        del built
    write_results(output, {"peak_flops": peak, "threads": threads, "rows": rows})
    print(f"peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s ({threads} threads)")
    table = [
        [r["task"], r["setting"], f"{r['ms_per_step']:.0f}", f"{r['real_tokens_per_second']:.0f}"]
        + [f"{100 * r['mfu']:.1f}% ({r['precision']})", f"{r['warmup_s']:.1f}"]
        for r in rows
    ]
    header = ["task", "setting", "ms/step", "real tokens/s", "MFU", f"first {args.warmup} steps (s)"]
    print("\n" + markdown_table(header, table))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
