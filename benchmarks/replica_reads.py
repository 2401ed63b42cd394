"""14. Reads served by a replica: the same declared read on the primary and on a replica.

A streaming replica of the stack's embedded server (`devkit.replica`: `pg_basebackup -R`) on the
same machine; a user with HISTORY_ROWS searches. The read is `GET /api/history`'s query through
`db.read` (one keyset page of 20), run warm, one after another: with DATABASE_READ_URL unset (the
primary serves), set (the replica serves; its freshness check runs on the read's connection about
once per REPLICA_MAX_LAG_MS), and set with replay paused past the lag bound (every read falls
back to the primary; the replica rests for a second after each refusal). Statements per read
count every round trip, the check included. Both servers are local: the figures say what routing
costs, not what a remote replica saves (a replica's gain is the primary's load it takes).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import event

from benchmarks.core import Context, target
from benchmarks.stats import summary
from devkit.replica import LocalReplica, primary_position

HISTORY_ROWS = 500
USER = "bench_replica_user"


def run(ctx: Context) -> dict[str, Any]:
    if ctx.stack.external_database:
        # A server we did not start cannot be base-backed-up here: nothing to compare.
        return {
            "skipped": "DATABASE_URL is external: this section replicates the embedded server",
            "targets": [],
        }
    reads = ctx.pick(2000, 100)
    port = int(conninfo_to_dict(ctx.stack.server_url).get("port") or 5432)
    with _environment(DATABASE_URL=ctx.stack.direct_url, DIRECT_DATABASE_URL=ctx.stack.direct_url):
        _seed()
        with (
            tempfile.TemporaryDirectory(prefix="keyflash-bench-replica-") as tmp,
            LocalReplica(Path(tmp) / "replica", port) as replica,
        ):
            replica.wait_until_replayed(primary_position(ctx.stack.direct_url))
            read_url = replica.url(ctx.stack.database)
            rows = [_measure("primary (DATABASE_READ_URL unset)", reads, {})]
            rows.append(_measure("replica", reads, {"DATABASE_READ_URL": read_url}))
            replica.pause_replay()
            _seed(extra=1)  # WAL the paused replica receives but does not apply
            replica.wait_until_received(primary_position(ctx.stack.direct_url))
            rows.append(
                _measure(
                    "replica lagging past the bound (fallback)",
                    reads,
                    {"DATABASE_READ_URL": read_url, "REPLICA_MAX_LAG_MS": "0"},
                )
            )
            replica.resume_replay()
    primary, replica_row = rows[0], rows[1]
    verdicts = [
        target(
            "a replica read costs the round trips of a primary read (warm, check amortised)",
            replica_row["statements_per_read"] <= primary["statements_per_read"] + 0.01,
            f"{replica_row['statements_per_read']} statements per read on the replica, "
            f"{primary['statements_per_read']} on the primary",
        ),
    ]
    return {
        "reads_per_case": reads,
        "history_rows": HISTORY_ROWS,
        "cases": rows,
        "targets": verdicts,
    }


@contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """`variables` set for the block (and the core's caches reset on both sides)."""
    from shared import config, db

    saved = {name: os.environ.get(name) for name in (*variables, "DATABASE_READ_URL")}
    os.environ.pop("DATABASE_READ_URL", None)
    os.environ.update(variables)
    config.get_settings.cache_clear()
    db.dispose_engine()
    try:
        yield
    finally:
        db.dispose_engine()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        config.get_settings.cache_clear()


def _seed(extra: int = 0) -> None:
    from shared import db
    from shared.clock import utcnow
    from shared.repositories import search_history, users

    db.run(lambda conn: users.get_or_create(conn, USER, f"{USER}@example.com"))
    search = search_history.NewSearch(
        user_id=USER, keywords=["replica", "bench"], location="US", language="en",
        match_type="phrase", provider="mock", cache_hit=False, response_time=10,
        avg_volume=1, total_volume=2, user_agent=None, ip_address=None,
    )  # fmt: skip
    for _ in range(extra or HISTORY_ROWS):
        db.run(partial(search_history.record, search=search, now=utcnow()))


def _measure(case: str, reads: int, variables: dict[str, str]) -> dict[str, Any]:
    from shared import db, replicas
    from shared.repositories import search_history

    with _environment(**variables):
        replicas.reset()
        statements = 0

        def count(*args: Any) -> None:
            nonlocal statements
            statements += 1

        def read() -> None:
            db.read(lambda conn: search_history.list_for_user(conn, USER, limit=20, cursor=None))

        read()  # warm: engines and connections made, statements compiled
        engines = [db.get_engine(), *db._read_engines.values()]
        for engine in engines:
            event.listen(engine, "before_cursor_execute", count)
        logger = logging.getLogger("keyflash")
        level = logger.level
        logger.setLevel(logging.ERROR)  # the fallback case logs once per read
        timings = []
        try:
            for _ in range(reads):
                started = time.perf_counter()
                read()
                timings.append((time.perf_counter() - started) * 1000)
        finally:
            logger.setLevel(level)
            for engine in engines:
                event.remove(engine, "before_cursor_execute", count)
    return {
        "case": case,
        "read_ms": summary(timings),
        "statements_per_read": round(statements / reads, 3),
    }
