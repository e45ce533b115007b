"""Where a training step's time goes: torch.profiler over bench_step's steps, time per kind of operation.

    python benchmarks/profile_step.py                                  # TREC-6 and CoNLL-2003, the recipe's default
    python benchmarks/profile_step.py --settings baseline bf16+fused_adamw --steps 20

For each task and setting (bench_step's builds: the recipe's model, batches and optimizer), profiles
`--steps` full steps after `--warmup`, sums each operator's self CPU time into the kinds of `KINDS`, and
scales the shares to the un-profiled ms/step timed in the same run. It also times the encoder's own
matmul shapes in isolation (tokens x hidden times hidden x 4*hidden, ...) to show how far even a perfect
step could get on this CPU: the large-matmul peak that MFU is measured against is out of reach for
MiniLM's small matrices. Peak RSS of the same steps comes from a fresh process per setting.
Writes benchmarks/results/step_profile.json and prints markdown tables.
"""

import multiprocessing
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from nlptransfer.allocator import ALLOCATORS
from nlptransfer.profiling import matmul_shapes, shape_flops

from _common import markdown_table, results_path, status_mib, write_results
from bench_finetune import train_flops_per_epoch
from bench_step import build, precision_of, step, step_parser, threads_and_peaks

# operator name -> kind (the first matching prefix wins); anything else is "other"
KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul"),
    "attention (SDPA kernel)": ("aten::_scaled_dot_product", "aten::_flash_attention"),
    "optimizer (AdamW)": ("aten::_fused_adamw", "aten::_foreach_add", "aten::_foreach_mul", "aten::_foreach_lerp")
    + ("aten::_foreach_addcmul", "aten::_foreach_addcdiv", "aten::_foreach_sqrt", "aten::_foreach_div", "Optimizer"),
    "gradient clipping": ("aten::_foreach_norm", "aten::linalg_vector_norm", "aten::clamp", "aten::stack"),
    "embeddings": ("aten::embedding", "aten::index_select", "aten::index_add", "aten::index_put", "aten::sort")
    + ("aten::_embedding_bag",),
    "layer norm / GELU / softmax / dropout": ("aten::native_layer_norm", "aten::gelu", "aten::_softmax")
    + ("aten::native_dropout", "aten::bernoulli", "aten::_log_softmax", "aten::nll_loss", "aten::tanh")
    + ("aten::softmax",),
    "dtype casts (autocast)": ("aten::_to_copy", "aten::to", "aten::copy_", "aten::empty_strided"),
    "elementwise (add, mul, fill, ...)": ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::fill_")
    + ("aten::zero_", "aten::zeros", "aten::ones", "aten::sum", "aten::where", "aten::masked_fill", "aten::rsub"),
    "views and reshapes": ("aten::view", "aten::reshape", "aten::t", "aten::transpose", "aten::permute")
    + ("aten::expand", "aten::contiguous", "aten::clone", "aten::slice", "aten::select", "aten::unsqueeze")
    + ("aten::as_strided", "aten::detach", "aten::_unsafe_view", "aten::split", "aten::chunk", "aten::squeeze"),
}


def kind_of(name: str) -> str:
    # backward nodes ("autograd::engine::evaluate_function: AddmmBackward0") hold no self time of their own
    return next((kind for kind, prefixes in KINDS.items() if name.startswith(prefixes)), "other")


def profile_steps(model, optimizer, autocast, batches) -> dict:
    """Self CPU time (s) and matmul FLOPs per kind over `batches`, one step each."""
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for batch in batches:
            step(model, optimizer, autocast, batch)
    seconds, flops, ops = {}, 0, {}
    for event in prof.key_averages():
        kind = kind_of(event.key)
        seconds[kind] = seconds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
        ops[event.key] = ops.get(event.key, 0.0) + event.self_cpu_time_total / 1e6
        if kind == "matmul":
            flops += event.flops or 0
    top = dict(sorted(ops.items(), key=lambda item: -item[1])[:15])
    return {"seconds": seconds, "matmul_flops": flops, "top_ops": top}


def _steps_peak_rss(task, setting, batch_size, steps, threads, queue) -> None:
    torch.set_num_threads(threads)
    model, optimizer, autocast, batches = build(task, setting, batch_size, batch_size * steps)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak: what loading took is not the step's
    before = status_mib("VmRSS")
    for batch in batches[:steps]:
        step(model, optimizer, autocast, batch)
    queue.put((before, status_mib("VmHWM")))


def steps_peak_rss(task: str, setting: str, batch_size: int, steps: int, threads: int) -> tuple[float, float]:
    """RSS (MiB) of a fresh process once built, and its peak over `steps` steps (Linux: the peak is reset
    through /proc/self/clear_refs, so model loading and tokenizing do not count)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_steps_peak_rss, args=(task, setting, batch_size, steps, threads, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    args = step_parser(__doc__, ["bf16+fused_adamw"], 20).parse_args()
    ALLOCATORS[args.cpu_allocator]()
    output = results_path(args, "step_profile")
    threads, peak = threads_and_peaks(args.threads)
    rows = []
    for task in args.tasks:
        for setting in args.settings:
            model, optimizer, autocast, batches = build(
                task, setting, args.batch_size, args.batch_size * (args.steps + args.warmup)
            )
            for batch in batches[: args.warmup]:
                step(model, optimizer, autocast, batch)
            timed = batches[args.warmup : args.warmup + args.steps]
            start = time.perf_counter()
            for batch in timed:
                step(model, optimizer, autocast, batch)
            wall = time.perf_counter() - start
            ms_per_step = 1000 * wall / len(timed)
            profiled = profile_steps(model, optimizer, autocast, timed)
            precision = precision_of(setting)
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            lengths = [int(n) for batch in timed for n in batch["attention_mask"].sum(1)]
            padded = sum(b["input_ids"].numel() for b in timed) // len(timed)
            shapes = matmul_shapes(model.config, padded)
            total = sum(profiled["seconds"].values())
            matmul_s = profiled["seconds"].get("matmul", 0.0)
            rows.append(
                {
                    "task": task,
                    "setting": setting,
                    "precision": precision,
                    "ms_per_step": ms_per_step,
                    "mfu": train_flops_per_epoch(lengths) / wall / peak[precision],
                    "padded_tokens_per_batch": padded,
                    "share": {kind: s / total for kind, s in sorted(profiled["seconds"].items(), key=lambda x: -x[1])},
                    "ms_per_step_by_kind": {kind: ms_per_step * s / total for kind, s in profiled["seconds"].items()},
                    "matmul_flops_per_second_in_step": profiled["matmul_flops"] / matmul_s if matmul_s else None,
                    "encoder_matmul_shapes_flops_per_second_alone": shape_flops(shapes, dtype),
                    "top_ops_profiled_s": profiled["top_ops"],
                }
            )
            del model, optimizer, batches
            before, after = steps_peak_rss(task, setting, args.batch_size, args.warmup + args.steps, threads)
            rows[-1] |= {"rss_mib_before_steps": before, "peak_rss_mib_during_steps": after}
    write_results(output, {"peak_flops": peak, "threads": threads, "rows": rows})

    print(f"peak (2048² matmul): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
    for r in rows:
        p = peak[r["precision"]]
        in_step, alone = r["matmul_flops_per_second_in_step"], r["encoder_matmul_shapes_flops_per_second_alone"]
        print(f"\n{r['task']} / {r['setting']}: {r['ms_per_step']:.0f} ms/step, MFU {100 * r['mfu']:.1f}%, peak RSS")
        print(
            f"{r['rss_mib_before_steps']:.0f} MiB before the steps, {r['peak_rss_mib_during_steps']:.0f} at most during"
        )
        print(
            f"matmuls in the step: {in_step / 1e9:.0f} GFLOP/s ({100 * in_step / p:.0f}% of peak); the encoder's matmul "
            f"shapes ({r['padded_tokens_per_batch']} tokens/batch) alone: {alone / 1e9:.0f} GFLOP/s ({100 * alone / p:.0f}%)"
        )
        table = [
            [kind, f"{100 * share:.1f}%", f"{r['ms_per_step_by_kind'][kind]:.1f}"] for kind, share in r["share"].items()
        ]
        print(markdown_table(["kind", "share", "ms/step"], table))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
