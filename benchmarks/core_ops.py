"""10. Warm core per operation: `db.run`/`db.transaction` + repository against bare psycopg.

One warm worker (`benchmarks.core_ops_worker`) times, interleaved and shuffled, each hot
repository operation through the core and the exact SQL the core sent (captured, not written
by hand) on a bare psycopg connection. Target: core median <= 1.5x bare median per operation
(docs/performance.md, "Warm core per operation").
"""

from __future__ import annotations

from typing import Any

from benchmarks.core import Context, WorkerError, run_worker, target

LIMIT = 1.5


def run(ctx: Context) -> dict[str, Any]:
    n, warmup = ctx.pick(400, 20), ctx.pick(40, 3)
    params = {"n": n, "warmup": warmup, "history_rows": ctx.pick(10_000, 1_000)}
    ctx.log(f"  core ops: {n} calls of each operation on each side")
    try:
        rows: dict[str, Any] = run_worker("core_ops", params, ctx.stack.app_env())["ops"]
    except WorkerError as error:
        return {"error": str(error)[-1500:], "targets": []}
    verdicts = []
    for name, row in rows.items():
        value = row["ratio_median"]
        core, bare = row["core_ms"], row["bare_ms"]
        measured = (
            f"{value}x: core {core['median']} ms (p95 {core['p95']}), "
            f"bare {bare['median']} ms (p95 {bare['p95']})"
        )
        passed = value is not None and value <= LIMIT
        verdicts.append(target(f"warm core <= {LIMIT}x bare psycopg: {name}", passed, measured))
    return {"calls_per_side": n, "ops": rows, "targets": verdicts}
