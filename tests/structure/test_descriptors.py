"""functions/, serverless.yml and vercel.json in step (the checker is devkit/descriptors.py).

The checker's report must be empty for the repository and must say exactly what is out of step
for synthetic descriptors. Then every declared HTTP handler is invoked with a synthetic API
Gateway v2 event per declared path and method (each one its app serves, HEAD, OPTIONS and one it
serves nothing for: every method of a path reaches the function) and must answer with the JSON
envelope (or a success), never a 500: a served method reaches its route, HEAD answers as GET
without the body, OPTIONS and a wrong method name the path's methods in `Allow`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import importlib
import json
import re
import secrets
import tomllib
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Match

from devkit import events
from devkit.descriptors import (
    EVERY_METHOD,
    ROOT,
    FunctionSpec,
    aws_cron,
    check_serverless,
    check_vercel,
    http_api_path,
    http_api_route,
    load_serverless,
    load_specs,
    load_vercel,
    report,
    serverless_functions,
    vercel_shadows,
    vercel_src,
)
from devkit.local_s3 import LOCAL_BUCKET
from tests.support.http import Keys

SAMPLE_PARAM = "3f2a9c1e-8b7d-4e6f-a5c4-2d1b0e9f8a7c"  # a valid saved-search id, fine elsewhere
ENVELOPE_KEYS = {"error", "message", "statusCode", "timestamp"}
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-XSS-Protection": "1; mode=block",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
}


@pytest.fixture(scope="module")
def specs() -> list[FunctionSpec]:
    return load_specs()


@pytest.fixture(scope="module")
def serverless() -> dict[str, Any]:
    return load_serverless()


@pytest.fixture(scope="module")
def vercel() -> dict[str, Any]:
    return load_vercel()


# --------------------------------------------------------------------------- the tests


def test_every_function_is_declared_in_both_descriptors_with_its_routes(
    specs: list[FunctionSpec], serverless: dict[str, Any], vercel: dict[str, Any]
) -> None:
    assert specs, "no function modules found in functions/"
    problems = check_serverless(specs, serverless) + check_vercel(specs, vercel)
    assert not problems, report(problems)


def test_every_http_function_serves_at_least_one_route(specs: list[FunctionSpec]) -> None:
    empty = [spec.file for spec in specs if spec.kind == "http" and not spec.routes]
    assert not empty, f"these function modules have an app without routes: {empty}"


def test_platform_settings(serverless: dict[str, Any], vercel: dict[str, Any]) -> None:
    provider = serverless["provider"]
    assert serverless["service"] == "keyflash-functions"
    assert str(serverless.get("frameworkVersion", ">=3")) != "3", "osls rejects a '3' pin"
    assert (provider["name"], provider["runtime"], provider["architecture"]) == (
        "aws",
        "python3.12",
        "arm64",
    )
    assert "serverless-python-requirements" in serverless["plugins"]
    requirements = serverless["custom"]["pythonRequirements"]
    assert requirements["slim"] is True and requirements["dockerizePip"] == "non-linux"
    health = next(
        fn
        for fn in serverless["functions"].values()
        if fn["handler"] == "functions/health.lambda_handler"
    )
    assert health["timeout"] <= 10
    for name in (
        "DATABASE_URL",
        "CLERK_ISSUER",
        "UPSTASH_REDIS_REST_URL",
        "UPSTASH_REDIS_REST_TOKEN",
        "RATE_LIMIT_HMAC_SECRET",
    ):
        value = provider["environment"][name]
        assert value == f"${{param:{name}, ssm:/keyflash/${{sls:stage}}/{name}}}", (name, value)
    # Clerk's key comes from either setting (http-contract.md): each one may be absent.
    for name in ("CLERK_JWT_KEY", "CLERK_JWKS_URL"):
        value = provider["environment"][name]
        assert value == f"${{param:{name}, ssm:/keyflash/${{sls:stage}}/{name}, ''}}", value
        assert serverless["params"]["local"][name] == f"${{env:{name}, ''}}"
    _check_settings_sources(serverless)

    first = vercel["routes"][0]
    assert first["src"] == "^/api/(.*)$" and first.get("continue") is True, (
        "vercel.json's first route must add the security headers to every /api response and "
        "continue (top-level `headers` cannot be combined with `routes`)"
    )
    assert first["headers"] == SECURITY_HEADERS


_SSM_SETTING = re.compile(r"\$\{param:(\w+), ssm:/keyflash/\$\{sls:stage\}/(\w+)[,}]")


def _check_settings_sources(serverless: dict[str, Any]) -> None:
    """Deployed stages read SSM; only the `local` stage (never deployed) reads the shell.

    Each setting is `${param:NAME, ssm:/keyflash/${sls:stage}/NAME}`: osls resolves only the
    current stage's and the default params, and a fallback only when needed, so `--stage local`
    (params.local, from `${env:…}`) never calls SSM, and every other stage defines no such param
    and gets SSM. An env-backed param in `default` or a deployed stage would ship the deployer's
    shell, so none may exist; devkit/serverless/local_stage_guard.js refuses to deploy `local`.
    """
    lines = (ROOT / "serverless.yml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    settings = set()
    for match in _SSM_SETTING.finditer(text):
        assert match[1] == match[2], f"param {match[1]} falls back to SSM {match[2]}"
        settings.add(match[1])
    assert "${ssm:" not in text, "wrap every SSM read as ${param:NAME, ssm:…} (see the header)"
    params = serverless["params"]
    local = params["local"]
    assert set(local) - {"appEnv"} == settings, "params.local must define every SSM setting"
    for stage, values in params.items():
        if stage == "local":
            continue
        assert not settings & set(values or {}), f"params.{stage} overrides SSM settings"
        assert "${env:" not in json.dumps(values), f"params.{stage} reads the environment"
    # Elsewhere only the build host's interpreter (never shipped) may come from the shell.
    env_uses = [line.strip() for line in text.splitlines() if "${env:" in line]
    outside = [line for line in env_uses if line.split(":", 1)[0] not in local]
    assert outside == ["pythonBin: ${env:PYTHON_BIN, 'python3'}"], outside
    assert "./devkit/serverless/local_stage_guard.js" in serverless["plugins"]
    # Without BACKUP_BUCKET exported, osls --stage local still writes into keyflash dev's local S3.
    assert local["BACKUP_BUCKET"] == f"${{env:BACKUP_BUCKET, '{LOCAL_BUCKET}'}}"


def test_requirements_txt_is_pyprojects_runtime_dependencies() -> None:
    """requirements-lambda.txt pins requirements.txt's closure; pyproject.toml is the truth."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines == project, (
        "requirements.txt must list exactly pyproject.toml's [project].dependencies, in order"
    )


# --------------------------------------------------------------------------- invoking handlers


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """Routing does not depend on the lane: the direct one is enough here."""
    return direct_database_url


def _resolve(handler: str) -> Any:
    module_path, _, attribute = handler.rpartition(".")
    module = importlib.import_module(module_path.replace("/", "."))
    return getattr(module, attribute)


def _asgi_get(app: Any, path: str) -> tuple[int, Any]:
    """One unauthenticated GET straight into a bare ASGI app: (status, decoded JSON body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"keyflash.test"), (b"user-agent", b"vercel-cron/1.0")],
        "client": ("203.0.113.7", 443),
        "server": ("keyflash.test", 443),
    }
    # A private loop: asyncio.run() would leave the main thread without a current loop, and
    # Mangum (asyncio.get_event_loop) fails in every later test of this process.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(app(scope, receive, send))
    finally:
        loop.close()
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body) if body else None


def _routed(app: Any, method: str, path: str) -> bool:
    """Whether one of the app's routes fully matches (method and path), as Starlette decides."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    return any(
        isinstance(route, APIRoute) and route.matches(scope)[0] is Match.FULL
        for route in app.routes
    )


def _declared_paths(spec: FunctionSpec, serverless: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """(handler object, path template) for each path of the spec's function's httpApi events."""
    for fn in serverless_functions(serverless).values():
        if fn.get("handler") != spec.handler:
            continue
        handler = _resolve(spec.handler)
        paths = {http_api_route(event["httpApi"])[0] for event in fn.get("events") or []
                 if "httpApi" in event}  # fmt: skip
        for path in sorted(paths):
            yield handler, path


APP_URL = "https://app.keyflash.test"
WRONG_METHOD = "PATCH"  # no route serves it


def _invoke(handler: Any, spec: FunctionSpec, method: str, path: str) -> dict[str, Any]:
    """One API Gateway v2 event, as a browser on APP_URL with an invalid bearer token sends it:
    unauthenticated, but exempt from CSRF (as a header-authenticated call is), so
    state-changing methods reach their route too."""
    headers = {"authorization": "Bearer not-a-session-token", "origin": APP_URL}
    body = None
    if method == "OPTIONS":
        headers = {"origin": APP_URL, "access-control-request-method": "POST"}
    elif method in {"POST", "PUT", "PATCH"}:
        headers["content-type"] = "application/json"
        body = "{}"
    raw: dict[str, Any] = handler(
        events.http_api_v2(method, path, headers=headers, body=body),
        events.lambda_context(spec.module),
    )
    return raw


def _answer_problems(label: str, status: int, answer: Any) -> list[str]:
    if status >= 500:
        return [f"{label}: answered {status} {answer}"]
    if status >= 400:
        if not isinstance(answer, dict) or not set(answer) >= ENVELOPE_KEYS:
            return [f"{label}: {status} without the error envelope: {answer}"]
        if answer["statusCode"] != status:
            return [f"{label}: envelope statusCode {answer['statusCode']} ≠ {status}"]
    return []


def test_every_declared_handler_answers_an_api_gateway_v2_event(
    specs: list[FunctionSpec],
    serverless: dict[str, Any],
    vercel: dict[str, Any],
    api_env: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every method of each declared path reaches the function, which answers it itself.

    A method its app serves reaches the route and answers the envelope, never a 500; HEAD answers
    GET's status (405 where no GET is served) without a body; OPTIONS (a preflight from APP_URL)
    and a method no route serves (405 envelope) carry `Allow` with OPTIONS, and the CORS headers.
    """
    from shared import config

    monkeypatch.setenv("APP_URL", APP_URL)
    # Configured as deployed, so "not configured" 500s do not hide routing problems.
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", "whsec_" + base64.b64encode(b"k" * 24).decode())
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_descriptor_test")
    monkeypatch.setenv("BILLING_ENABLED", "true")
    monkeypatch.setenv("CRON_SECRET", secrets.token_urlsafe(24))
    config.get_settings.cache_clear()
    problems: list[str] = []
    for spec in specs:
        if spec.kind == "cron":
            module = importlib.import_module(spec.module)
            for name in ("lambda_handler", "app"):
                if not callable(getattr(module, name, None)):
                    problems.append(f"{spec.file}: a cron module must export a callable `{name}`")
            if callable(getattr(module, "app", None)):
                # Vercel Cron's GET without `Bearer $CRON_SECRET`: refused, the job never runs.
                status, answer = _asgi_get(module.app, spec.cron_path or "/")
                if status != 401 or not isinstance(answer, dict) or answer.get("statusCode") != 401:
                    problems.append(
                        f"{spec.file}: GET {spec.cron_path} without the cron secret answered "
                        f"{status} {answer}, not the 401 envelope"
                    )
            continue
        module = importlib.import_module(spec.module)
        if not callable(getattr(module, "app", None)):
            problems.append(f"{spec.file}: Vercel serves the module's `app`, and it has none")
        templates = {http_api_path(path): path for path in spec.routes}
        for handler, template in _declared_paths(spec, serverless):
            served = sorted(spec.routes.get(templates.get(template, ""), frozenset()))
            path = re.sub(r"\{\w+\}", SAMPLE_PARAM, template.replace("+}", "}"))
            statuses: dict[str, int] = {}
            for method in [*served, "HEAD", "OPTIONS", WRONG_METHOD]:
                label = f"{spec.handler} {method} {path}"
                try:
                    raw = _invoke(handler, spec, method, path)
                except Exception as error:  # the handler itself must never raise
                    problems.append(f"{label}: raised {type(error).__name__}: {error}")
                    continue
                status = statuses[method] = raw["statusCode"]
                headers = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
                allow = headers.get("allow", "")
                if method == "HEAD":
                    expected = statuses.get("GET", 405)
                    if (status, raw.get("body") or "") != (expected, ""):
                        problems.append(f"{label}: answered {status} {raw.get('body')!r:.100}, "
                                        f"not GET's {expected} without a body")  # fmt: skip
                    continue
                try:
                    answer = events.response_json(raw)
                except ValueError:
                    problems.append(f"{label}: {status} with a body that is not JSON: {raw!r:.200}")
                    continue
                if headers.get("access-control-allow-origin") != APP_URL:
                    problems.append(f"{label}: answered {status} without the CORS headers")
                if method == "OPTIONS":
                    if status != 200 or "OPTIONS" not in allow:
                        problems.append(f"{label}: preflight answered {status}, Allow {allow!r}")
                    continue
                problems += _answer_problems(label, status, answer)
                if method == WRONG_METHOD:
                    if status != 405 or "OPTIONS" not in allow:
                        problems.append(f"{label}: answered {status}, Allow {allow!r}, not 405")
                elif not _routed(module.app, method, path):
                    problems.append(
                        f"{label}: answered {status}, but no route of the app serves it "
                        "(the descriptor routes a path the app does not serve)"
                    )
    assert not problems, "declared handlers misbehave:\n  - " + "\n  - ".join(problems)


# --------------------------------------------------------------------------- the checker itself


def _synthetic() -> tuple[list[FunctionSpec], dict[str, Any], dict[str, Any]]:
    specs = [
        FunctionSpec(
            "functions.items",
            "http",
            routes={"/api/items/{item_id}": frozenset({"GET", "DELETE"})},
        ),
        FunctionSpec(
            "functions.cron.cleanup", "cron", schedule="30 3 * * 1", cron_path="/api/cron/cleanup"
        ),
    ]
    serverless = {
        "package": {"individually": True, "patterns": ["!**", "shared/**"]},
        "functions": {
            "items": {
                "handler": "functions/items.lambda_handler",
                "snapStart": True,
                "package": {"patterns": ["functions/__init__.py", "functions/items.py"]},
                "events": [{"httpApi": {"method": "*", "path": "/api/items/{item_id}"}}],
            },
            "cron_cleanup": {
                "handler": "functions/cron/cleanup.lambda_handler",
                "package": {
                    "patterns": [
                        "functions/__init__.py",
                        "functions/cron/__init__.py",
                        "functions/cron/cleanup.py",
                    ]
                },
                "events": [{"schedule": "cron(30 3 ? * 2 *)"}],
            },
        },
    }
    vercel = {
        "builds": [
            {"src": "functions/items.py", "use": "@vercel/python"},
            {"src": "functions/cron/cleanup.py", "use": "@vercel/python"},
        ],
        "routes": [
            {"src": "^/api/(.*)$", "headers": {"X-Frame-Options": "DENY"}, "continue": True},
            {"src": "^/api/items/(?<item_id>[^/]+)$", "dest": "/functions/items.py"},
            {
                "src": "^/api/cron/cleanup$",
                "dest": "/functions/cron/cleanup.py",
                "methods": ["GET"],
            },
        ],
        "crons": [{"path": "/api/cron/cleanup", "schedule": "30 3 * * 1"}],
    }
    return specs, serverless, vercel


def test_checker_accepts_descriptors_in_step_including_a_cron() -> None:
    specs, serverless, vercel = _synthetic()
    assert check_serverless(specs, serverless) == []
    assert check_vercel(specs, vercel) == []


def test_checker_says_exactly_what_is_out_of_step() -> None:
    specs, serverless, vercel = _synthetic()
    specs.append(FunctionSpec("functions.me", "http", routes={"/api/me": frozenset({"GET"})}))
    # The shape before every method reached the function: one event, one filter, per method.
    serverless["functions"]["items"]["events"] = [
        {"httpApi": {"method": "GET", "path": "/api/items/{item_id}"}},
        {"httpApi": {"method": "OPTIONS", "path": "/api/items/{item_id}"}},
    ]
    vercel["routes"][1]["methods"] = ["DELETE", "GET", "OPTIONS"]
    vercel["routes"][2]["methods"] = ["POST"]
    serverless["functions"]["gone"] = {"handler": "functions/gone.lambda_handler"}
    serverless["functions"]["cron_cleanup"]["events"] = [{"schedule": "cron(0 3 * * ? *)"}]
    vercel["crons"][0]["schedule"] = "0 3 * * *"
    vercel["routes"].append({"src": "^/api/old$", "dest": "/functions/old.py"})
    serverless["provider"] = {"httpApi": {"cors": True}}
    vercel["routes"][0]["headers"] = {"Access-Control-Allow-Origin": "*"}

    sls = check_serverless(specs, serverless)
    assert (
        "functions/items.py: serverless.yml function `items` lacks httpApi events with method "
        f"'*' for /api/items/{{item_id}} ({EVERY_METHOD})"
    ) in sls
    assert (
        "functions/items.py: serverless.yml function `items` declares httpApi events other than "
        "one method '*' per path of its app: GET /api/items/{item_id}, OPTIONS "
        f"/api/items/{{item_id}} ({EVERY_METHOD})"
    ) in sls
    assert (
        "functions/me.py: serverless.yml declares no function with handler "
        "`functions/me.lambda_handler`; add one with httpApi events with method '*' for /api/me "
        "and package.patterns [functions/__init__.py, functions/me.py]"
    ) in sls
    assert any("function `gone` has handler `functions/gone.lambda_handler`" in p for p in sls)
    assert any(
        "exactly one schedule event `cron(30 3 ? * 2 *)`" in p and "cron(0 3 * * ? *)" in p
        for p in sls
    )

    ver = check_vercel(specs, vercel)
    assert (
        "functions/items.py: vercel.json route ^/api/items/(?<item_id>[^/]+)$ filters methods "
        f"['DELETE', 'GET', 'OPTIONS']: drop `methods` ({EVERY_METHOD})"
    ) in ver
    assert (
        "functions/cron/cleanup.py: vercel.json route ^/api/cron/cleanup$ has methods ['POST'], "
        "but Vercel Cron calls it with GET"
    ) in ver
    assert (
        'functions/me.py: vercel.json builds lacks {"src": "functions/me.py", '
        '"use": "@vercel/python"}'
    ) in ver
    assert (
        'functions/me.py: vercel.json routes lacks {"src": "^/api/me$", "dest": "/functions/me.py"}'
    ) in ver
    assert any(p.startswith("vercel.json: route #3 ^/api/old$ → /functions/old.py") for p in ver)
    assert any(p.startswith("serverless.yml: provider.httpApi.cors must not be set") for p in sls)
    assert any(p.startswith("vercel.json: route #0 ") and "sets CORS headers" in p for p in ver)
    assert (
        "functions/cron/cleanup.py: vercel.json cron /api/cron/cleanup runs on '0 3 * * *' "
        "but SCHEDULE is '30 3 * * 1'"
    ) in ver


def test_checker_refuses_an_http_function_without_snapstart() -> None:
    """docs/performance.md#snapstart promises SnapStart on every HTTP function: a new one
    without the key would deploy with its whole INIT in every cold start, and nothing else
    would notice. Crons run on $LATEST and need no key."""
    specs, serverless, _ = _synthetic()
    for value in (None, False):
        items = serverless["functions"]["items"]
        items.pop("snapStart")
        if value is not None:
            items["snapStart"] = value
        assert check_serverless(specs, serverless) == [
            "functions/items.py: serverless.yml function `items` is an HTTP function without "
            "`snapStart: true` (docs/performance.md#snapstart)"
        ]
        items["snapStart"] = True


def test_conversions() -> None:
    assert http_api_path("/api/searches/{search_id}") == "/api/searches/{search_id}"
    assert http_api_path("/api/files/{rest:path}") == "/api/files/{rest+}"
    assert vercel_src("/api/searches/{search_id}") == "^/api/searches/(?<search_id>[^/]+)$"
    assert vercel_src("/api/v1.0/{rest:path}") == r"^/api/v1\.0/(?<rest>.+)$"
    assert aws_cron("0 8 * * *") == "cron(0 8 * * ? *)"
    assert aws_cron("15 2 1 * *") == "cron(15 2 1 * ? *)"
    assert aws_cron("0 9 * * 1-5") == "cron(0 9 ? * 2-6 *)"
    assert aws_cron("0 9 * * 0,6") == "cron(0 9 ? * 1,7 *)"
    assert aws_cron("*/10 * * * MON-FRI") == "cron(*/10 * ? * MON-FRI *)"
    with pytest.raises(ValueError):
        aws_cron("0 9 1 * 1")


def test_health_sees_every_provider_credential_the_keyword_search_sees(
    serverless: dict[str, Any],
) -> None:
    """Health runs the configured provider's configuration check: a credential only the keyword
    search's Lambda gets would make a correct deployment report itself misconfigured."""
    functions = serverless_functions(serverless)
    env = {name: set(fn.get("environment") or {}) for name, fn in functions.items()}
    assert env["keywords"] - env["health"] == set()


def test_a_module_exporting_handler_is_refused_for_vercel() -> None:
    """Vercel's Python runtime takes `handler` (or `Handler`) before `app` and stops the function
    unless it is a BaseHTTPRequestHandler subclass: the Lambda entry was once named `handler`
    (a Mangum adapter, a plain function for the crons), which took every Vercel function down."""

    class Served(BaseHTTPRequestHandler):
        pass

    mangum_like = types.ModuleType("functions.items")
    mangum_like.handler = lambda event, context: None  # type: ignore[attr-defined]
    cron_like = types.ModuleType("functions.cron.cleanup")
    cron_like.Handler = object()  # type: ignore[attr-defined]
    classic = types.ModuleType("functions.classic")
    classic.handler = Served  # type: ignore[attr-defined]
    assert vercel_shadows(mangum_like) == ("handler",)
    assert vercel_shadows(cron_like) == ("Handler",)
    assert vercel_shadows(classic) == ()

    specs, _, vercel = _synthetic()
    specs[0] = dataclasses.replace(specs[0], vercel_shadows=("handler",))
    assert check_vercel(specs, vercel) == [
        "functions/items.py: exports `handler`, which Vercel's Python runtime takes before `app` "
        "and refuses unless it is a BaseHTTPRequestHandler subclass (the function would fail at "
        "every cold start); name the Lambda entry `lambda_handler`"
    ]


def test_no_function_module_exports_what_vercel_takes_before_app() -> None:
    assert {spec.file: spec.vercel_shadows for spec in load_specs() if spec.vercel_shadows} == {}
