"""Request bodies in, validated `PredictRequest`s out; every problem a `RequestError` with a 4xx status and a
one-line message. Pure Python (no web framework), so each rule is tested without a server.

`inputs` follows text-embeddings-inference's `/predict` grammar, so its clients work unchanged:

    "a text"                          one input               -> one answer
    ["first", "second"]               one sentence pair       -> one answer (pair models)
    [["a text"], ["first", "second"]] a batch                 -> a list of answers
    ["a", "b", "c"]                   a batch of texts        -> a list of answers (single-text models only:
                                                                 TEI reads two strings as one pair)

Status codes follow TEI's where it has one: 413 for a limit (body, inputs, characters, tokens when
`truncate` is false), 422 for a well-formed body with wrong content, 400 for a body that is not JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

Text = str | tuple[str, str]


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, a message for the client, TEI's `error_type`."""

    def __init__(self, status: int, message: str, error_type: str = "validation"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type

    def body(self) -> dict[str, str]:
        """TEI's error body."""
        return {"error": self.message, "error_type": self.error_type}


@dataclass(frozen=True)
class Limits:
    max_texts: int = 128
    max_chars: int = 10_000


@dataclass
class PredictRequest:
    texts: list[Text]
    batch: bool  # the client sent a batch, so it gets a list of answers back
    raw_scores: bool = False
    truncate: bool = True
    tasks: list[str] | None = None
    model: str | None = None


def read_json(body: bytes) -> dict:
    """The body as a JSON object."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise RequestError(422, f'the body must be a JSON object like {{"inputs": ...}}, got {type(data).__name__}')
    return data


def _text(value, where: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise RequestError(422, f"{where} must be a string, got {json.dumps(value)[:80]}")
    if not value.strip():
        raise RequestError(422, f"{where} is empty")
    if len(value) > limits.max_chars:
        raise RequestError(413, f"{where} has {len(value)} characters; the server's limit is {limits.max_chars}")
    return value


def _sequence(value: list, where: str, limits: Limits, pair_model: bool) -> Text:
    """One batch item: [text] or [first, second]."""
    if not isinstance(value, list) or len(value) not in (1, 2):
        raise RequestError(422, f"{where} must be [text] or [first, second], got {json.dumps(value)[:80]}")
    texts = [_text(item, f"{where}[{i}]", limits) for i, item in enumerate(value)]
    return _shape(texts, where, pair_model)


def _shape(texts: list[str], where: str, pair_model: bool) -> Text:
    if pair_model and len(texts) != 2:
        raise RequestError(422, f"{where}: this model reads sentence pairs; send [first, second]")
    if not pair_model and len(texts) != 1:
        raise RequestError(422, f"{where}: this model reads single texts, not pairs")
    return (texts[0], texts[1]) if pair_model else texts[0]


def parse_inputs(value, limits: Limits, pair_model: bool) -> tuple[list[Text], bool]:
    """(the inputs, whether they came as a batch) from a request's `inputs`."""
    if value is None:
        raise RequestError(422, 'the body has no "inputs": send {"inputs": "a text"} or a list of them')
    if isinstance(value, str):
        return [_shape([_text(value, "inputs", limits)], "inputs", pair_model)], False
    if not isinstance(value, list):
        raise RequestError(422, f'"inputs" must be a string or a list, got {type(value).__name__}')
    if not value:
        raise RequestError(422, '"inputs" is an empty list')
    if len(value) > limits.max_texts:
        raise RequestError(413, f'"inputs" has {len(value)} items; the server\'s limit is {limits.max_texts}')
    if isinstance(value[0], str) and pair_model:  # TEI: a flat list is one input, [text] or [first, second]
        if len(value) > 2:
            raise RequestError(422, '"inputs": a list of strings is one pair [first, second]; batch as [[a, b], ...]')
        texts = [_text(item, f"inputs[{i}]", limits) for i, item in enumerate(value)]
        return [_shape(texts, "inputs", pair_model)], False
    if isinstance(value[0], str):  # a single-text model has no pairs: a flat list is a batch of texts
        return [_text(item, f"inputs[{i}]", limits) for i, item in enumerate(value)], True
    return [_sequence(item, f"inputs[{i}]", limits, pair_model) for i, item in enumerate(value)], True


def _flag(data: dict, name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(422, f'"{name}" must be true or false, got {json.dumps(value)[:40]}')
    return value


def _tasks(value, name: str, known: Sequence[str]) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(name, str) for name in value):
        raise RequestError(422, f'"{name}" must be a task name or a list of them, got {json.dumps(value)[:80]}')
    unknown = [name for name in value if name not in known]
    if unknown:
        raise RequestError(422, f"unknown task {unknown[0]!r}; this model has {', '.join(known)}")
    return list(dict.fromkeys(value))


def model_field(data: dict) -> str | None:
    """The body's optional `model` (a served model's name)."""
    value = data.get("model")
    if value is not None and not isinstance(value, str):
        raise RequestError(422, f'"model" must be a model name, got {json.dumps(value)[:40]}')
    return value


def parse_predict(data: dict, limits: Limits, pair_model: bool, tasks: Sequence[str]) -> PredictRequest:
    """A `/predict` (TEI) or `/predict/tasks` body. `task` (one name) or `tasks` (names) pick the tasks of a
    multi-task model; `truncation_direction` is TEI's and only "right" is supported."""
    direction = data.get("truncation_direction")
    if direction is not None and str(direction).lower() != "right":
        raise RequestError(422, f'"truncation_direction" {json.dumps(direction)[:40]} is not supported; use "right"')
    texts, batch = parse_inputs(data.get("inputs"), limits, pair_model)
    if "task" in data and "tasks" in data:
        raise RequestError(422, 'send either "task" or "tasks", not both')
    name = "task" if "task" in data else "tasks"
    chosen = _tasks(data.get(name), name, tasks)
    return PredictRequest(
        texts=texts,
        batch=batch,
        raw_scores=_flag(data, "raw_scores", False),
        truncate=_flag(data, "truncate", True),
        tasks=chosen,
        model=model_field(data),
    )
