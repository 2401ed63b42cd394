"""2. Warm invocation overhead: a function's Lambda handler against the same work done by hand.

For each call below, a worker process (a warm container) records what one invocation sends —
its SQL statements and its Upstash REST calls — then times, call by call in a shuffled order,
(a) the handler with a real API Gateway v2 event and (b) the recorded statements replayed on a
bare, already-open psycopg connection plus the recorded Upstash calls on a bare keep-alive httpx
client. The ratio a/b is the cost of everything between the event and the wire. The same loop
times the layers in between — the FastAPI + Mangum hello world's handler (the framework's floor),
the RS256 token verify, and the same SQL through the core's engine and session — so the report
can say what the overhead is made of.
"""

from __future__ import annotations

from typing import Any

from benchmarks import scenarios
from benchmarks.core import Context, WorkerError, run_worker, target

TARGETED = {
    "GET /api/health (deep=true)": "health",
    "GET /api/searches": "list searches",
}
LIMIT = 1.5


def run(ctx: Context) -> dict[str, Any]:
    n, warmup = ctx.pick(500, 25), ctx.pick(50, 5)
    env = ctx.stack.app_env(RATE_LIMIT_REQUESTS_PER_HOUR="1000000000")
    # Full: one container per call. Quick: the two targeted calls in one container.
    groups = [[name] for name in scenarios.WARM] if not ctx.quick else [list(TARGETED)]
    rows: dict[str, Any] = {}
    for group in groups:
        ctx.log(f"  warm: {', '.join(group)} ({n} calls of each layer)")
        params = {
            "private_pem": ctx.stack.private_pem,
            "fixtures": ctx.fixtures,
            "scenarios": group,
            "n": n,
            "warmup": warmup,
        }
        try:
            rows.update(run_worker("warm", params, env)["scenarios"])
        except WorkerError as error:
            rows.update({name: {"error": str(error)[-1500:]} for name in group})
    verdicts = []
    for name, label in TARGETED.items():
        row = rows.get(name, {})
        title = f"warm overhead <= {LIMIT}x bare psycopg: {label}"
        value = row.get("ratio_median")
        if value is None:
            detail = str(row.get("error", ""))[:300]
            verdicts.append(target(title, False, "no measurement", detail=detail))
            continue
        handler, bare = row["handler_ms"], row["bare_ms"]
        measured = (
            f"{value}x: handler {handler['median']} ms (p95 {handler['p95']}), "
            f"bare {bare['median']} ms (p95 {bare['p95']})"
        )
        detail = "" if value <= LIMIT else dominant(row)
        verdicts.append(target(title, value <= LIMIT, measured, detail=detail))
    return {"calls_per_layer": n, "scenarios": rows, "targets": verdicts}


def dominant(row: dict[str, Any]) -> str:
    """What the extra time per call is made of, largest first, from the measured layers."""
    layers = sorted(row.get("overhead_layers_ms", {}).items(), key=lambda kv: kv[1], reverse=True)
    parts = ", ".join(f"{name} {ms:.2f} ms" for name, ms in layers if abs(ms) >= 0.005)
    return f"overhead {row.get('overhead_median_ms'):.2f} ms per call = {parts}"
