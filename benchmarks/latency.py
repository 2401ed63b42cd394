"""11. Latency like production: every endpoint with a network hop, and Vercel Fluid's concurrency.

Part 1 runs the warm section's comparison (handler against the same statements and Upstash
calls replayed by hand) with `DelayProxy`s between the functions and both servers, at 0 ms and
at `HOP_MS` each way (a Lambda → Neon hop in one region). Both runs go through the proxies, so
the difference is the delay alone; the extra time divided by twice the hop is the number of
round trips a request really waits for.

Part 2: Vercel's Fluid compute may hand one instance several requests at once; our routes are
sync, so Starlette runs them on its thread pool and they share the container's engine. One
process serves `GET /api/searches` through its ASGI app at a few concurrencies, with
`DB_POOL_SIZE` 1 and 4, over the delayed hop: what a request waits for a connection, and
whether any fails.

Part 3: a new container's first query, at 0 ms and `HOP_MS`: a fresh process with the core
imported times its first `db.run` (engine, connect, the dialect's initialisation, one query),
interleaved with the same query through a stock SQLAlchemy psycopg engine, whose dialect asks
the server five questions one statement at a time where the core's asks one
(`shared.db_dialect`), and with a container restored from a SnapStart snapshot, whose INIT
connected ahead (`db.connect_ahead`) before its connection was closed: it connects and sends
only the query; and, for comparison, one restored from an INIT that only built the engine (as
before `connect_ahead`), which also sends the dialect's statement.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks.core import ROOT, Context, WorkerError, run_worker
from benchmarks.latency_proxy import DelayProxy
from benchmarks.stats import summary
from benchmarks.warm import TARGETED

HOP_MS = 1.0
DELAYS_MS = (0.0, HOP_MS)
POOL_SIZES = (1, 4)
CONCURRENCY = (1, 4, 8)
# Runs in a fresh process: argv[1] is one of WAYS; prints the first query's milliseconds.
FIRST_QUERY = r"""
import json, os, sys, time
from sqlalchemy import create_engine, text
from shared import db
from shared.db_url import parse_database_url
from shared.repositories import users
if sys.argv[1] == "restored":  # what SnapStart's INIT and before-snapshot hook leave
    db.connect_ahead()
    db.close_connections()
elif sys.argv[1] == "restored_unconnected":  # an INIT that built the engine and did not connect
    db.get_engine()
started = time.perf_counter()
if sys.argv[1] != "stock":
    db.run(lambda conn: users.get(conn, "user_first_query"), idempotent=True)
else:
    url = parse_database_url(os.environ["DATABASE_URL"]).sqlalchemy_url
    with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text("SELECT * FROM users WHERE id = :id"), {"id": "user_first_query"}).all()
print(json.dumps({"ms": (time.perf_counter() - started) * 1000}))
"""
WAYS = ("core", "stock", "restored", "restored_unconnected")


def run(ctx: Context) -> dict[str, Any]:
    return {
        "hop_ms": HOP_MS,
        "endpoints": _endpoints(ctx),
        "fluid": _fluid(ctx),
        "first_query": _first_query(ctx),
        "targets": [],
    }


def _endpoints(ctx: Context) -> dict[str, Any]:
    from benchmarks import scenarios

    n, warmup = ctx.pick(200, 10), ctx.pick(20, 3)
    names = list(TARGETED) if ctx.quick else scenarios.WARM
    rows: dict[str, Any] = {name: {} for name in names}
    for delay in DELAYS_MS:
        with _proxied_env(ctx, delay) as env:
            for name in names:
                ctx.log(f"  latency: {name} at {delay:g} ms each way ({n} calls)")
                params = {
                    "private_pem": ctx.stack.private_pem,
                    "fixtures": ctx.fixtures,
                    "scenarios": [name],
                    "n": n,
                    "warmup": warmup,
                }
                try:
                    measured = run_worker("warm", params, env)["scenarios"][name]
                except WorkerError as error:
                    rows[name][f"{delay:g}"] = {"error": str(error)[-1500:]}
                    continue
                rows[name][f"{delay:g}"] = {
                    "handler_ms": measured["handler_ms"]["median"],
                    "bare_ms": measured["bare_ms"]["median"],
                    "statements": len(measured["statements"]),
                    "redis_calls": len(measured["redis_calls"]),
                }
    for by_delay in rows.values():
        base, hop = by_delay.get("0", {}), by_delay.get(f"{HOP_MS:g}", {})
        if "handler_ms" in base and "handler_ms" in hop:
            added = hop["handler_ms"] - base["handler_ms"]
            by_delay["added_ms"] = round(added, 2)
            by_delay["round_trips_waited"] = round(added / (2 * HOP_MS), 1)
    return rows


def _fluid(ctx: Context) -> dict[str, Any]:
    rounds = ctx.pick(40, 4)
    results: dict[str, Any] = {}
    with _proxied_env(ctx, HOP_MS) as base_env:
        for pool in POOL_SIZES:
            env = {**base_env, "DB_POOL_SIZE": str(pool)}
            ctx.log(f"  latency: Fluid, DB_POOL_SIZE={pool}, concurrency {CONCURRENCY}")
            params = {
                "private_pem": ctx.stack.private_pem,
                "fixtures": ctx.fixtures,
                "concurrency": list(CONCURRENCY),
                "rounds": rounds,
            }
            try:
                results[str(pool)] = run_worker("fluid", params, env)["levels"]
            except WorkerError as error:
                results[str(pool)] = {"error": str(error)[-1500:]}
    return results


def _first_query(ctx: Context) -> dict[str, Any]:
    """{delay: {way: summary of ms}}: a new container's first query, each of `WAYS`."""
    rounds = ctx.pick(15, 2)
    results: dict[str, Any] = {}
    for delay in DELAYS_MS:
        ctx.log(f"  latency: a new container's first query at {delay:g} ms each way")
        samples: dict[str, list[float]] = {way: [] for way in WAYS}
        with _proxied_env(ctx, delay) as env:
            try:
                for round_ in range(rounds):
                    turn = round_ % len(WAYS)
                    for way in WAYS[turn:] + WAYS[:turn]:
                        samples[way].append(_first_query_ms(way, env))
            except RuntimeError as error:
                results[f"{delay:g}"] = {"error": str(error)}
                continue
        results[f"{delay:g}"] = {way: summary(ms) for way, ms in samples.items()}
    return results


def _first_query_ms(way: str, env: dict[str, str]) -> float:
    """One fresh process's first query, `way` one of `WAYS`; RuntimeError with the child's
    last line of error when it fails."""
    try:
        child = subprocess.run(
            [sys.executable, "-c", FIRST_QUERY, way],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if child.returncode == 0:
            return float(json.loads(child.stdout.splitlines()[-1])["ms"])
        lines = child.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {child.returncode}")
    except (subprocess.TimeoutExpired, ValueError, IndexError, KeyError) as error:
        raise RuntimeError(f"{type(error).__name__}: {error}") from None


@contextmanager
def _proxied_env(ctx: Context, delay_ms: float) -> Iterator[dict[str, str]]:
    """The app's environment with PostgreSQL and Upstash each behind a `DelayProxy`."""
    env = ctx.stack.app_env(RATE_LIMIT_REQUESTS_PER_HOUR="1000000000")
    with ExitStack() as proxies:
        for name in ("DATABASE_URL", "UPSTASH_REDIS_REST_URL"):
            parts = urlsplit(env[name])
            proxy = DelayProxy(parts.hostname or "127.0.0.1", parts.port or 0, delay_ms)
            port = proxies.enter_context(proxy).port
            credentials, _, _ = parts.netloc.rpartition("@")
            host = f"127.0.0.1:{port}"
            env[name] = urlunsplit(
                parts._replace(netloc=f"{credentials}@{host}" if credentials else host)
            )
        yield env
