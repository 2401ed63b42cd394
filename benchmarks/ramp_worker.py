"""The load ramp's fleet (section 13): every simulated container an asyncio task with its own
connection, replaying the SQL the real functions send.

`python -m benchmarks.ramp_worker` with the function environment (pooled `DATABASE_URL`), JSON
parameters on stdin (`private_pem`, `fixtures`, `users`, `rate`, `seed`). Protocol on stdin and
stdout, one line each:

1. it captures the mix (below) and creates the ramp's users, then prints `READY {json}` (the
   routes, their statements and Upstash calls);
2. for every `STEP containers warmup_s measure_s drain_s` line it opens the connections the step
   adds, prints `MEASURING` and `MEASURED` around the measured window, and `RESULT {json}` once
   the requests still in flight are done (or `drain_s` has passed);
3. `STOP` (or end of input) closes every connection.

Why replay, not the functions themselves: 500 Python processes (one per container, each with
a function imported) do not fit two cores, and 500 threads through the core would measure the
GIL. So each route is run once through its real Lambda handler with a statement
recorder on (`benchmarks.worker.RECORDER`, plus the `api_usage` row that `shared.http.usage`
sends after the response), and the fleet replays exactly those statements, with their
parameters, on `psycopg.AsyncConnection`s: the SQL is ours, the per-container connection is
real, and one event loop holds 500 of them. What is not replayed: the Upstash calls (the ramp
measures the database path; their count per request is reported for the capacity model) and
the handler's own Python time (a container holds its connection only while it talks SQL).

Each container receives requests at `rate` per second (Poisson arrivals, seeded), one at a time
as a Lambda container does; a request's latency runs from its scheduled arrival, so time spent
queued behind the container's previous request counts (no coordinated omission). The `api_usage`
INSERT runs after the response is timed, as the function sends it after answering.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy import text

from benchmarks import scenarios
from benchmarks.scenarios import USER, Fixtures, Tokens
from benchmarks.stats import percentile
from benchmarks.worker import _CUID, _UUID, RECORDER, Env, _fresh_id, _prepare, describe_sql, invoke
from shared import db
from shared.config import get_settings
from shared.db_url import parse_database_url
from shared.http import usage
from shared.repositories import api_usage

# Requests per 100 in the mix: the product's main action (keyword search, mostly cache hits)
# and the pages a signed-in user loads around it; webhooks are rare. Scenario names from
# `benchmarks.scenarios`.
MIX: dict[str, int] = {
    "POST /api/keywords (cache hit)": 20,
    "POST /api/keywords (cache miss)": 10,
    "GET /api/me": 15,
    "GET /api/searches": 15,
    "GET /api/searches/{search_id}": 8,
    "POST /api/searches": 4,
    "GET /api/history": 10,
    "GET /api/history/stats": 5,
    "GET /api/flags": 8,
    "GET /api/health (database check cached)": 3,
    "POST /api/webhooks/clerk (user.updated)": 2,
}
USER_PREFIX = "user_ramp_"
CONNECT_CONCURRENCY = 25  # connections opened at once while a step grows the fleet


@dataclass
class Route:
    """One route of the mix: the statements its request sends, as recorded."""

    name: str
    weight: int
    statements: list[tuple[str, Any]]
    usage: Any  # the api_usage Request the function recorded, or None
    redis_calls: int


@dataclass
class Tally:
    """What a step's containers did in the measured window."""

    latencies_ms: list[float] = field(default_factory=list)  # of requests due in the window
    served: int = 0  # responses finished inside the window, whenever they were due
    errors: dict[str, int] = field(default_factory=dict)
    backlog: int = 0  # requests due in the window but not started when it ended


# --- capture ------------------------------------------------------------------------------


def capture(private_pem: str, fixtures: Fixtures) -> list[Route]:
    """Run each route of the mix through its real handler, warm, and record what it sends."""
    tokens = Tokens(private_pem)
    recorded: list[Any] = []
    original = usage.record

    def record(request: Any) -> None:
        recorded.append(request)
        original(request)

    usage.record = record  # type: ignore[assignment]
    RECORDER.install()
    routes = []
    try:
        for name, weight in MIX.items():
            scenario = scenarios.BY_NAME[name]
            with Env(scenario.env):
                for warm in (False, True):  # the first call warms the container's caches
                    _prepare(scenario.needs, tokens, fixtures)
                    event = scenario.build(tokens, fixtures)
                    recorded.clear()
                    if warm:
                        RECORDER.start()
                    try:
                        status, body = invoke(scenario.function, event)
                    finally:
                        if warm:
                            RECORDER.stop()
                    if not 200 <= status < 300:
                        raise RuntimeError(f"{name}: HTTP {status} {json.dumps(body)[:300]}")
            routes.append(
                Route(
                    name=name,
                    weight=weight,
                    statements=list(RECORDER.statements),
                    usage=recorded[-1] if recorded else None,
                    redis_calls=len(RECORDER.redis),
                )
            )
    finally:
        usage.record = original  # type: ignore[assignment]
        usage.flush()
    return routes


def create_users(count: int) -> list[str]:
    """`count` users like the captured one (same tier), each with copies of its saved searches
    (ids from `own_search`), so no two containers share a row and every read finds rows."""
    ids = [f"{USER_PREFIX}{i:04d}" for i in range(count)]

    def work(conn: Any) -> None:
        params = {"ids": ids, "user": USER}
        conn.session.execute(
            text(
                'INSERT INTO users (id, email, tier, "updatedAt") '
                "SELECT n.id, n.id || '@bench.test', u.tier, now() AT TIME ZONE 'UTC' "
                "FROM unnest(CAST(:ids AS text[])) AS n(id), users u WHERE u.id = :user "
                "ON CONFLICT (id) DO NOTHING"
            ),
            params,
        )
        conn.session.execute(
            text(
                "INSERT INTO saved_searches SELECT (jsonb_populate_record(NULL::saved_searches, "
                "to_jsonb(s) || jsonb_build_object('id', 'c' || left(md5(n.id || s.id), 24), "
                "'userId', n.id))).* "
                "FROM unnest(CAST(:ids AS text[])) AS n(id), saved_searches s "
                'WHERE s."userId" = :user ON CONFLICT (id) DO NOTHING'
            ),
            params,
        )

    db.transaction(work)
    return ids


def own_search(user: str, search_id: str) -> str:
    """The id of `user`'s copy of the captured user's saved search `search_id`."""
    return "c" + hashlib.md5((user + search_id).encode()).hexdigest()[:24]


# --- replay -------------------------------------------------------------------------------


class Statement:
    """A recorded statement bound to one container's user: the captured user's id becomes the
    container's (its saved search, the container user's copy), and other generated ids are
    made afresh on every run, so inserts insert."""

    __slots__ = ("fresh", "params", "sql")

    def __init__(self, sql: str, params: Any, user: str, search_id: str) -> None:
        self.sql = sql
        self.params = _bind(params, user, search_id)
        keys = range(len(self.params)) if isinstance(self.params, list) else self.params or {}
        self.fresh = [
            key
            for key in keys
            if isinstance(self.params[key], str)
            and (_CUID.match(self.params[key]) or _UUID.match(self.params[key]))
            and self.params[key] != own_search(user, search_id)
        ]

    def args(self) -> Any:
        if not self.fresh:
            return self.params
        params = self.params.copy()
        for key in self.fresh:
            params[key] = _fresh_id(params[key])
        return params


def _bind(params: Any, user: str, search_id: str) -> Any:
    def swap(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value == search_id:
            return own_search(user, search_id)
        return value.replace(USER, user) if USER in value else value

    if isinstance(params, dict):
        return {key: swap(value) for key, value in params.items()}
    if isinstance(params, list | tuple):
        return [swap(value) for value in params]
    return params


class Container:
    """One simulated warm container: its own connection, its user, its share of arrivals."""

    def __init__(
        self, index: int, user: str, search_id: str, routes: list[Route], seed: int
    ) -> None:
        self.conn: Any = None
        self.rng = random.Random(seed * 100_003 + index)
        self.routes = [
            [Statement(sql, params, user, search_id) for sql, params in r.statements]
            for r in routes
        ]
        self.usage = [
            dataclasses.replace(r.usage, user_id=user) if r.usage is not None else None
            for r in routes
        ]
        self.weights = _cumulative([r.weight for r in routes])
        self.statements_sent = 0

    async def connect(self, dsn: str) -> None:
        self.conn = await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, prepare_threshold=None, connect_timeout=10
        )

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def serve(self, route: int) -> None:
        """The route's statements on this container's connection, in order, results read."""
        for statement in self.routes[route]:
            cursor = await self.conn.execute(statement.sql, statement.args())
            self.statements_sent += 1
            if cursor.description is not None:
                await cursor.fetchall()

    async def record_usage(self, route: int) -> None:
        request = self.usage[route]
        if request is None:
            return
        row = api_usage.wire_row(request)
        await self.conn.execute(USAGE_SQL, [None if v is None else v.decode() for v in row])
        self.statements_sent += 1

    async def recover(self, dsn: str) -> None:
        """After an error: end an open transaction, or reconnect if the connection broke."""
        try:
            if self.conn.closed or self.conn.broken:
                await self.connect(dsn)
            elif self.conn.info.transaction_status != pq.TransactionStatus.IDLE:
                await self.conn.execute("ROLLBACK")
        except Exception:  # the next request finds out again
            return

    async def run(
        self, dsn: str, rate: float, window: tuple[float, float, float], tally: Tally
    ) -> None:
        """Serve Poisson arrivals from `window[0]` to `window[2]`; tally those due from
        `window[1]` (the measured part)."""
        loop = asyncio.get_running_loop()
        start, measured_from, end = window
        due = start + self.rng.expovariate(rate)
        while due < end:
            now = loop.time()
            if now >= end:  # still busy with earlier requests when the window closed
                while due < end:
                    tally.backlog += due >= measured_from
                    due += self.rng.expovariate(rate)
                return
            if due > now:
                await asyncio.sleep(due - now)
            route = _pick(self.weights, self.rng.random())
            try:
                await self.serve(route)
            except Exception as error:
                if due >= measured_from:
                    kind = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                    tally.errors[kind] = tally.errors.get(kind, 0) + 1
                await self.recover(dsn)
            else:
                finished = loop.time()
                if due >= measured_from:
                    tally.latencies_ms.append((finished - due) * 1000)
                if measured_from <= finished < end:
                    tally.served += 1
                try:
                    await self.record_usage(route)
                except Exception as error:
                    if due >= measured_from:
                        kind = f"api_usage {type(error).__name__}"
                        tally.errors[kind] = tally.errors.get(kind, 0) + 1
                    await self.recover(dsn)
            due += self.rng.expovariate(rate)


def _positional(sql: str) -> str:
    """`$1, $2 …` (libpq's placeholders) as psycopg's `%s`, in order."""
    return re.sub(r"\$\d+", "%s", sql)


# The row `shared.http.usage` sends after the response, in psycopg's placeholder style.
USAGE_SQL = _positional(api_usage.wire_insert([(None,) * len(api_usage.WIRE_COLUMNS)])[0].decode())


def _cumulative(weights: list[int]) -> list[float]:
    total, running, out = sum(weights), 0, []
    for weight in weights:
        running += weight
        out.append(running / total)
    return out


def _pick(cumulative: list[float], draw: float) -> int:
    for index, bound in enumerate(cumulative):
        if draw < bound:
            return index
    return len(cumulative) - 1


async def step(
    fleet: list[Container], dsn: str, rate: float, seconds: tuple[float, float, float]
) -> dict[str, Any]:
    """Run every container for warmup + measure seconds, wait at most drain seconds for what
    is still in flight; the measured window's figures."""
    warmup_s, measure_s, drain_s = seconds
    loop = asyncio.get_running_loop()
    tally = Tally()
    start = loop.time() + 0.05
    window = (start, start + warmup_s, start + warmup_s + measure_s)
    sent_before = sum(c.statements_sent for c in fleet)
    tasks = [asyncio.ensure_future(c.run(dsn, rate, window, tally)) for c in fleet]
    await asyncio.sleep(window[1] - loop.time())
    print("MEASURING", flush=True)
    cpu_started = time.process_time()
    await asyncio.sleep(max(0.0, window[2] - loop.time()))
    cpu_s = time.process_time() - cpu_started
    print("MEASURED", flush=True)
    _, pending = await asyncio.wait(tasks, timeout=drain_s)
    for task in pending:
        task.cancel()
    latencies = tally.latencies_ms
    return {
        "containers": len(fleet),
        "offered_rps": round(len(fleet) * rate, 1),
        "achieved_rps": round(tally.served / measure_s, 1),
        "served": tally.served,
        "errors": tally.errors,
        "backlog": tally.backlog,
        "unfinished_at_drain": len(pending),
        "latency_ms": {
            f"p{int(q * 100)}": round(percentile(latencies, q), 2) if latencies else None
            for q in (0.5, 0.95, 0.99)
        },
        "statements_sent": sum(c.statements_sent for c in fleet) - sent_before,
        "client_cpu_s_in_process": round(cpu_s, 2),
    }


async def serve_steps(
    routes: list[Route], users: list[str], search_id: str, dsn: str, rate: float, seed: int
) -> None:
    loop = asyncio.get_running_loop()
    fleet: list[Container] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def grown(container: Container) -> None:
        async with gate:
            await container.connect(dsn)

    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] != "STEP":
                return
            containers, seconds = int(line[1]), (float(line[2]), float(line[3]), float(line[4]))
            added = [
                Container(i, users[i % len(users)], search_id, routes, seed)
                for i in range(len(fleet), containers)
            ]
            await asyncio.gather(*(grown(c) for c in added))
            fleet += added
            result = await step(fleet, dsn, rate, seconds)
            print("RESULT " + json.dumps(result), flush=True)
    finally:
        await asyncio.gather(*(c.close() for c in fleet), return_exceptions=True)


def pooled_dsn() -> str:
    """The function's DATABASE_URL as plain libpq (the `?pgbouncer=true` flag stripped)."""
    target = parse_database_url(get_settings().database_url)
    return target.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")


def main() -> int:
    params = json.loads(sys.stdin.readline())
    routes = capture(params["private_pem"], Fixtures(**params["fixtures"]))
    users = create_users(int(params["users"]))
    described = [
        {
            "route": r.name,
            "weight": r.weight,
            "statements": len(r.statements) + (r.usage is not None),
            "sql": [describe_sql(sql) for sql, _ in r.statements]
            + (["INSERT api_usage (after the response)"] if r.usage is not None else []),
            "redis_calls": r.redis_calls,
        }
        for r in routes
    ]
    print("READY " + json.dumps({"routes": described}), flush=True)
    asyncio.run(
        serve_steps(
            routes,
            users,
            params["fixtures"]["search_id"],
            pooled_dsn(),
            float(params["rate"]),
            int(params["seed"]),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
