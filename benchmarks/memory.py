"""7. Memory: each function's RSS over many warm invocations, one process per function.

Each worker imports one function, then invokes its handler with its primary request (the one
used at cold start) N times, reading VmRSS after invocation 100 and N (and every N/10 for the
curve); the peak is `ru_maxrss`. Growth between invocation 100 and N flags per-request leaks:
caches without bounds, lists that only grow. The worker's own harness (event builder, token
signing) is included in the figures, as a small constant. Workers run three at a time: RSS is
not a timing, and the machine has two cores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.core import Context, WorkerError, run_worker, target

LIMIT_PCT = 5.0
PARALLEL = 3


def run(ctx: Context, functions: list[str]) -> dict[str, Any]:
    n, early = ctx.pick(1000, 60), ctx.pick(100, 10)
    if ctx.quick:
        functions = [name for name in ("keywords",) if name in functions]
    env = ctx.stack.app_env(RATE_LIMIT_REQUESTS_PER_HOUR="1000000000")
    ctx.log(f"  memory: {len(functions)} functions x {n} invocations, {PARALLEL} at a time")

    def measure(function: str) -> dict[str, Any]:
        params = {
            "private_pem": ctx.stack.private_pem,
            "fixtures": ctx.fixtures,
            "function": function,
            "n": n,
            "early": early,
        }
        try:
            return run_worker("memory", params, env)
        except WorkerError as error:
            return {"error": str(error)[-1500:]}

    # Memory is not a timing: containers run side by side to use both cores.
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        rows: dict[str, Any] = dict(zip(functions, pool.map(measure, functions), strict=True))
    growing = {
        name: row.get("growth_pct")
        for name, row in rows.items()
        if row.get("growth_pct") is None or row["growth_pct"] > LIMIT_PCT
    }
    worst = max(
        (
            (name, row["growth_pct"])
            for name, row in rows.items()
            if row.get("growth_pct") is not None
        ),
        key=lambda item: item[1],
        default=(None, None),
    )
    verdict = target(
        f"RSS growth between invocation {early} and {n} <= {LIMIT_PCT:g}%",
        not growing and bool(rows),
        f"largest: {worst[0]} {worst[1]}%" if worst[0] else "no measurement",
        detail=", ".join(_why(name, pct, rows[name]) for name, pct in growing.items()),
    )
    return {"invocations": n, "early": early, "functions": rows, "targets": [verdict]}


def _why(name: str, pct: float | None, row: dict[str, Any]) -> str:
    """The growth, and whether the response itself grew meanwhile (data, not a leak)."""
    if pct is None:
        return f"{name}: {str(row.get('error', 'no measurement'))[:200]}"
    early, end = row.get("response_bytes_early"), row.get("response_bytes_end")
    if early and end and end > early * 1.5:
        return (
            f"{name} {pct}% while its response grew from {early:,} to {end:,} bytes "
            "(each call adds a row that the next one returns)"
        )
    return f"{name} {pct}%"
