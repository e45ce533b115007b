"""The number format a served model computes in (`--precision`), and loading a run's `Predictor` in it.

    fp32   float32 weights: the predictions `nlptransfer predict` prints, to the last digit
    bf16   weights cast to bfloat16 once at load (torch backend); logits come back as float32
    auto   bf16 where bf16 matmuls are fast (an AMX / AVX512-BF16 CPU, a bf16 GPU), fp32 elsewhere

On this project's AMX CPU, bf16 weights make a MiniLM pass faster for a lone text and about twice as fast for a
batch of 16; bf16 *autocast* is slower than float32 below 8 texts, as it casts every weight on every pass.
`benchmarks/bench_serve.py` records how often bf16 answers as float32 does on the test sets. An ONNX export
keeps the precision it was exported with (`--quantize`), so other backends ignore `auto` and refuse `bf16`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nlptransfer.errors import ConfigError
from nlptransfer.inference import Predictor, load_predictor


def bf16_is_fast(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:  # private helpers, present in torch 2.x; without them assume no
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:
        return False


PRECISIONS: dict[str, Callable[[str], torch.dtype | None]] = {
    "fp32": lambda device_type: None,
    "bf16": lambda device_type: torch.bfloat16,
    "auto": lambda device_type: torch.bfloat16 if bf16_is_fast(device_type) else None,
}
"""--precision -> (device type -> the weights' dtype; None: as saved, float32)."""


def load_served_predictor(
    run: str, backend: str, device: str, max_length: int, precision: str, name: str | None = None
) -> Predictor:
    """`load_predictor`, with the torch backend's weights in the `precision` asked for."""
    dtype = PRECISIONS[precision](torch.device(device).type)
    if dtype is not None and backend != "torch" and precision != "auto":
        raise ConfigError(f"--precision {precision} needs --backend torch; an {backend} model keeps its own")
    options = {"dtype": dtype} if dtype is not None and backend == "torch" else {}
    predictor = load_predictor(run, backend=backend, device=device, max_length=max_length, **options)
    predictor.name = name or predictor.name
    return predictor
