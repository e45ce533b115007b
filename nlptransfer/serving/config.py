"""`ServeConfig`: the flags of `nlptransfer serve`, their defaults, and the checks that fail before a model loads.

One dataclass is the flag list (`add_serve_arguments` turns its fields into argparse flags, help included),
the server's settings and what `/info` reports, so the three cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from nlptransfer.errors import ConfigError
from nlptransfer.serving.precision import PRECISIONS


@dataclass(frozen=True)
class ServeConfig:
    """How `nlptransfer serve` listens, batches and limits requests."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (0.0.0.0: every interface)."})
    port: int = field(default=8080, metadata={"help": "Port to bind; 0 picks a free one (printed at start)."})
    backend: str = field(default="torch", metadata={"help": "Inference backend (`nlptransfer.inference.BACKENDS`)."})
    device: str = field(default="cpu", metadata={"help": "Torch device of the torch backend."})
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "Torch threads for the model passes (default: every core but one, left to HTTP)."},
    )
    precision: str = field(
        default="auto", metadata={"help": "Weights in fp32, bf16, or auto: bf16 where bf16 matmuls are fast."}
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per text; longer texts are cut (see `truncate`), or read in windows by a model trained "
            "with --long_text chunk. Default: the window the run was trained with (128 if it does not say)."
        },
    )
    # chosen with `benchmarks/bench_serve.py --sweep` on 2 CPU cores (docs/guides/serving.md says how)
    max_batch_size: int = field(default=16, metadata={"help": "Most texts in one model pass."})
    max_wait_ms: float = field(
        default=2.0, metadata={"help": "How long the first request of a batch waits for more to join it."}
    )
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "Largest request body; larger ones get 413."})
    max_texts_per_request: int = field(default=128, metadata={"help": "Most inputs in one request (413 above)."})
    max_chars_per_text: int = field(default=10_000, metadata={"help": "Most characters in one input (413 above)."})
    max_concurrent_requests: int = field(
        default=512, metadata={"help": "Requests in flight at once; more get 429 (overloaded) at once."}
    )
    graceful_timeout_s: float = field(
        default=30.0, metadata={"help": "On SIGTERM/SIGINT, how long accepted requests may take to finish."}
    )
    log_level: str = field(default="info", metadata={"help": "uvicorn's log level (warning: start/stop only)."})
    access_log: bool = field(default=False, metadata={"help": "Log every request (costs throughput)."})

    def __post_init__(self):
        positive = (
            "max_batch_size",
            "max_body_bytes",
            "max_texts_per_request",
            "max_chars_per_text",
            "max_concurrent_requests",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"--max_length must be at least 1, got {self.max_length}")
        for name in ("max_wait_ms", "graceful_timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0-65535, got {self.port}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r} is not known; choose one of {', '.join(PRECISIONS)}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"--cpu_threads must be at least 1, got {self.cpu_threads}")

    def limits(self) -> dict[str, int]:
        """What `/info` reports as the request limits."""
        names = ("max_body_bytes", "max_texts_per_request", "max_chars_per_text", "max_concurrent_requests")
        return {name: getattr(self, name) for name in names}


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """`RUN [RUN ...]` and one `--flag` per `ServeConfig` field."""
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run folders (or Hub ids), optionally named NAME=RUN; the first answers /predict",
    )
    for spec in dataclasses.fields(ServeConfig):
        kind = {"int": int, "float": float, "bool": _bool, "int | None": int}.get(str(spec.type), str)
        parser.add_argument(f"--{spec.name}", type=kind, default=spec.default, help=spec.metadata["help"])


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(ServeConfig)})
