"""Model FLOPs and matmul timings: the arithmetic behind the benchmarks' MFU figures (a leaf module: torch only).

`train_flops` counts the model FLOPs of training an encoder on given token counts; `peak_flops` times large
square matmuls (the peak MFU is measured against); `shape_flops` times an encoder's own matmul shapes
(`matmul_shapes`) alone, to show how close to that peak its small matrices can get on this machine.
"""

import time


def train_flops(lengths: list[int], config) -> float:
    """Model FLOPs of one training pass over sequences of `lengths` real tokens: forward + backward = 3 x forward,
    with a forward of 2 FLOPs per matmul weight per token plus attention scores and mixing (2 x 2 x length x hidden
    per token per layer). `config` gives hidden_size, num_hidden_layers and intermediate_size (a transformers
    config). Embedding lookups and the (tiny) heads are left out."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    matmul_weights = layers * (4 * hidden * hidden + 2 * hidden * config.intermediate_size)
    return sum(3 * (2 * matmul_weights * n + layers * 4 * n * n * hidden) for n in lengths)


def peak_flops(
    dtype_name: str, threads: int, size: int = 2048, repeats: int = 8, rounds: int = 3, budget_s: float = 2.0
) -> float:
    """FLOP/s of the best of `rounds` timings of `repeats` square matmuls of `size` in `dtype_name` (fp32, bf16)
    on `threads` torch threads (which stay set). Where one matmul takes over `budget_s` / 2 (bf16 on a CPU without
    AMX or AVX512-BF16 runs at a few GFLOP/s), judged from a 256 x 256 matmul first, the size halves (down to
    256) and the repeats shrink to fit `budget_s` per round: such a CPU is measured in seconds, not minutes."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    probe = torch.randn(256, 256, dtype=dtype)
    probe @ probe  # warm-up
    start = time.perf_counter()
    probe @ probe
    per_cube = (time.perf_counter() - start) / 256**3
    while size > 256 and per_cube * size**3 > budget_s / 2:  # a first guess from the small matmul's speed
        size //= 2
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    a @ b
    once = time.perf_counter() - start
    repeats = max(1, min(repeats, int(budget_s / once)))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


def matmul_shapes(config, tokens: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count per layer) of an encoder layer's forward matmuls for a batch of `tokens` tokens."""
    hidden, inter = config.hidden_size, config.intermediate_size
    return [(tokens, hidden, hidden, 4), (tokens, hidden, inter, 1), (tokens, inter, hidden, 1)]


def shape_flops(shapes: list[tuple[int, int, int, int]], dtype, repeats: int = 20) -> float:
    """FLOP/s of the given matmul shapes timed alone (weights and inputs fresh, best of 3 rounds)."""
    import torch

    mats = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), c) for m, k, n, c in shapes]
    for a, b, _ in mats:
        a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            for a, b, count in mats:
                for _ in range(count):
                    a @ b
        best = min(best, time.perf_counter() - start)
    return repeats * sum(2 * m * k * n * c for m, k, n, c in shapes) / best
