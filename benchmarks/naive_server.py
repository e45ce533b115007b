"""The baseline of bench_serve.py: the server a user writes first, FastAPI on uvicorn around a transformers
`pipeline`, one pipeline call per request, no batching.

    python benchmarks/naive_server.py runs/trec --port 0 [--cpu_threads 1]

Set up as a careful user would: the pipeline is built once at start, the handler is a plain `def` (FastAPI
runs it in its thread pool, so the event loop keeps accepting), and it answers TEI's format (every label,
highest first: `top_k=None`). The access log is off, as in `nlptransfer serve`. Like `nlptransfer serve`, it
prints `serving ... on http://HOST:PORT (listening)` once the socket listens, so the benchmark finds its port
the same way.
"""

import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoConfig, pipeline


class PredictRequest(BaseModel):
    inputs: str | list[str]


def build_app(model: str, dtype: str = "float32") -> FastAPI:
    tagger = any(name.endswith("ForTokenClassification") for name in AutoConfig.from_pretrained(model).architectures)
    if tagger:
        runner = pipeline("token-classification", model=model, device="cpu", dtype=dtype, aggregation_strategy="first")
    else:
        runner = pipeline("text-classification", model=model, device="cpu", dtype=dtype, top_k=None)
    app = FastAPI()

    @app.post("/predict")
    def predict(request: PredictRequest):
        result = runner(request.inputs)
        if tagger:  # numpy float32 scores are not JSON
            result = [{**entity, "score": float(entity["score"])} for entity in result]
        return result

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a single-task run folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--cpu_threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", default="float32", help="the weights' dtype: float32 or bfloat16")
    args = parser.parse_args()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    app = build_app(args.model, args.dtype)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    sock = config.bind_socket()  # uvicorn's own socket, as `uvicorn.run` binds it
    sock.listen(config.backlog)  # so that clients queue from the printed line on (uvicorn listens again)
    print(f"serving {args.model} on http://{args.host}:{sock.getsockname()[1]} (listening)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
