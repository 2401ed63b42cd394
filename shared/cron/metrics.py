"""System metrics (every 5 min): one multi-row INSERT into `system_metrics` per interval.

Samples, all stamped with the end of the interval they describe:
- `db.size_bytes`, `db.connections` (tags: active, max), `db.rows.<table>` (estimates);
- over the interval: `searches.count` (tags: windowSeconds) and, when there were searches,
  `searches.cache_hit_rate` (0 to 1) and `searches.avg_response_ms`;
- `redis.reachable` (1/0, tags: configured) and `redis.response_ms` when it answered; 0 with
  `breakerOpen: true` when no PING was sent because this container's Upstash breaker is open (its
  recent calls failed, `shared.redis_breaker`).

Intervals are aligned to 5-minute boundaries and remembered in the lease's state, in the same
transaction as the INSERT: a run that fires twice inside one interval records nothing the
second time, and after missed runs the next one covers the whole gap (capped at a day) once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from shared import db
from shared.clock import iso_ms
from shared.cron.runner import Job, LeaseLostError, Run
from shared.db import Conn
from shared.redis import get_redis
from shared.redis_breaker import UpstashCircuitOpenError
from shared.repositories import cron_leases, database_stats, search_history, system_metrics
from shared.repositories.system_metrics import Sample

INTERVAL = timedelta(minutes=5)
MAX_WINDOW = timedelta(days=1)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def interval_end(moment: datetime) -> datetime:
    """The 5-minute boundary at or before `moment`."""
    return moment - (moment - _EPOCH) % INTERVAL


def redis_samples(at: datetime) -> list[Sample]:
    """Reachability of Upstash (a PING within REDIS_TIMEOUT_S)."""
    client = get_redis()
    if client is None:
        return [Sample("redis.reachable", 0.0, {"configured": False}, at)]
    started = time.perf_counter()
    tags: dict[str, bool] = {"configured": True}
    try:
        reachable = client.ping() == "PONG"
    except UpstashCircuitOpenError:
        reachable, tags["breakerOpen"] = False, True
    except Exception:
        reachable = False
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    samples = [Sample("redis.reachable", 1.0 if reachable else 0.0, tags, at)]
    if reachable:
        samples.append(Sample("redis.response_ms", elapsed, None, at))
    return samples


def database_samples(conn: Conn, start: datetime, end: datetime) -> list[Sample]:
    stats = database_stats.read(conn)
    window = search_history.stats(conn, since=start, until=end)
    samples = [
        Sample("db.size_bytes", float(stats.size_bytes), None, end),
        Sample(
            "db.connections",
            float(stats.connections),
            {"active": stats.active_connections, "max": stats.max_connections},
            end,
        ),
        *(
            Sample(f"db.rows.{table}", float(rows), {"table": table}, end)
            for table, rows in sorted(stats.table_rows.items())
        ),
        Sample(
            "searches.count",
            float(window.searches),
            {"windowSeconds": int((end - start).total_seconds())},
            end,
        ),
    ]
    if window.searches:
        samples.append(Sample("searches.cache_hit_rate", window.cache_hit_rate or 0.0, None, end))
        samples.append(
            Sample("searches.avg_response_ms", window.avg_response_time or 0.0, None, end)
        )
    return samples


def collect_metrics(run: Run) -> None:
    end = interval_end(run.now)
    previous = run.state.get("collectedUntil")
    start = datetime.fromisoformat(previous) if previous else end - INTERVAL
    start = max(start, end - MAX_WINDOW)
    if start >= end:
        run.extra["skipped"] = "interval already collected"
        return
    if not run.has_time():
        return
    run.state["collectedUntil"] = end.isoformat()
    redis = redis_samples(end)  # before the transaction: no HTTP call while it is open

    def record(conn: Conn) -> int:
        samples = database_samples(conn, start, end) + redis
        system_metrics.record_many(conn, samples)
        if not cron_leases.save_state(conn, run.job, run.holder, run.state):
            raise LeaseLostError(f"cron job {run.job} lost its lease")  # rolls the INSERT back
        return len(samples)

    with run.batch():
        run.processed = db.transaction(record)
    run.extra.update(intervalStart=iso_ms(start), intervalEnd=iso_ms(end))


JOB = Job("collect_metrics", collect_metrics)
