"""Every status a route can answer is declared for it in the OpenAPI, with the envelope.

The declared statuses are read from each route's code (`shared.http.answers`), so these tests
walk every route of every function: what its code builds is declared, and no status is built
where no route's reading reaches it (but the few answers made before a route runs, listed).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from devkit import gateway
from devkit.layout import REPO_ROOT
from shared.errors import EmailInUseError
from shared.http import answers
from shared.http.app import create_app
from shared.http.guards import CSRF_EXEMPT_PREFIXES, STATE_CHANGING
from shared.http.openapi import ALWAYS, ENVELOPE_REF, dependency_calls
from shared.http.responses import ok
from shared.ratelimit import limit_request

OWN_ERROR_BODIES = {("/api/health", "get", "503")}  # health's report, with status `unhealthy`
# Statuses built before any route runs, declared by rule (`shared.http.openapi`) or for no
# operation at all: (file, function) → why.
BEFORE_ROUTES = {
    ("shared/http/app.py", "_validation_error"): "400, declared for every operation",
    ("shared/http/app.py", "__call__"): "RequestContext's last-resort 500, for every operation",
    ("shared/http/app.py", "_http_error"): "the router's 404 for a path no route serves",
    ("shared/http/guards.py", "__call__"): "guards: 400 encoding, 403 CSRF, 413, 415 by method",
    ("shared/http/methods.py", "method_not_allowed"): "405: a method the path has no operation for",
    ("shared/http/lambda_events.py", "_not_http"): "400: a Lambda event no route can take",
}


@pytest.fixture(scope="module")
def functions() -> list[gateway.Function]:
    return gateway.load_all()


@pytest.fixture(scope="module")
def document(functions: list[gateway.Function]) -> dict[str, Any]:
    return gateway.merged_openapi(functions)


def routes(functions: list[gateway.Function]) -> Iterator[tuple[gateway.Function, APIRoute]]:
    for function in functions:
        for route in function.app.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                yield function, route


def reached(function: gateway.Function, route: APIRoute) -> set[Any]:
    calls = [route.endpoint, *dependency_calls(route.dependant)]
    return answers.reached(calls, function.app.exception_handlers, route.endpoint.__module__)


def guarded(path: str, method: str) -> set[int]:
    """What the guards answer for a method (every function but the webhooks limits the body)."""
    if method not in STATE_CHANGING:
        return set()
    statuses = {415} if path.startswith("/api/webhooks/") else {413, 415}
    return statuses if path.startswith(CSRF_EXEMPT_PREFIXES) else statuses | {403}


def test_the_export_declares_its_rate_limit(document: dict[str, Any]) -> None:
    """EXPORT_REQUESTS_PER_HOUR (and a Redis outage, failing closed) answers 429 to a POST, and
    to a GET whose document is too large to answer directly (it requests the export)."""
    export = document["paths"]["/api/me/export"]
    for method in ("get", "post"):
        declared = export[method]["responses"]
        assert "429" in declared, method
        assert declared["429"]["content"]["application/json"]["schema"] == ENVELOPE_REF
    assert "202" in export["get"]["responses"]


def test_every_route_declares_every_status_its_code_answers(
    functions: list[gateway.Function], document: dict[str, Any]
) -> None:
    missing = []
    for function, route in routes(functions):
        calls = [route.endpoint, *dependency_calls(route.dependant)]
        own = answers.answered(calls, function.app.exception_handlers, route.endpoint.__module__)
        for method in route.methods or ():
            declared = document["paths"][route.path_format][method.lower()]["responses"]
            for status in sorted({*ALWAYS, *own, *guarded(route.path_format, method)}):
                response = declared.get(str(status))
                schema = (response or {}).get("content", {}).get("application/json", {})
                own_body = (route.path_format, method.lower(), str(status)) in OWN_ERROR_BODIES
                if response is None or (schema.get("schema") != ENVELOPE_REF and not own_body):
                    missing.append(f"{method} {route.path_format} {status}")
    assert missing == []
    # The reading sees the statuses the routes really answer, however deep they are made:
    post_export = document["paths"]["/api/me/export"]["post"]["responses"]
    assert {"401", "409", "429", "503"} <= set(post_export)  # session, provisioning, limit
    admin = document["paths"]["/api/admin/flags/{key}"]["get"]["responses"]
    assert {"403", "404"} <= set(admin)


def test_every_success_documents_its_body(document: dict[str, Any]) -> None:
    """A 2xx without a body schema is `unknown` in the typed client (clients/typescript)."""
    undocumented = [
        f"{method} {path} {status}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if status.startswith("2")
        and not response.get("content", {}).get("application/json", {}).get("schema")
    ]
    assert undocumented == []


@pytest.mark.parametrize("path", ["/api/admin/metrics", "/api/admin/analytics/trends"])
def test_a_query_parameter_the_route_requires_is_documented_required(
    document: dict[str, Any], path: str
) -> None:
    """Documented optional, the typed client compiled a call without `metric`: a 400 each time."""
    parameters = {each["name"]: each for each in document["paths"][path]["get"]["parameters"]}
    assert parameters["metric"]["required"] is True


def test_the_health_report_documents_every_key_it_answers(document: dict[str, Any]) -> None:
    """The typed client lacked `version` and `environment`, and typed each check `never`."""
    schemas = document["components"]["schemas"]
    health = schemas["Health"]
    assert (
        set(health["required"])
        == set(health["properties"])
        == {"status", "timestamp", "version", "environment", "checks", "responseTime"}
    )
    assert set(schemas["HealthChecks"]["required"]) == {"database", "redis", "provider"}
    assert set(schemas["HealthCheck"]["properties"]) >= {"healthy", "responseTime", "error"}


def test_every_status_built_is_reached_from_some_route(
    functions: list[gateway.Function],
) -> None:
    """A status built where no route's reading reaches (a call through an object's attribute,
    say) would go undeclared: every literal `ApiError(…)` / `error_response(…)` is in a function
    some route reaches, or answers before any route runs (BEFORE_ROUTES)."""
    starts = {
        (function.__code__.co_filename, function.__code__.co_firstlineno)
        for loaded, route in routes(functions)
        for function in reached(loaded, route)
    }
    unreached = []
    for path in sorted([*REPO_ROOT.glob("functions/**/*.py"), *REPO_ROOT.glob("shared/**/*.py")]):
        name = path.relative_to(REPO_ROOT).as_posix()
        for site, enclosing in _status_sites(ast.parse(path.read_text()), []):
            if any((str(path), first) in starts for first, _ in enclosing):
                continue
            innermost = enclosing[-1][1] if enclosing else "<module>"
            if (name, innermost) not in BEFORE_ROUTES:
                unreached.append(f"{name}:{site.lineno} {innermost}")
    assert unreached == []


def _status_sites(
    node: ast.AST, enclosing: list[tuple[int, str]]
) -> Iterator[tuple[ast.Call, list[tuple[int, str]]]]:
    """Every `ApiError(<int>, …)` / `error_response(<int>, …)` with its enclosing functions
    (first line as the code object numbers it, name), outermost first."""
    for child in ast.iter_child_nodes(node):
        inner = enclosing
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            first = min([child.lineno, *(d.lineno for d in getattr(child, "decorator_list", []))])
            inner = [*enclosing, (first, getattr(child, "name", "<lambda>"))]
        if isinstance(child, ast.Call) and child.args:
            called = child.func.id if isinstance(child.func, ast.Name) else None
            status = child.args[0]
            if called in ("ApiError", "error_response") and isinstance(status, ast.Constant):
                yield child, enclosing
        yield from _status_sites(child, inner)


def test_a_status_made_in_a_helper_or_a_handled_exception_is_declared() -> None:
    app = create_app(title="probe", summary="A helper's rate limit and a handled exception.")

    def limited(request: Request) -> None:
        limit_request(request, "probe", 1, "Slow down")

    def taken() -> None:
        raise EmailInUseError()

    @app.get("/api/probe/limited", response_model=None)
    def limited_route(request: Request) -> Response:
        limited(request)
        return ok({})

    @app.get("/api/probe/taken", response_model=None)
    def taken_route() -> Response:
        taken()
        return ok({})

    paths = app.openapi()["paths"]
    everywhere = {"200", "400", "500", "503"}
    assert set(paths["/api/probe/limited"]["get"]["responses"]) == everywhere | {"429"}
    assert set(paths["/api/probe/taken"]["get"]["responses"]) == everywhere | {"409"}
