"""A simulated warm container: function code runs here, never in the orchestrator.

`python -m benchmarks.worker TASK` with the function's environment (`Stack.app_env()`), JSON
parameters on stdin, and the JSON result as the last stdout line, after `@@RESULT `.

Tasks:
- `seed`: the rows scenarios refer to (saved searches, a flag, a cached keyword search).
- `roundtrips`: statements, transactions, Redis calls and connections per request, for every
  scenario, in a fresh container (per-container caches emptied) and a warm one.
- `warm`: a handler's time per invocation against the same statements (and Redis calls)
  replayed by hand on an already-open psycopg connection (and httpx client), side by side.
- `memory`: RSS over many warm invocations of one function.
- `export_memory`: one run of the exports cron for a requested export, its peak RSS.
- `core_ops`: each hot repository operation through the core against its SQL on bare psycopg
  (`benchmarks.core_ops_worker`).
- `fluid`: one process serving concurrent requests through a function's ASGI app.

Invocations go through each module's Lambda `lambda_handler` with a real API Gateway v2 event, as
Lambda calls it.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from types import ModuleType
from typing import Any

from benchmarks import scenarios
from benchmarks.scenarios import USER, Event, Fixtures, Scenario, Tokens
from benchmarks.stats import ratio, summary
from devkit import events

RESULT_MARK = "@@RESULT "
_CUID = re.compile(r"^c[0-9a-z]{24}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


# --- invoking functions -----------------------------------------------------------------------


def module(function: str) -> ModuleType:
    return importlib.import_module(f"functions.{function}")


def invoke(function: str, event: Event) -> tuple[int, Any]:
    """Call the function's Lambda handler; (status, decoded JSON body or text)."""
    raw = module(function).lambda_handler(event, events.lambda_context(function))
    try:
        body: Any = events.response_json(raw)
    except ValueError:
        body = raw.get("body")
    return int(raw["statusCode"]), body


def routes_of(function: str) -> list[tuple[str, str]]:
    """(method, route) pairs of a function's FastAPI app (HEAD left out)."""
    from fastapi.routing import APIRoute

    found = []
    for route in module(function).app.router.routes:
        if isinstance(route, APIRoute):
            methods = sorted((route.methods or set()) - {"HEAD"})
            found += [(method, route.path) for method in methods]
    return found


def http_functions() -> list[str]:
    """Every deployable HTTP function: the modules directly in functions/ (crons live in
    functions/cron/)."""
    folder = os.path.join(os.path.dirname(__file__), "..", "functions")
    names = sorted(
        name[:-3]
        for name in os.listdir(folder)
        if name.endswith(".py") and not name.startswith("_")
    )
    return names


class Env:
    """Set environment overrides for a call and reload the cached settings around it."""

    def __init__(self, overrides: dict[str, str]) -> None:
        self.overrides = overrides
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        if not self.overrides:
            return
        for key, value in self.overrides.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value
        _reload_settings()

    def __exit__(self, *exc: object) -> None:
        if not self.overrides:
            return
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_settings()


def _reload_settings() -> None:
    from shared.config import get_settings

    get_settings.cache_clear()


def fresh_container() -> None:
    """Forget what a warm container keeps: engine (and its connection), provisioned users,
    the health check's last result, the flag snapshot, the Redis client."""
    from shared import auth, db, flags
    from shared import redis as kf_redis

    auth._provisioned.clear()
    flags.invalidate_cache()
    db.dispose_engine()
    kf_redis.reset_redis()
    health = sys.modules.get("functions.health")
    if health is not None:
        health._last_database_check = None  # type: ignore[attr-defined]


# --- recording what a request sends -----------------------------------------------------------


class Recorder:
    """Counts (and keeps) the SQL statements, pool connects and Upstash calls of a request.

    Statements are counted with SQLAlchemy's `before_cursor_execute` (one per round trip: the
    engine runs in autocommit, `BEGIN; SET LOCAL …` is one message); Upstash calls by wrapping
    httpx's `Client.send`. The `api_usage` rows sent after the response and not waited for
    (`shared.http.usage`, which bypasses SQLAlchemy) are counted apart, as `usage_sent_after`.
    """

    def __init__(self) -> None:
        self.active = False
        self.statements: list[tuple[str, Any]] = []
        self.redis: list[tuple[str, dict[str, str], bytes]] = []
        self.connects = 0
        self._usage_sent = 0
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        import httpx
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.pool import Pool

        def on_statement(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
            if self.active:
                self.statements.append((statement, params))

        def on_connect(dbapi_conn: Any, record: Any) -> None:
            if self.active:
                self.connects += 1

        event.listen(Engine, "before_cursor_execute", on_statement)
        event.listen(Pool, "connect", on_connect)
        upstash = os.environ.get("UPSTASH_REDIS_REST_URL", "")
        original = httpx.Client.send

        def send(client: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
            if self.active and str(request.url).startswith(upstash):
                headers = {"authorization": request.headers.get("authorization", "")}
                self.redis.append((str(request.url), headers, request.read()))
            return original(client, request, **kwargs)

        httpx.Client.send = send  # type: ignore[method-assign,assignment]
        self._installed = True

    def start(self) -> None:
        self.statements, self.redis, self.connects, self.active = [], [], 0, True
        self._usage_sent = _usage_sent()

    def stop(self) -> dict[str, Any]:
        self.active = False
        kinds = [describe_sql(statement) for statement, _ in self.statements]
        return {
            "statements": len(self.statements),
            "transactions": sum(1 for kind in kinds if kind.startswith("BEGIN")),
            "redis_calls": len(self.redis),
            "connects": self.connects,
            "usage_sent_after": _usage_sent() - self._usage_sent,
            "sql": kinds,
            "redis": [describe_redis(body) for _, _, body in self.redis],
        }


def _usage_sent() -> int:
    usage = sys.modules.get("shared.http.usage")
    return int(usage.stats["sent"]) if usage is not None else 0


_VERB = re.compile(r"^\s*(WITH|SELECT|INSERT|UPDATE|DELETE|BEGIN|COMMIT|ROLLBACK|SET)\b", re.I)
_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"?([a-z_]+)"?', re.I)


def describe_sql(statement: str) -> str:
    """`INSERT api_usage`, `SELECT saved_searches`, `BEGIN`: verb and first table."""
    flat = " ".join(statement.split())
    verb_match = _VERB.match(flat)
    verb = verb_match.group(1).upper() if verb_match else flat.split(" ", 1)[0].upper()
    if verb in ("BEGIN", "COMMIT", "ROLLBACK", "SET"):
        return flat[:60]
    if verb == "WITH":  # a data-modifying CTE: name its writes
        writes = re.findall(r'\b(INSERT INTO|UPDATE|DELETE FROM)\s+"?([a-z_]+)"?', flat, re.I)
        if writes:
            return "WITH " + " + ".join(f"{w.split()[0].upper()} {t}" for w, t in writes)
    table = _TABLE.search(flat)
    return f"{verb} {table.group(1)}" if table else verb


def describe_redis(body: bytes) -> str:
    try:
        command = json.loads(body)
    except ValueError:
        return "?"
    if command and isinstance(command[0], list):
        return "PIPELINE " + " ".join(str(c[0]).upper() for c in command)
    return str(command[0]).upper() if command else "?"


RECORDER = Recorder()


# --- preparations (run before a call, never counted) -------------------------------------------


def _prepare(needs: str | None, tokens: Tokens, fixtures: Fixtures) -> None:
    if needs is None:
        return
    if needs == "room_for_search":
        from sqlalchemy import text

        from shared import db

        keep = fixtures.search_id
        db.run(
            lambda conn: conn.session.execute(
                text(
                    'DELETE FROM saved_searches WHERE "userId" = :u AND id <> :keep AND id NOT IN '
                    '(SELECT id FROM saved_searches WHERE "userId" = :u '
                    'ORDER BY "createdAt" DESC LIMIT 10)'
                ),
                {"u": USER, "keep": keep},
            )
        )
    elif needs == "doomed_search":
        status, body = invoke(
            "searches",
            scenarios.request(
                "POST", "/api/searches", token=tokens(USER), json_body=scenarios.NEW_SEARCH
            ),
        )
        _expect(status, body, 201, "creating a saved search to delete")
        fixtures.extra["doomed_search"] = body["search"]["id"]
    elif needs == "doomed_user":
        user = f"user_bench_gone_{os.urandom(4).hex()}"
        status, body = invoke("me", scenarios.request("GET", "/api/me", token=tokens(user)))
        _expect(status, body, 200, "provisioning a user to erase")
        fixtures.extra["doomed_user"] = user
    elif needs == "doomed_flag":
        from benchmarks.constants import ADMIN_USER

        key = f"bench-gone-{os.urandom(4).hex()}"
        status, body = invoke(
            "admin_flags",
            scenarios.request(
                "POST", "/api/admin/flags", token=tokens(ADMIN_USER), json_body={"key": key}
            ),
        )
        _expect(status, body, 201, "creating a flag to delete")
        fixtures.extra["doomed_flag"] = key
    else:
        raise ValueError(f"unknown preparation {needs!r}")


def _expect(status: int, body: Any, wanted: int, doing: str) -> None:
    if status != wanted:
        raise RuntimeError(f"{doing}: HTTP {status} {json.dumps(body)[:300]}")


# --- tasks --------------------------------------------------------------------------------------


def task_seed(params: dict[str, Any]) -> dict[str, Any]:
    """Saved searches for USER, a flag, the cached keyword search; returns the fixtures."""
    from benchmarks.constants import ADMIN_USER

    tokens = Tokens(params["private_pem"])
    search_id = ""
    for _ in range(params.get("searches", 5)):
        status, body = invoke(
            "searches",
            scenarios.request(
                "POST", "/api/searches", token=tokens(USER), json_body=scenarios.NEW_SEARCH
            ),
        )
        _expect(status, body, 201, "seeding saved searches")
        search_id = search_id or body["search"]["id"]
    flag_key = "bench-flag"
    status, body = invoke(
        "admin_flags",
        scenarios.request(
            "POST",
            "/api/admin/flags",
            token=tokens(ADMIN_USER),
            json_body={"key": flag_key, "enabled": True, "rolloutPercent": 50},
        ),
    )
    if status not in (201, 409):
        _expect(status, body, 201, "seeding a flag")
    status, body = invoke(
        "keywords",
        scenarios.request(
            "POST",
            "/api/keywords",
            token=tokens(USER),
            json_body={"keywords": scenarios.HIT_KEYWORDS, "matchType": "phrase"},
        ),
    )
    _expect(status, body, 200, "warming the keyword cache")
    return asdict(Fixtures(search_id=search_id, flag_key=flag_key))


def task_roundtrips(params: dict[str, Any]) -> dict[str, Any]:
    """Per scenario: what one request sends, in a fresh container and in a warm one."""
    tokens = Tokens(params["private_pem"])
    fixtures = Fixtures(**params["fixtures"])
    RECORDER.install()
    results = []
    for scenario in scenarios.ENDPOINTS:
        results.append(_roundtrips_of(scenario, tokens, fixtures))
    covered = {(s.function, s.method, s.route) for s in scenarios.ENDPOINTS}
    uncovered = []
    for function in http_functions():
        try:
            routes = routes_of(function)
        except Exception as error:  # a module mid-edit by someone else: report, carry on
            uncovered.append({"function": function, "error": f"{type(error).__name__}: {error}"})
            continue
        for method, route in routes:
            if (function, method, route) not in covered:
                scenario = scenarios.generic(function, method, route)
                results.append(_roundtrips_of(scenario, tokens, fixtures))
                uncovered.append({"function": function, "route": f"{method} {route}"})
    return {"endpoints": results, "generic": uncovered}


def _roundtrips_of(scenario: Scenario, tokens: Tokens, fixtures: Fixtures) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": scenario.name, "function": scenario.function}
    try:
        with Env(scenario.env):
            for mode in ("cold", "warm"):
                cold = mode == "cold"
                status, body, counts = recorded_call(scenario, tokens, fixtures, cold=cold)
                counts["status"] = status
                if status >= 400 and scenario.label not in ("405", "generic"):
                    counts["error"] = json.dumps(body)[:300]
                entry[mode] = counts
    except Exception as error:
        entry["error"] = f"{type(error).__name__}: {error}"
    return entry


def recorded_call(
    scenario: Scenario, tokens: Tokens, fixtures: Fixtures, *, cold: bool
) -> tuple[int, Any, dict[str, Any]]:
    """One call of `scenario` (in a fresh container when `cold`) with the recorder on: status,
    body and what it sent (`RECORDER.statements` keeps the SQL until the next call)."""
    _prepare(scenario.needs, tokens, fixtures)
    event = scenario.build(tokens, fixtures)
    if cold:
        fresh_container()
    RECORDER.start()
    try:
        status, body = invoke(scenario.function, event)
    finally:
        counts = RECORDER.stop()
    return status, body, counts


def task_warm(params: dict[str, Any]) -> dict[str, Any]:
    """Per scenario: the handler against the same work by hand, and the layers in between."""
    tokens = Tokens(params["private_pem"])
    fixtures = Fixtures(**params["fixtures"])
    n, warmup = int(params["n"]), int(params["warmup"])
    RECORDER.install()
    return {
        "scenarios": {
            name: _warm_one(scenarios.BY_NAME[name], tokens, fixtures, n, warmup)
            for name in params["scenarios"]
        }
    }


LAYERS = ("handler", "bare", "hello", "jwt", "engine")


def _warm_one(
    scenario: Scenario, tokens: Tokens, fixtures: Fixtures, n: int, warmup: int
) -> dict[str, Any]:
    """Times five things call by call, in a shuffled order each round (drift hits all alike):
    - handler: the function's Lambda handler with a real event;
    - bare: the recorded statements on a bare psycopg connection + the recorded Upstash calls
      on a bare httpx client (`BareReplay`);
    - hello: the FastAPI + Mangum hello world's handler (the framework's floor per call);
    - jwt: verifying the request's session token (RS256), as `shared.auth` does;
    - engine: the recorded statements through the core's engine (`db.run`, its `Conn`,
      `exec_driver_sql`): bare SQL plus what the engine adds, without the ORM.
    """
    import random

    from benchmarks import hello_app
    from shared import db
    from shared.auth import verify_session_token
    from shared.config import get_settings

    with Env(scenario.env):
        built = [scenario.build(tokens, fixtures) for _ in range(n + warmup + 1)]
        for event in built[:warmup]:
            status, body = invoke(scenario.function, event)
            _expect(status, body, 200, f"warming up {scenario.name}")
        RECORDER.start()
        status, body = invoke(scenario.function, built[warmup])
        RECORDER.stop()
        _expect(status, body, 200, scenario.name)
        recorded_sql, recorded_redis = list(RECORDER.statements), list(RECORDER.redis)
        bare = BareReplay(recorded_sql, recorded_redis)
        handler = module(scenario.function).lambda_handler
        context = events.lambda_context(scenario.function)
        hello_event = scenarios.request("GET", "/hello")
        header = built[warmup]["headers"].get("authorization", "")
        token = header.removeprefix("Bearer ") if header else None
        settings = get_settings()

        def engine_replay() -> None:
            def work(conn: Any) -> None:
                connection = conn.connection
                for statement, parameters in recorded_sql:
                    fresh = _fresh_ids(parameters)
                    result = (
                        connection.exec_driver_sql(statement, fresh)
                        if fresh
                        else connection.exec_driver_sql(statement)
                    )
                    if result.returns_rows:
                        result.fetchall()

            db.run(work)

        samples: dict[str, list[float]] = {layer: [] for layer in LAYERS}
        sql_ms: list[float] = []
        statuses: dict[int, int] = {}

        def measure(layer: str, event: Event) -> None:
            if layer == "bare":
                sql, total = bare.run()
                sql_ms.append(sql)
                samples["bare"].append(total)
                return
            started = time.perf_counter()
            if layer == "handler":
                raw = handler(event, context)
                statuses[raw["statusCode"]] = statuses.get(raw["statusCode"], 0) + 1
            elif layer == "hello":
                hello_app.handler(hello_event, context)
            elif layer == "jwt":
                if token is None:
                    return
                verify_session_token(token, settings)
            else:
                engine_replay()
            samples[layer].append((time.perf_counter() - started) * 1000)

        for _ in range(warmup):
            for layer in LAYERS[1:]:
                measure(layer, built[warmup])
        rng = random.Random(1)
        order = list(LAYERS)
        gc.collect()
        for event in built[warmup + 1 :]:
            rng.shuffle(order)
            for layer in order:
                measure(layer, event)
        bare.close()
    stats = {layer: summary(values) for layer, values in samples.items()}
    handler_stats, bare_stats, sql_stats = stats["handler"], stats["bare"], summary(sql_ms)
    median = {layer: float(stats[layer].get("median", 0.0)) for layer in LAYERS}
    layers = {
        "framework floor (FastAPI + Mangum hello world)": median["hello"],
        "session token verify (RS256)": median["jwt"],
        "engine around the same SQL": round(median["engine"] - sql_stats["median"], 3),
    }
    layers["rest (ORM, Upstash SDK, middleware, validation, response)"] = round(
        median["handler"] - median["bare"] - sum(layers.values()), 3
    )
    return {
        "scenario": scenario.name,
        "function": scenario.function,
        "statuses": statuses,
        "statements": [describe_sql(s) for s, _ in recorded_sql],
        "redis_calls": [describe_redis(body) for _, _, body in recorded_redis],
        "handler_ms": handler_stats,
        "bare_ms": bare_stats,
        "bare_sql_only_ms": sql_stats,
        "hello_ms": stats["hello"],
        "jwt_ms": stats["jwt"],
        "engine_sql_ms": stats["engine"],
        "ratio_median": ratio(handler_stats["median"], bare_stats["median"]),
        "ratio_p95": ratio(handler_stats["p95"], bare_stats["p95"]),
        "overhead_median_ms": round(handler_stats["median"] - bare_stats["median"], 3),
        "overhead_layers_ms": layers,
    }


def bare_connection() -> Any:
    """An autocommit psycopg connection to the function's database, with the core's
    prepared-statement setting (none through a transaction-mode pooler), and nothing else."""
    import psycopg

    from shared.config import get_settings
    from shared.db import prepared_statements_enabled
    from shared.db_url import parse_database_url

    settings = get_settings()
    target = parse_database_url(settings.database_url)
    kwargs: dict[str, Any] = {"autocommit": True}
    if not prepared_statements_enabled(target, settings.prepared_statements):
        kwargs["prepare_threshold"] = None
    url = target.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(url, **kwargs)


class BareReplay:
    """The recorded statements on a bare autocommit psycopg connection, and the recorded
    Upstash calls on a bare httpx client: the same work without the function's layers.

    Generated ids (cuids, UUIDs) in the parameters are replaced by fresh ones on every run, so
    inserts insert rather than collide.
    """

    def __init__(
        self,
        statements: list[tuple[str, Any]],
        redis_calls: list[tuple[str, dict[str, str], bytes]],
    ) -> None:
        import httpx

        from shared.config import get_settings

        self.conn = bare_connection()
        self.http = httpx.Client(timeout=get_settings().redis_timeout_s)
        self.statements = statements
        self.redis_calls = redis_calls

    def run(self) -> tuple[float, float]:
        """(SQL ms, total ms) for one replay of the request's statements and Redis calls."""
        started = time.perf_counter()
        for url, headers, body in self.redis_calls:
            self.http.post(url, headers=headers, content=body).read()
        redis_done = time.perf_counter()
        for statement, params in self.statements:
            cursor = self.conn.execute(statement, _fresh_ids(params))
            if cursor.description is not None:
                cursor.fetchall()
        finished = time.perf_counter()
        return (finished - redis_done) * 1000, (finished - started) * 1000

    def close(self) -> None:
        self.conn.close()
        self.http.close()


def _fresh_ids(params: Any) -> Any:
    if isinstance(params, dict):
        return {key: _fresh_id(value) for key, value in params.items()}
    if isinstance(params, list | tuple):
        return type(params)(_fresh_id(value) for value in params)
    return params


def _fresh_id(value: Any) -> Any:
    if isinstance(value, str):
        if _CUID.match(value):
            from shared.ids import new_cuid

            return new_cuid()
        if _UUID.match(value):
            import uuid

            return str(uuid.uuid4())
    return value


def task_memory(params: dict[str, Any]) -> dict[str, Any]:
    """RSS of one function's container over `n` warm invocations of its primary request."""
    tokens = Tokens(params["private_pem"])
    fixtures = Fixtures(**params["fixtures"])
    function = params["function"]
    n, early = int(params["n"]), int(params["early"])
    baseline_rss = rss_kb()
    scenario = scenarios.primary(function, routes_of(function))
    statuses: dict[int, int] = {}
    curve: list[tuple[int, int]] = []
    step = max(1, n // 10)
    rss_early = None
    started = time.perf_counter()
    body_bytes: dict[int, int] = {}
    with Env(scenario.env):
        for i in range(1, n + 1):
            _prepare(scenario.needs, tokens, fixtures)
            raw = module(function).lambda_handler(
                scenario.build(tokens, fixtures), events.lambda_context(function)
            )
            status = int(raw["statusCode"])
            statuses[status] = statuses.get(status, 0) + 1
            if i == early:
                rss_early = rss_kb()
            if i % step == 0 or i == early:
                curve.append((i, rss_kb()))
            if i in (early, n):
                body_bytes[i] = len(raw.get("body") or "")
    seconds = time.perf_counter() - started
    rss_end = rss_kb()
    growth = None if not rss_early else round((rss_end - rss_early) / rss_early * 100, 2)
    return {
        "function": function,
        "scenario": scenario.name,
        "statuses": statuses,
        "invocations": n,
        "rss_before_import_kb": baseline_rss,
        "rss_at_early_kb": rss_early,
        "early": early,
        "rss_end_kb": rss_end,
        "peak_rss_kb": rss_kb("VmHWM"),
        "growth_pct": growth,
        "curve": curve,
        "response_bytes_early": body_bytes.get(early),
        "response_bytes_end": body_bytes.get(n),
        "seconds": round(seconds, 1),
    }


def rss_kb(field: str = "VmRSS") -> int:
    """Resident set size now (`VmRSS`) or its peak (`VmHWM`), from Linux /proc, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def task_export_memory(params: dict[str, Any]) -> dict[str, Any]:
    """Request an export of `user_id` and run the exports cron once, in moto's S3."""
    from moto import mock_aws

    os.environ.update(
        BACKUP_BUCKET="keyflash-bench-exports",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    with mock_aws():
        import boto3

        from shared import db
        from shared.clock import utcnow
        from shared.cron import exports
        from shared.cron.runner import run_job
        from shared.repositories import data_exports

        boto3.client("s3").create_bucket(Bucket="keyflash-bench-exports")
        db.run(lambda conn: data_exports.request(conn, params["user_id"], now=utcnow()))
        gc.collect()
        rss_before = rss_kb()
        started = time.perf_counter()
        outcome = run_job(exports.JOB)
        seconds = time.perf_counter() - started
    return {
        "rss_before_kb": rss_before,
        "peak_rss_kb": rss_kb("VmHWM"),
        "bytes": outcome.get("bytes"),
        "gzip_bytes": outcome.get("gzipBytes"),
        "seconds": round(seconds, 1),
        "processed": outcome.get("processed"),
    }


def task_cron(params: dict[str, Any]) -> dict[str, Any]:
    """Run one cron handler with a schedule event, timing every statement and transaction."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statement_ms: list[float] = []
    transaction_ms: list[float] = []
    open_transaction: list[float] = []

    def before(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()
        if statement.lstrip().upper().startswith("BEGIN"):
            open_transaction[:] = [time.perf_counter()]

    def after(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statement_ms.append((time.perf_counter() - conn.info.pop("bench_started")) * 1000)
        verb = statement.lstrip().upper()
        if open_transaction and (verb.startswith("COMMIT") or verb.startswith("ROLLBACK")):
            transaction_ms.append((time.perf_counter() - open_transaction.pop()) * 1000)

    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "after_cursor_execute", after)
    job = importlib.import_module(f"functions.cron.{params['job']}")
    started = time.perf_counter()
    # The Lambda timeout serverless.yml gives these crons (300 s): the job's own budget decides
    # when it stops, and the summary says whether it finished.
    timeout_ms = int(params.get("timeout_ms", 300_000))
    context = events.lambda_context(params["job"], timeout_ms=timeout_ms)
    outcome = job.lambda_handler(events.schedule(params["job"]), context)
    seconds = time.perf_counter() - started
    return {
        "job": params["job"],
        "seconds": round(seconds, 3),
        "result": outcome,
        "statements": len(statement_ms),
        "transactions": len(transaction_ms),
        "longest_statement_ms": round(max(statement_ms, default=0.0), 1),
        "longest_transaction_ms": round(max(transaction_ms, default=0.0), 1),
    }


def task_legacy(params: dict[str, Any]) -> dict[str, Any]:
    """`devkit.legacy.backfill` as `python -m devkit.legacy backfill` runs it, timing each batch
    from its progress callback."""
    from pathlib import Path

    from devkit import legacy

    client = legacy._redis_from_env()
    legacy._database_from_env()
    marks: list[float] = []

    def progress(step: Any) -> None:
        marks.append(step.elapsed_s)

    started = time.perf_counter()
    report = legacy.backfill(
        client,
        batch_size=int(params.get("batch_size", 500)),
        report_path=Path(params["report_path"]),
        progress=progress,
    )
    seconds = time.perf_counter() - started
    batches = [(b - a) * 1000 for a, b in zip([0.0, *marks], marks, strict=False)]
    data = report.to_dict()
    return {
        "seconds": round(seconds, 3),
        "records_read": data["records_read"],
        "records_per_s": data["records_per_s"],
        "batches": data["batches"],
        "users": data["users"],
        "saved_searches": data["saved_searches"],
        "quarantined": len(data["quarantined"]),
        "quarantined_by_kind": data["quarantined_by_kind"],
        "complete": data["complete"],
        "longest_batch_ms": round(max(batches, default=0.0), 1),
        "median_batch_ms": round(sorted(batches)[len(batches) // 2], 1) if batches else None,
    }


def task_legacy_mess_write(params: dict[str, Any]) -> dict[str, Any]:
    """Write the messy legacy keyspace (`devkit.legacy_dataset`) into an empty Redis database:
    the records through the Upstash emulator, the bytes the SDK cannot send straight."""
    import redis

    from devkit import legacy
    from devkit.legacy_dataset import LegacyDataset, write_mess

    client = legacy._redis_from_env()
    with redis.Redis.from_url(params["redis_url"]) as raw:
        if raw.dbsize():
            raise RuntimeError(
                "the migration benchmark's Redis database is not empty; "
                "set BENCH_LEGACY_REDIS_DB to an empty one"
            )
        started = time.perf_counter()
        data = LegacyDataset(
            users=int(params["users"]), searches_per_user=int(params["searches_per_user"]), seed=24
        ).write(client)
        write_mess(data, raw)
        seconds = time.perf_counter() - started
    exp = data.expected
    quarantined = {
        "invalid": sorted(exp.invalid),
        "wrong_type": sorted(exp.wrong_type),
        "orphan": sorted(exp.orphans),
        "conflict": sorted(exp.conflicts),
    }
    return {
        "seconds": round(seconds, 3),
        "records": exp.records + sum(len(keys) for keys in quarantined.values()),
        "expected": {
            "users": exp.users,
            "searches": exp.searches,
            "unindexed": exp.unindexed,
            **quarantined,
        },
    }


def task_legacy_mess_backfill(params: dict[str, Any]) -> dict[str, Any]:
    """The backfill as its CLI runs it, then the same run again; the process's peak RSS is
    the first run's (the second rewrites nothing and reads the same batches)."""
    import resource
    from pathlib import Path

    from devkit import legacy

    client = legacy._redis_from_env()
    legacy._database_from_env()

    def rss_mb() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB

    def backfill(path: Path) -> dict[str, Any]:
        marks: list[float] = []
        started = time.perf_counter()
        report = legacy.backfill(
            client, batch_size=500, report_path=path, progress=lambda p: marks.append(p.elapsed_s)
        )
        seconds = time.perf_counter() - started
        batches = [(b - a) * 1000 for a, b in zip([0.0, *marks], marks, strict=False)]
        data = report.to_dict()
        by_kind: dict[str, list[str]] = {}
        for entry in data["quarantined"]:
            by_kind.setdefault(entry["kind"], []).append(entry["key"])
        return {
            "seconds": round(seconds, 3),
            "records_read": data["records_read"],
            "records_per_s": round(data["records_read"] / seconds) if seconds else None,
            "batches": data["batches"],
            "longest_batch_ms": round(max(batches, default=0.0), 1),
            "users": data["users"],
            "saved_searches": data["saved_searches"],
            "unindexed_searches": data["unindexed_searches"],
            "quarantined_by_kind": data["quarantined_by_kind"],
            "quarantined_keys": by_kind,
            "complete": data["complete"],
        }

    baseline = rss_mb()
    first = backfill(Path(params["report_path"]))
    peak = rss_mb()
    again = backfill(Path(params["report_path"] + ".again.json"))
    return {"first": first, "again": again, "baseline_rss_mb": baseline, "peak_rss_mb": peak}


def task_routes(params: dict[str, Any]) -> dict[str, Any]:
    """Every HTTP function with its routes, and the cron modules (functions/cron/*.py)."""
    functions: dict[str, Any] = {}
    for function in http_functions():
        try:
            functions[function] = routes_of(function)
        except Exception as error:  # a module mid-edit by someone else: report, carry on
            functions[function] = {"error": f"{type(error).__name__}: {error}"}
    cron_dir = os.path.join(os.path.dirname(__file__), "..", "functions", "cron")
    crons = sorted(
        name[:-3]
        for name in (os.listdir(cron_dir) if os.path.isdir(cron_dir) else [])
        if name.endswith(".py") and not name.startswith("_")
    )
    return {"functions": functions, "crons": crons}


def task_core_ops(params: dict[str, Any]) -> dict[str, Any]:
    """Each hot repository operation through the core against its own SQL on bare psycopg."""
    from benchmarks.core_ops_worker import task_core_ops as run

    return run(params)


def task_explain(params: dict[str, Any]) -> dict[str, Any]:
    """Every endpoint's SQL under EXPLAIN (ANALYZE, BUFFERS) on the scale database."""
    from benchmarks.explain_worker import task_explain as run

    return run(params)


def task_fluid(params: dict[str, Any]) -> dict[str, Any]:
    """One Vercel Fluid instance: `GET /api/searches` through the function's ASGI app, `c`
    requests in flight at once (sync routes run on Starlette's thread pool and share the
    container's engine), for each concurrency in `params["concurrency"]`."""
    import asyncio

    import httpx

    tokens = Tokens(params["private_pem"])
    headers = {"authorization": f"Bearer {tokens(USER)}"}
    app = module("searches").app
    rounds = int(params["rounds"])

    async def one(client: httpx.AsyncClient) -> tuple[float, int]:
        started = time.perf_counter()
        response = await client.get("/api/searches", headers=headers)
        return (time.perf_counter() - started) * 1000, response.status_code

    async def level(concurrency: int) -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://bench.local") as client:
            await one(client)
            latencies: list[float] = []
            statuses: dict[int, int] = {}
            started = time.perf_counter()
            for _ in range(rounds):
                for ms, status in await asyncio.gather(*(one(client) for _ in range(concurrency))):
                    latencies.append(ms)
                    statuses[status] = statuses.get(status, 0) + 1
            seconds = time.perf_counter() - started
        return {
            "concurrency": concurrency,
            "requests": len(latencies),
            "latency_ms": summary(latencies),
            "requests_per_s": round(len(latencies) / seconds, 1),
            "statuses": statuses,
        }

    return {"levels": [asyncio.run(level(c)) for c in params["concurrency"]]}


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "fluid": task_fluid,
    "routes": task_routes,
    "cron": task_cron,
    "legacy": task_legacy,
    "legacy_mess_write": task_legacy_mess_write,
    "legacy_mess_backfill": task_legacy_mess_backfill,
    "seed": task_seed,
    "roundtrips": task_roundtrips,
    "warm": task_warm,
    "memory": task_memory,
    "export_memory": task_export_memory,
    "core_ops": task_core_ops,
    "explain": task_explain,
}


def main(argv: list[str]) -> int:
    task = TASKS[argv[0]]
    params = json.loads(sys.stdin.read() or "{}")
    try:
        result = task(params)
    except Exception as error:
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    print(RESULT_MARK + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
