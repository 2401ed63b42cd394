"""The responses every function's OpenAPI document declares: the error envelope, by status,
and the success bodies.

FastAPI documents a `422` with its own validation body, which we never send (validation failures
are 400s in the original's envelope), and nothing for what a route answers on its own. This module
rewrites each operation's responses to say what really comes back, so clients (and schemathesis)
can rely on the document: what every route may answer (400, the last-resort 500, the database's
503), what the guards answer for the method (403 CSRF, 413 body limit, 415 body coding), and
every status the route's endpoint and dependencies can answer, read from their code with the
functions they call (`shared.http.answers`: the session's 401 and 503, provisioning's 409, a
rate limit's 429, a path id's 404, ...). Routes give their own descriptions (or bodies) with
FastAPI's `responses=`; any 4xx/5xx declared without a body schema gets the envelope.
A success body is declared with `body(description, shape)`: the shape (a TypedDict of
`shared.contracts.bodies`) is named, not imported, so it never loads on a function's cold start.

Only the documentation changes here: nothing runs per request.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, cast

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from shared.http.guards import CSRF_EXEMPT_PREFIXES, STATE_CHANGING, BodyLimit

ENVELOPE = "ErrorEnvelope"
ENVELOPE_REF = {"$ref": f"#/components/schemas/{ENVELOPE}"}
ENVELOPE_SCHEMA: dict[str, Any] = {
    "title": ENVELOPE,
    "type": "object",
    "description": "Every error: the original API's envelope (405 adds `supportedMethods`).",
    "required": ["error", "message", "statusCode", "timestamp"],
    "properties": {
        "error": {"type": "string", "description": "e.g. Validation Error, Client Error"},
        "message": {"type": "string", "description": "What went wrong; generic for 5xx"},
        "statusCode": {"type": "integer", "minimum": 400, "maximum": 599},
        "timestamp": {"type": "string", "format": "date-time"},
        "supportedMethods": {"type": "array", "items": {"type": "string"}},
    },
}
DESCRIPTIONS = {
    400: "Invalid JSON, a failed validation, or a malformed path or query value",
    401: "No valid session token (Authorization: Bearer, or the __session cookie)",
    403: "Not allowed: admins only, or a cookie-authenticated write failed the CSRF check",
    404: "No such resource (for the caller)",
    409: "Conflicts with stored data (e.g. the token's email belongs to another account)",
    413: "Body over 1,000,000 bytes",
    415: "Body sent with a Content-Encoding other than identity (none is decoded)",
    429: "Rate limit or quota exceeded (see Retry-After)",
    500: "Unexpected failure; the message is generic, the log has the request id",
    503: "A dependency is unavailable; retry after Retry-After seconds",
}
ALWAYS = (400, 500, 503)  # the envelope's JSON/validation refusals and the last resorts
WRITE = (413,)  # BodyLimit
CODED = (415,)  # ContentCoding, on every write
CSRF = (403,)  # cookie-authenticated writes outside the exempt paths
FASTAPI_422 = "422"
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
BODY = "x-body"  # a success response's shape, by name, until the document is built
BODY_REF = "#/components/schemas/{model}"
SHAPES = "shared.contracts.bodies"


def body(description: str, shape: str) -> dict[str, Any]:
    """A success response whose JSON body is the TypedDict `shape` of `shared.contracts.bodies`,
    imported and made a component schema only when the document is built: documenting a body
    costs a function's cold start nothing."""
    return {"description": description, BODY: shape}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` return the document with the real error responses (built once)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = document_bodies(build())
            app.openapi_schema = document_errors(spec, _statuses_by_operation(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _statuses_by_operation(app: FastAPI) -> dict[tuple[str, str], set[int]]:
    """(path, method) → the error statuses that route can answer. `answers` reads source
    (ast, inspect): imported here, as the document is, never on a function's cold start."""
    from shared.http import answers

    found: dict[tuple[str, str], set[int]] = {}
    body_limited = any(middleware.cls is cast(Any, BodyLimit) for middleware in app.user_middleware)
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        calls = [route.endpoint, *dependency_calls(route.dependant)]
        own = answers.answered(calls, app.exception_handlers, route.endpoint.__module__)
        for method in route.methods or ():
            statuses = {*ALWAYS, *own}
            if method in STATE_CHANGING:
                statuses.update(CODED)
                if body_limited:
                    statuses.update(WRITE)
                if not route.path_format.startswith(CSRF_EXEMPT_PREFIXES):
                    statuses.update(CSRF)
            found[(route.path_format, method.lower())] = statuses
    return found


def whole_number_query(
    name: str, description: str, *, minimum: int, maximum: int, default: int
) -> dict[str, Any]:
    """`openapi_extra` declaring an optional whole-number query parameter as the integer it is.

    The route reads the value as text, left out of FastAPI's schema with
    `Query(include_in_schema=False)`, so that a bad value is the envelope's 400 with the route's
    own message rather than FastAPI's 422; FastAPI would document that text as a string, which
    the TypeScript client then types `string`. The description repeats the range, as the client's
    comments show only descriptions."""
    schema = {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default}
    described = f"{description}, {minimum}..{maximum} (default {default})"
    return _query_parameter(name, described, schema, required=False)


def required_query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` declaring a query parameter the route requires. The route reads it as
    optional text left out of FastAPI's schema (`Query(include_in_schema=False)`), so that a
    missing one is the envelope's 400 with the route's own message rather than FastAPI's 422;
    documented optional, the TypeScript client would compile a call without it."""
    return _query_parameter(name, description, schema, required=True)


def _query_parameter(
    name: str, description: str, schema: dict[str, Any], *, required: bool
) -> dict[str, Any]:
    """`openapi_extra` adding one query parameter (FastAPI appends it to the operation's)."""
    parameter = {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }
    return {"parameters": [parameter]}


def dependency_calls(dependant: Dependant) -> Iterable[Callable[..., Any]]:
    """Every dependency a route (or dependency) runs, however deeply nested."""
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from dependency_calls(dependency)


def document_errors(
    spec: dict[str, Any], statuses: dict[tuple[str, str], set[int]]
) -> dict[str, Any]:
    """Drop FastAPI's unused 422, add the envelope for each status an operation can answer."""
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop(FASTAPI_422, None)
            for status in sorted(statuses.get((path, method), set(ALWAYS))):
                description = DESCRIPTIONS.get(status) or HTTPStatus(status).phrase
                responses.setdefault(str(status), {"description": description})
            for code, response in responses.items():
                if code[:1] in ("4", "5"):
                    _envelope_body(response)
            operation["responses"] = dict(sorted(responses.items()))
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    schemas[ENVELOPE] = copy.deepcopy(ENVELOPE_SCHEMA)
    return spec


def document_bodies(spec: dict[str, Any]) -> dict[str, Any]:
    """Replace each `body()` declaration with a `$ref` to its shape's schema, in components."""
    from pydantic import TypeAdapter  # loaded with the document, never on a cold start

    schemas: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                shape = response.pop(BODY, None)
                if shape is None:
                    continue
                found = getattr(importlib.import_module(SHAPES), shape)
                schema = TypeAdapter(found).json_schema(mode="serialization", ref_template=BODY_REF)
                for each, definition in {**schema.pop("$defs", {}), shape: schema}.items():
                    if schemas.setdefault(each, definition) != definition:
                        raise ValueError(f"two response schemas are named {each}")
                content = response.setdefault("content", {}).setdefault("application/json", {})
                content["schema"] = {"$ref": BODY_REF.format(model=shape)}
    return spec


def _envelope_body(response: dict[str, Any]) -> None:
    """The envelope as the JSON body, unless the route documented a body of its own."""
    content = response.setdefault("content", {})
    media = content.setdefault("application/json", {})
    if not media.get("schema"):
        media["schema"] = dict(ENVELOPE_REF)
