"""JSON request bodies: one reading rule for every route that takes one.

The original parses a body as JSON whatever its Content-Type (browsers' `fetch` with a string
body sends `text/plain;charset=UTF-8`), so every JSON route here does too: valid JSON in any
content type is parsed, invalid JSON in any content type is 400 `Invalid JSON payload`. JSON
between systems is UTF-8 (RFC 8259 §8.1): a body that is not UTF-8 (UTF-16 or UTF-32, with or
without a byte order mark) is invalid JSON here, although Python's `json.loads(bytes)` would
guess its encoding. A leading UTF-8 byte order mark is ignored, as `fetch`'s `.json()` does.
`NaN` and `Infinity`, which Python's parser takes, are not JSON; nor is a number past a double's
range (`1e400`: JS reads Infinity), which no JSON column can store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from shared.http.app import validation_message
from shared.http.errors import ApiError
from shared.storable_text import loads_json

M = TypeVar("M", bound=BaseModel)
INVALID_JSON = "Invalid JSON payload"
NOT_AN_OBJECT = "Request body must be a JSON object"
_UTF8_BOM = "\ufeff"


def decode_json(raw: bytes) -> Any:
    """`raw` as JSON by the rules above, `ValueError` when it is not. Lone surrogates escaped
    in strings (`"\\ud800"`) are kept: whether one matters is the reader's call."""
    try:
        text = raw.decode("utf-8").removeprefix(_UTF8_BOM)
        return loads_json(text)
    except RecursionError:  # nesting beyond the parser
        raise ValueError("JSON nested too deeply") from None


def parse_json(raw: bytes) -> Any:
    """`raw` as JSON; an empty body is `{}` (the original's rule), and so is one of nothing but
    ASCII whitespace."""
    if not raw.strip():
        return {}
    try:
        return decode_json(raw)
    except ValueError:  # not UTF-8, syntax, nesting
        raise ApiError(400, INVALID_JSON) from None


def validated(model: type[M], data: Any) -> M:
    """`data` as `model`, or the 400 `Validation Error` envelope with the original's messages
    (a body that is not an object gets ours: pydantic's would name the model class)."""
    if not isinstance(data, dict):
        raise ApiError(400, NOT_AN_OBJECT, label="Validation Error")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ApiError(400, validation_message(error.errors()), label="Validation Error") from None


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A FastAPI dependency reading the body as `model` by the rules above. Routes using it
    declare their body with `body_schema` (a dependency is not documented by FastAPI)."""

    async def read(request: Request) -> M:
        return validated(model, parse_json(await request.body()))

    return read


def body_schema(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` documenting `model` as the route's JSON request body (nested models
    inlined: a `#/$defs/…` reference would not resolve inside the OpenAPI document)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    content = {"application/json": {"schema": inline(schema), "example": example}}
    return {"requestBody": {"required": True, "content": content}}
