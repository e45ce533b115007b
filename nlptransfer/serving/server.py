"""`nlptransfer serve`: load the runs, bind the socket, run uvicorn until SIGTERM/SIGINT.

The models load before the socket is bound, so the printed `listening on http://HOST:PORT` line (the bound
port, also for `--port 0`) means ready. On SIGTERM or SIGINT uvicorn stops accepting connections, answers
every request it has accepted (up to `--graceful_timeout_s`), then the lifespan stops the batch workers and
the process exits 0.
"""

from __future__ import annotations

import gc
import signal
import socket
from pathlib import Path

import torch

from nlptransfer.encoders import cpu_cores
from nlptransfer.errors import ConfigError
from nlptransfer.serving.app import ServedModel, build_app
from nlptransfer.serving.batcher import MicroBatcher
from nlptransfer.serving.config import ServeConfig
from nlptransfer.serving.metrics import ServeMetrics
from nlptransfer.serving.precision import load_served_predictor


def named_runs(runs: list[str]) -> dict[str, str]:
    """`RUN` or `NAME=RUN` arguments -> {name: run}; a run's name is its folder's name by default."""
    named: dict[str, str] = {}
    for item in runs:
        name, sep, run = item.partition("=")
        if not sep or not name or Path(item).exists():
            name, run = Path(item.rstrip("/")).name, item
        if name in named:
            raise ConfigError(f"two runs are named {name!r}; name them apart with NAME=RUN")
        named[name] = run
    return named


def load_models(runs: list[str], config: ServeConfig, metrics: ServeMetrics) -> list[ServedModel]:
    """Each run's `Predictor` (adapters merged into their base at load) behind its own batcher."""
    models = []
    for name, run in named_runs(runs).items():
        predictor = load_served_predictor(
            run, config.backend, config.device, config.max_length, config.precision, name=name
        )
        batcher = MicroBatcher(predictor, config.max_batch_size, config.max_wait_ms, metrics.batch_observer(name))
        models.append(ServedModel(name=name, run=run, predictor=predictor, batcher=batcher))
    return models


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, as uvicorn binds: asyncio sets TCP_NODELAY only on connections of such a socket, and
    # without it every response (headers, then body: two writes) waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(runs: list[str], config: ServeConfig) -> int:
    """Serve `runs` until a signal; 0 after a graceful shutdown."""
    import uvicorn

    # every core but one: the event loop parses and answers HTTP while a pass runs, and an intra-op thread
    # that has to share its core stalls every parallel region of the pass
    torch.set_num_threads(config.cpu_threads or max(1, cpu_cores() - 1))
    metrics = ServeMetrics()
    models = load_models(runs, config, metrics)
    app = build_app(models, config, metrics)
    # the loaded models are ~0.5M Python objects that live as long as the server: out of the collector's sight,
    # a full collection no longer scans them, which stalled every request for ~0.2 s now and then
    gc.collect()
    gc.freeze()
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {', '.join(m.name for m in models)} on http://{shown}:{port} (listening)", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=config.log_level,
            access_log=config.access_log,
            timeout_graceful_shutdown=config.graceful_timeout_s,
            lifespan="on",
        )
    )
    # uvicorn re-raises the signal that stopped it once it has shut down, to the handler it found at start:
    # with a no-op handler there, a graceful stop ends with status 0 instead of dying by SIGTERM/SIGINT
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0 if server.started else 1
