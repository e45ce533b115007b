"""Export any run to ONNX: one graph that answers as the run's PyTorch model does, for ONNX Runtime.

    export_onnx("runs/mtl", "exports/mtl")                     # model.onnx, tokenizer, nlptransfer_onnx.json
    export_onnx("runs/mtl", "exports/mtl", quantize="int8")    # ... and model_int8.onnx beside it
    load_predictor("exports/mtl", backend="onnx").predict(["Who wrote Hamlet?"])

What is exported is `inference.TorchTaskModel`, the module the PyTorch backend runs, so both answer from one
definition: a single-task model (an adapter merged into its base at load) gives one output named after its
task; a multi-task model gives every task's output from one encoder pass (with an adapter per task, one pass
per task, each with its adapter, all in the one graph). Inputs are the tokenizer's `input_ids`,
`attention_mask` (and `token_type_ids` when it makes them), with dynamic batch and sequence axes.

The graph comes from PyTorch's own exporter (`torch.onnx.export(dynamo=True)`, i.e. `torch.export`):
optimum's exporters (`optimum-onnx` 0.1.0) do not import with transformers 5, and none of them covers the
multi-task graph. `--quantize int8` adds onnxruntime's dynamic quantization of the same graph (int8 weights,
activations quantized at run time) as a second file; the onnx backend then loads it by default, and
`model.onnx` stays for comparison and for runtimes without int8 kernels.

A new export format is one function in `EXPORT_FORMATS`; a new quantization one in `QUANTIZERS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from nlptransfer.errors import ConfigError, OutputDirError
from nlptransfer.inference import ONNX_INPUTS, TorchTaskModel, load_task_model
from nlptransfer.runs import ONNX_FILE, ONNX_FORMAT_VERSION, ONNX_MODEL_FILE, write_json

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
"""The opset `torch.onnx.export(dynamo=True)` writes natively (others go through onnx's version converter)."""
_PROTOBUF_LIMIT = 2**31 - 2**26  # weights over ~2 GB go to an external data file (a protobuf cannot hold them)
_SAMPLE_TEXTS = (  # the trace's sample: two rows of different lengths, so padding and the mask are in it
    "Who wrote the play Hamlet, and in which city was it first performed?",
    "Anna visited Paris.",
)
_CHECK_TEXTS = ("a", "How far is it from Denver to Aspen?", "Rome", "Which team won the match today in Oslo?")
"""A batch of another size and length than the trace's: the export checks its dynamic axes on it."""


def _check_out(out: Path) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise OutputDirError(f"{out} exists and is not empty; give a new or empty folder (nothing was overwritten)")


def _versions() -> dict[str, str | None]:
    versions = {}
    for package in ("nlptransfer", "torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def quantize_int8(source: Path, target: Path, external_data: bool) -> dict:
    """onnxruntime's dynamic quantization: int8 weights of MatMul/Gemm (per tensor), activations quantized per
    batch at run time; no calibration data. Returns what the manifest records."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        use_external_data_format=external_data,
    )
    return {"method": "dynamic", "weight_type": "int8", "op_types": ["MatMul", "Gemm"], "per_channel": False}


QUANTIZERS: dict[str, Callable[[Path, Path, bool], dict]] = {"int8": quantize_int8}
"""--quantize name -> quantizer(source graph, target file, external_data) returning its manifest entry."""


def _sample(tokenizer, texts, input_names: list[str]) -> dict[str, torch.Tensor]:
    encoding = tokenizer(list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt")
    return {name: encoding[name].long() for name in input_names}


_CHATTER = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript")
"""Loggers of the exporter: operators of packages not installed, opset fallbacks (checked here: `_opset`)."""


class _NoPreprocessHint(logging.Filter):
    """onnxruntime's quantizer advises its pre-processing on the root logger at every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's and quantizer's own chatter is not the user's: what matters is checked and reported here."""
    loggers = [logging.getLogger(name) for name in _CHATTER]
    levels = [logger.level for logger in loggers]
    hint = _NoPreprocessHint()
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    logging.getLogger().addFilter(hint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger().removeFilter(hint)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _trace(module: TorchTaskModel, sample: dict[str, torch.Tensor], path: Path, opset: int, external: bool) -> None:
    """Write the graph; an opset the exporter could not convert the graph to (it falls back to its own) is refused."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {name: {0: batch, 1: sequence} for name in sample}
    with _quiet_exporter():
        torch.onnx.export(
            module,
            (),
            str(path),
            kwargs=sample,
            input_names=list(sample),
            output_names=module.names,
            dynamic_shapes=dynamic,
            opset_version=opset,
            dynamo=True,
            external_data=external,
            verbose=False,
        )
    written = _opset(path)
    if written != opset:
        raise ConfigError(f"--opset {opset}: this graph cannot be converted to it (the exporter wrote {written})")


def _opset(path: Path) -> int:
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return next(entry.version for entry in imports if entry.domain in ("", "ai.onnx"))


def _max_difference(module: TorchTaskModel, path: Path, inputs: dict[str, torch.Tensor]) -> float:
    """The largest difference between ONNX Runtime's and PyTorch's logits on `inputs`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(module.names, {name: tensor.numpy() for name, tensor in inputs.items()})
    with torch.inference_mode():
        reference = module(**inputs)
    return max(float(np.abs(a - b.float().numpy()).max()) for a, b in zip(ours, reference))


def export_onnx(run: str | Path, out: str | Path, quantize: str | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """Export a run folder (single-task, adapter, multi-task) to the new folder `out`: `model.onnx`, the
    tokenizer's files and `nlptransfer_onnx.json` (tasks, inputs and outputs, source, versions); with
    `quantize`, also its quantized graph. Refuses an `out` that holds anything. Returns `out`."""
    out = Path(out)
    _check_out(out)
    if quantize is not None and quantize not in QUANTIZERS:
        raise ConfigError(f"--quantize {quantize!r} is not known; choose one of {', '.join(QUANTIZERS)}")
    module, specs, tokenizer, kind = load_task_model(run)
    input_names = [name for name in ONNX_INPUTS if name in tokenizer.model_input_names]
    if clash := sorted(set(module.names) & set(input_names)):
        raise ConfigError(f"{run}: task names {clash} are also input names; rename the tasks to export")
    external = sum(p.numel() * p.element_size() for p in module.parameters()) > _PROTOBUF_LIMIT
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"  # `out` appears only when complete
    staging.mkdir()
    try:
        graph = staging / ONNX_MODEL_FILE
        _trace(module, _sample(tokenizer, _SAMPLE_TEXTS, input_names), graph, opset, external)
        difference = _max_difference(module, graph, _sample(tokenizer, _CHECK_TEXTS, input_names))
        files, default = {"fp32": ONNX_MODEL_FILE}, ONNX_MODEL_FILE
        quantization = None
        if quantize is not None:
            default = files[quantize] = f"model_{quantize}.onnx"
            with _quiet_exporter():
                settings = QUANTIZERS[quantize](graph, staging / default, external)
            quantization = {"name": quantize, "file": default, **settings}
        tokenizer.save_pretrained(staging)
        manifest = {
            "format_version": ONNX_FORMAT_VERSION,
            "source_run": str(Path(run).resolve()) if Path(run).exists() else str(run),
            "run_kind": kind,
            "tasks": [dataclasses.asdict(spec) for spec in specs],
            "inputs": input_names,
            "outputs": module.names,
            "dynamic_axes": {name: ["batch", "sequence"] for name in input_names},
            "files": files,
            "default_file": default,
            "opset": opset,
            "quantization": quantization,
            "max_abs_difference_to_torch": difference,
            "versions": _versions(),
        }
        write_json(staging / ONNX_FILE, manifest)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if difference > 1e-3:  # float32 reorderings stay near 1e-5: more means an operator was translated wrongly
        logger.warning("%s: ONNX Runtime's logits differ from PyTorch's by up to %.2e", out, difference)
    logger.info("exported %s to %s (max difference to PyTorch %.2e)", run, out, difference)
    return out


EXPORT_FORMATS: dict[str, Callable[..., Path]] = {"onnx": export_onnx}
"""`nlptransfer export FORMAT RUN OUT`: format name -> exporter(run, out, **options)."""
