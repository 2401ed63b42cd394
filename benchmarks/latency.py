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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks.core import Context, WorkerError, run_worker
from benchmarks.latency_proxy import DelayProxy
from benchmarks.warm import TARGETED

HOP_MS = 1.0
DELAYS_MS = (0.0, HOP_MS)
POOL_SIZES = (1, 4)
CONCURRENCY = (1, 4, 8)


def run(ctx: Context) -> dict[str, Any]:
    return {"hop_ms": HOP_MS, "endpoints": _endpoints(ctx), "fluid": _fluid(ctx), "targets": []}


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
