"""`nlptransfer serve`: runs behind HTTP, with dynamic micro-batching (FastAPI on uvicorn).

    config.py    ServeConfig: the flags, their defaults and checks
    requests.py  request bodies -> validated requests, or a 4xx RequestError (no web framework)
    outputs.py   one text's answer from a model pass: TEI's format by task kind, or every task's prediction
    batcher.py   MicroBatcher: one worker thread per model batches the requests that arrive together
    metrics.py   Prometheus counters and histograms, and the middleware that feeds them
    app.py       the FastAPI routes
    server.py    load, bind, run uvicorn, shut down gracefully

fastapi, uvicorn and prometheus_client are imported only by app.py, metrics.py and server.py, and only
when serving starts, so `import nlptransfer` never needs them.
"""

from nlptransfer.serving.config import ServeConfig, add_serve_arguments, config_from_args

__all__ = ["ServeConfig", "add_serve_arguments", "config_from_args"]
