"""The HTTP application: routes, error bodies and the batchers' lifetime (`build_app`).

    POST /predict                   text-embeddings-inference's classifier `/predict` (the first model)
    POST /predict/tasks             every task's prediction per input from one encoder pass (`tasks`: a subset)
    POST /models/{name}/predict     the same two routes for the model served as `name`; a TEI client whose base
    POST /models/{name}/predict/tasks   URL ends in /models/{name} reaches any model unchanged
    GET  /models/{name}/info        one model: kind, tasks, labels, and TEI's /info fields
    GET  /info                      every model, the limits and the batching settings
    GET  /health                    200 while every model's worker runs, 503 otherwise
    GET  /metrics                   Prometheus text format (`metrics.py`)

A body may also name its model (`"model": "name"`); on /models/{name}/... it must agree with the path.
Every refusal is a 4xx with TEI's error body, {"error": "...", "error_type": "..."}; nothing a client sends
stops the server. Imports fastapi: only `server.py` (and tests) import this module, when serving starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from nlptransfer.inference import Predictor
from nlptransfer.serving.batcher import MicroBatcher
from nlptransfer.serving.config import ServeConfig
from nlptransfer.serving.metrics import MetricsMiddleware, ServeMetrics
from nlptransfer.serving.outputs import task_answers, tei_answer
from nlptransfer.serving.requests import Limits, RequestError, Text, model_field, parse_predict, read_json


@dataclass
class ServedModel:
    name: str
    run: str
    predictor: Predictor
    batcher: MicroBatcher

    def info(self, config: ServeConfig) -> dict:
        predictor = self.predictor
        tasks = [{"name": s.name, "kind": s.kind, "labels": list(s.labels)} for s in predictor.specs.values()]
        first = tasks[0]["labels"]
        return {
            "name": self.name,
            "run": self.run,
            "kind": predictor.kind,
            "backend": config.backend,
            "pair_input": predictor.pair_input,
            "tasks": tasks,
            # text-embeddings-inference's /info fields, for its clients (the first task's labels)
            "model_id": self.run,
            "model_type": {
                "classifier": {
                    "id2label": {str(i): label for i, label in enumerate(first)},
                    "label2id": {label: i for i, label in enumerate(first)},
                }
            },
            "max_input_length": predictor.max_length,
            "max_client_batch_size": config.max_texts_per_request,
            "auto_truncate": True,
        }


def json_response(payload, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body has {declared} bytes; the server's limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body passes the server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def token_limit_check(predictor: Predictor, texts: list[Text]):
    """For `truncate: false`: refuse (413, as TEI) inputs longer than the model reads, instead of cutting them."""

    def check() -> None:
        if predictor.chunking:  # it reads any length: long texts in windows
            return
        first = [t if isinstance(t, str) else t[0] for t in texts]
        second = None if isinstance(texts[0], str) else [t[1] for t in texts]
        lengths = [len(ids) for ids in predictor.tokenizer(first, second, truncation=False)["input_ids"]]
        for i, length in enumerate(lengths):
            if length > predictor.max_length:
                raise RequestError(
                    413,
                    f"input {i} has {length} tokens; the model reads at most {predictor.max_length} "
                    '(send "truncate": true to cut it)',
                )

    return check


def build_app(models: list[ServedModel], config: ServeConfig, metrics: ServeMetrics | None = None):
    """The FastAPI app serving `models` (the first answers the routes without /models/{name})."""
    by_name = {model.name: model for model in models}
    metrics = metrics or ServeMetrics()
    limits = Limits(max_texts=config.max_texts_per_request, max_chars=config.max_chars_per_text)
    in_flight = 0

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for model in models:
            model.batcher.start()
        yield
        # uvicorn has answered every accepted request by now; the workers finish whatever is still queued
        await asyncio.gather(*(asyncio.to_thread(model.batcher.stop) for model in models))

    app = FastAPI(title="nlptransfer", summary="Predictions of nlptransfer runs", lifespan=lifespan)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestError)
    async def refused(request, err: RequestError):
        return json_response(err.body(), err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return json_response(
            {"error": str(err.detail), "error_type": kinds.get(err.status_code, "http")}, err.status_code
        )

    def pick(path_name: str | None, body_name: str | None) -> ServedModel:
        if path_name is not None and body_name is not None and body_name != path_name:
            raise RequestError(422, f'"model" is {body_name!r} but the path names {path_name!r}')
        name = path_name or body_name
        if name is None:
            return models[0]
        if name not in by_name:
            raise RequestError(404, f"no model named {name!r}; this server has {', '.join(by_name)}", "not_found")
        return by_name[name]

    async def answer(request: Request, name: str | None, every_task: bool):
        nonlocal in_flight
        if in_flight >= config.max_concurrent_requests:
            raise RequestError(429, "the server is overloaded; retry later", "overloaded")
        in_flight += 1
        try:
            data = read_json(await read_body(request, config.max_body_bytes))
            model = pick(name, model_field(data))
            predictor = model.predictor
            parsed = parse_predict(data, limits, predictor.pair_input, predictor.task_names)
            tasks = parsed.tasks or predictor.task_names
            if every_task:
                format_answer = task_answers([predictor.specs[t] for t in tasks])
            elif parsed.tasks and len(parsed.tasks) > 1:
                raise RequestError(422, "/predict answers one task; ask /predict/tasks for several")
            else:
                format_answer = tei_answer(predictor.specs[tasks[0]], parsed.raw_scores)
            check = None if parsed.truncate else token_limit_check(predictor, parsed.texts)
            try:
                answers = await model.batcher.submit(parsed.texts, format_answer, check)
            except RequestError:
                raise
            except Exception as err:  # the model failed on this batch; the server goes on
                raise RequestError(500, f"inference failed: {type(err).__name__}: {err}", "backend") from err
            return json_response(answers if parsed.batch else answers[0])
        finally:
            in_flight -= 1

    @app.post("/predict")
    async def predict(request: Request):
        return await answer(request, None, every_task=False)

    @app.post("/predict/tasks")
    async def predict_tasks(request: Request):
        return await answer(request, None, every_task=True)

    @app.post("/models/{name}/predict")
    async def model_predict(request: Request, name: str):
        return await answer(request, name, every_task=False)

    @app.post("/models/{name}/predict/tasks")
    async def model_predict_tasks(request: Request, name: str):
        return await answer(request, name, every_task=True)

    @app.get("/models/{name}/info")
    async def model_info(name: str):
        return json_response(pick(name, None).info(config))

    @app.get("/info")
    async def info():
        return json_response(
            {
                "models": [model.info(config) for model in models],
                "default_model": models[0].name,
                "limits": config.limits(),
                "batching": {"max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms},
            }
        )

    @app.get("/health")
    async def health():
        down = [model.name for model in models if not model.batcher.alive]
        if down:
            return json_response({"error": f"worker stopped: {', '.join(down)}", "error_type": "unhealthy"}, 503)
        return json_response({"status": "ok", "models": list(by_name)})

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
