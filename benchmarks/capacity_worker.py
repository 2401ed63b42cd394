"""Containers for the capacity check (`benchmarks.capacity_check`): function code runs here.

`python -m benchmarks.capacity_worker TASK` with a function's environment (pooled URL,
`DB_POOL_SIZE=1`), JSON parameters on stdin, the JSON result after `@@RESULT ` (as
`benchmarks.worker`).

- `profile`: per route, N warm requests through the Lambda handlers, alone on the pooler, and
  what they cost: PgBouncer's `SHOW STATS` deltas (statements, transactions, server-held time),
  Upstash commands, handler wall and CPU time, rows per table. Then the mix replayed until the
  tables it writes have grown enough to measure bytes per row, and one run of the metrics cron
  (the `system_metrics` rows every 5 minutes add).
- `load`: one warm container issuing a fixed route sequence at a fixed pace from a common start
  (`READY`, then `GO <epoch s>` on stdin), for a fixed time; what it sent and how long each
  request took.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from benchmarks import scenarios
from benchmarks.scenarios import Fixtures, Tokens
from benchmarks.stats import summary
from benchmarks.worker import RECORDER, RESULT_MARK, invoke
from devkit import events

TABLES = ("api_usage", "search_history", "system_metrics")
# A table's size, all partitions included when it is partitioned (a partitioned parent has no
# storage of its own; pg_partition_tree lists no rows for a plain table).
_SIZE = """
SELECT pg_total_relation_size(%(t)s::regclass) + coalesce(
    (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%(t)s::regclass)
     WHERE relid <> %(t)s::regclass), 0)
"""


def tables_now(direct_url: str) -> dict[str, dict[str, int]]:
    """Rows and bytes (heap, indexes, TOAST, all partitions) of the append-only tables."""
    with psycopg.connect(direct_url, autocommit=True) as conn:
        found = {}
        for table in TABLES:
            rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            size = conn.execute(_SIZE, {"t": table}).fetchone()
            found[table] = {
                "rows": int(rows[0]) if rows else 0,
                "bytes": int(size[0]) if size else 0,
            }
        return found


def pooler_stats(admin_dsn: str, database: str) -> dict[str, int]:
    """PgBouncer's running totals for `database` (`SHOW STATS`): queries, transactions, µs held."""
    with psycopg.connect(
        admin_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor, row_factory=dict_row
    ) as conn:
        rows = conn.execute("SHOW STATS").fetchall()
    row: dict[str, Any] = next((r for r in rows if r.get("database") == database), {})
    keys = ("total_query_count", "total_xact_count", "total_xact_time", "total_query_time")
    return {key: int(row.get(key, 0)) for key in keys}


def redis_commands(recorded: list[str]) -> int:
    """Upstash commands in recorded calls (`describe_redis` strings): a pipeline counts each."""
    return sum(len(call.split()) - 1 if call.startswith("PIPELINE") else 1 for call in recorded)


def _settle() -> None:
    """Read the pending `api_usage` answer, so the pooler has counted it."""
    from shared.http import usage

    usage.settle()


def _call(name: str, tokens: Tokens, fixtures: Fixtures) -> tuple[int, float, float]:
    """(status, wall ms, CPU ms) of one request of scenario `name`."""
    event = scenarios.BY_NAME[name].build(tokens, fixtures)
    wall, cpu = time.perf_counter(), time.process_time()
    status, _ = invoke(scenarios.BY_NAME[name].function, event)
    return status, (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def _measure(
    name: str, n: int, gap_s: float, tokens: Tokens, fixtures: Fixtures, admin: str, db: str
) -> dict[str, Any]:
    """`n` requests of route `name`, `gap_s` apart (0: back to back): per-request costs."""
    stats_before = pooler_stats(admin, db)
    walls: list[float] = []
    cpus: list[float] = []
    statuses: dict[int, int] = {}
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)
        status, wall, cpu = _call(name, tokens, fixtures)
        walls.append(wall)
        cpus.append(cpu)
        statuses[status] = statuses.get(status, 0) + 1
    _settle()
    delta = {key: value - stats_before[key] for key, value in pooler_stats(admin, db).items()}
    return {
        "n": n,
        "statuses": statuses,
        "statements": delta["total_query_count"] / n,
        "transactions": delta["total_xact_count"] / n,
        "server_ms": delta["total_xact_time"] / 1000 / n,
        "query_ms": delta["total_query_time"] / 1000 / n,
        "handler_ms": sum(walls) / n,
        "handler_ms_summary": summary(walls),
        "cpu_ms": sum(cpus) / n,
    }


def task_profile(params: dict[str, Any]) -> dict[str, Any]:
    tokens, fixtures = Tokens(params["private_pem"]), Fixtures(**params["fixtures"])
    admin, database, direct = params["admin_dsn"], params["database"], params["direct_url"]
    n, warmup, gap_s = int(params["n"]), int(params["warmup"]), float(params.get("gap_s", 0))
    RECORDER.install()
    routes: dict[str, Any] = {}
    for name in params["routes"]:
        for _ in range(warmup):
            _call(name, tokens, fixtures)
        _settle()
        tables_before = tables_now(direct)
        RECORDER.start()
        row = _measure(name, n, 0.0, tokens, fixtures, admin, database)
        recorded = RECORDER.stop()
        tables_after = tables_now(direct)
        routes[name] = row | {
            "redis_commands": redis_commands(recorded["redis"]) / n,
            "client_statements": (recorded["statements"] + recorded["usage_sent_after"]) / n,
            "rows": {t: (tables_after[t]["rows"] - tables_before[t]["rows"]) / n for t in TABLES},
        }
        if gap_s:  # the same requests paced as the load paces a container
            routes[name]["paced"] = _measure(name, n, gap_s, tokens, fixtures, admin, database)
    calibration = _calibrate(params["calibrate"], tokens, fixtures, direct)
    before = tables_now(direct)
    job = importlib.import_module("functions.cron.collect_metrics")
    job.lambda_handler(events.schedule("collect_metrics"), events.lambda_context("collect_metrics"))
    after = tables_now(direct)
    return {
        "routes": routes,
        "calibration": calibration,
        "metrics_cron_rows": after["system_metrics"]["rows"] - before["system_metrics"]["rows"],
        "tables": after,
    }


def _calibrate(
    params: dict[str, Any], tokens: Tokens, fixtures: Fixtures, direct: str
) -> dict[str, Any]:
    """Bytes per row from growth large enough to be measured: the mix's `sequence`, cycled
    until every table it writes has grown `min_bytes` (or `max_requests` were sent). A route's
    few dozen rows grow a table by a handful of 8 kB pages per relation, which is mostly the
    rounding (+70 % once for search_history)."""
    sequence: list[str] = params["sequence"]
    min_bytes, max_requests = int(params["min_bytes"]), int(params["max_requests"])
    before = tables_now(direct)
    sent = 0
    while sent < max_requests:
        for _ in range(len(sequence)):
            _call(sequence[sent % len(sequence)], tokens, fixtures)
            sent += 1
        _settle()
        now = tables_now(direct)
        grown = [
            now[t]["bytes"] - before[t]["bytes"]
            for t in TABLES
            if now[t]["rows"] > before[t]["rows"]
        ]
        if grown and min(grown) >= min_bytes:
            break
    after = tables_now(direct)
    return {
        "requests": sent,
        "rows": {t: after[t]["rows"] - before[t]["rows"] for t in TABLES},
        "bytes": {t: after[t]["bytes"] - before[t]["bytes"] for t in TABLES},
    }


def task_load(params: dict[str, Any]) -> dict[str, Any]:
    """Warms every route of `sequence` up, prints `READY`, reads `GO <start epoch s>` on stdin,
    then sends requests of `sequence` (cycled from `offset`) every 1/`rate` s from that start for
    `seconds`; a request that falls behind its slot starts at once (no catching up by skipping)."""
    tokens, fixtures = Tokens(params["private_pem"]), Fixtures(**params["fixtures"])
    sequence: list[str] = params["sequence"]
    rate, seconds = float(params["rate"]), float(params["seconds"])
    for name in dict.fromkeys(sequence):
        _call(name, tokens, fixtures)
    _settle()
    RECORDER.install()
    print("READY", flush=True)
    command = sys.stdin.readline().split()
    if command[:1] != ["GO"]:
        raise RuntimeError(f"expected GO, got {command!r}")
    time.sleep(max(0.0, float(command[1]) - time.time()))  # the common start (load pacing)
    started = time.perf_counter()
    counts: dict[str, int] = {}
    statuses: dict[str, int] = {}
    walls: list[float] = []
    cpu_ms = 0.0
    behind_ms = 0.0
    RECORDER.start()
    i = 0
    while (now := time.perf_counter() - started) < seconds:
        slot = i / rate
        if slot > now:
            time.sleep(slot - now)
        else:
            behind_ms = max(behind_ms, (now - slot) * 1000)
        name = sequence[(int(params["offset"]) + i) % len(sequence)]
        status, wall, cpu = _call(name, tokens, fixtures)
        counts[name] = counts.get(name, 0) + 1
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        walls.append(wall)
        cpu_ms += cpu
        i += 1
    recorded = RECORDER.stop()
    from shared.http import usage

    usage.flush()  # the last api_usage row, answered before the orchestrator counts
    return {
        "counts": counts,
        "statuses": statuses,
        "handler_s": sum(walls) / 1000,
        "handler_ms": summary(walls),
        "cpu_s": cpu_ms / 1000,
        "redis_commands": redis_commands(recorded["redis"]),
        "max_behind_ms": round(behind_ms, 1),
    }


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "profile": task_profile,
    "load": task_load,
}


def main(argv: list[str]) -> int:
    params = json.loads(sys.stdin.readline() or "{}")  # one line: `load` reads GO after it
    try:
        result = TASKS[argv[0]](params)
    except Exception as error:
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    print(RESULT_MARK + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
