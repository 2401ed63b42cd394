"""Retention (daily): make the log partitions ahead, then drop or delete what is past retention.

| table | kept for (days) | setting | how |
|---|---|---|---|
| search_history | 400 | RETENTION_SEARCH_HISTORY_DAYS | quarterly partitions dropped |
| api_usage | 90 | RETENTION_API_USAGE_DAYS | daily partitions dropped |
| webhook_events (processed only) | 30 | RETENTION_WEBHOOK_EVENTS_DAYS | batched deletes |
| system_metrics | 90 | RETENTION_SYSTEM_METRICS_DAYS | monthly partitions dropped |

First each partitioned log gets its ranges up to a few periods ahead (`shared.repositories.
partitions`), whatever its retention. Then a partition whose upper bound is at or before the
cutoff is dropped whole, so a row lives up to one period (a day, a month, a quarter) past its
setting; the legacy and DEFAULT partitions, and `webhook_events`, lose their expired rows in
small batches. 0 keeps a table's rows forever. Cutoffs are taken once per run from the run's
time, so a run is a fixed set of steps; one that stops early (or meets a lock it will not wait
for) leaves the rest for the next. Before dropping or deleting anything of a table, a run
commits its cutoff's day in its state (`prunedThrough`, by table; never moved back), so that
daily aggregates of `search_history` survive it in `search_daily_rollups`: the rollup never
recomputes a day up to the recorded one, only adds a provider's missing total
(`shared.cron.rollup`). Before all that, it finishes the erasures whose legacy Redis keys Redis
failed to delete (`_finish_legacy_erasures`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from functools import partial
from typing import TypeVar

from psycopg.errors import LockNotAvailable
from sqlalchemy.exc import OperationalError

from shared import db
from shared.config import Settings
from shared.cron.runner import Job, Run
from shared.db import Conn
from shared.repositories import partitions, retention

T = TypeVar("T")

PRUNED_THROUGH = "prunedThrough"  # state: the last day each table may have lost rows of, by name


def retention_days(settings: Settings) -> dict[str, int]:
    """Days each table's rows are kept (0: forever), by table name."""
    return {
        "search_history": settings.retention_search_history_days,
        "api_usage": settings.retention_api_usage_days,
        "webhook_events": settings.retention_webhook_events_days,
        "system_metrics": settings.retention_system_metrics_days,
    }


def prune(run: Run) -> None:
    _finish_legacy_erasures(run)
    created: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}
    deleted: dict[str, int] = {}
    run.extra.update(created=created, dropped=dropped, deleted=deleted)
    for table, layout in partitions.LAYOUTS.items():
        if not run.has_time():
            return
        with run.batch():
            names = _unless_locked(
                run, partial(partitions.create_ahead, layout=layout, now=run.now), table
            )
        if names:
            created[table] = names
    for table, days in retention_days(run.settings).items():
        if days <= 0:
            continue
        cutoff = run.now - timedelta(days=days)
        record_cutoff(run, table, cutoff)
        deleted[table] = 0
        log = partitions.LAYOUTS.get(table)
        done = (
            _prune_batches(run, retention.TARGETS[table], cutoff, deleted)
            if log is None
            else _prune_partitions(run, log, cutoff.replace(tzinfo=None), dropped, deleted)
        )
        if not done:
            return


def record_cutoff(run: Run, table: str, cutoff: datetime) -> None:
    """Commit, before deleting anything of `table`, the last day this run may delete rows of
    (its cutoff's) in `state[PRUNED_THROUGH]`: a snapshot that sees any of the deletions then
    sees the day too (the rollup reads it so: `shared.repositories.search_rollups`). Never
    moved back: a longer retention brings back none of the rows an earlier run deleted."""
    through: dict[str, str] = run.state.setdefault(PRUNED_THROUGH, {})
    recorded = through.get(table)
    day = cutoff.date() if recorded is None else max(cutoff.date(), date.fromisoformat(recorded))
    through[table] = day.isoformat()
    run.save_state()


def _finish_legacy_erasures(run: Run) -> None:
    """First, the erasures whose legacy Redis keys Redis failed to delete at the time: delete
    them now, and with them the mark that names the erased id (docs/accounts-and-privacy.md).
    The first failure ends the step (Redis is likely still failing; it moved to the back), so
    an outage costs a run one Redis timeout."""
    # Imported here: the STORAGE_MODE switch maps the user tables, which the rest of the cron
    # never needs at import.
    from shared import storage

    outcome = run.extra["legacyErasures"] = {"finished": 0, "failed": 0}
    for key in storage.pending_legacy_erasures(limit=run.settings.cron_batch_size):
        if not run.has_time():
            return
        with run.batch():
            finished = storage.finish_legacy_erasure(key)
        if finished is False:
            outcome["failed"] += 1
            run.complete = False
            return
        if finished:
            outcome["finished"] += 1


def _unless_locked(run: Run, work: Callable[[Conn], T], what: str) -> T | None:
    """`work` in one transaction, or None if it met a lock held past the lock timeout (a long
    reader, an export): the run is then incomplete, names `what` in `lockedOut`, and the next
    run tries again."""
    try:
        return db.transaction(work)
    except OperationalError as error:
        if not isinstance(error.orig, LockNotAvailable):
            raise
    run.complete = False
    run.extra.setdefault("lockedOut", []).append(what)
    return None


def _prune_partitions(
    run: Run,
    layout: partitions.Layout,
    cutoff: datetime,
    dropped: dict[str, list[str]],
    deleted: dict[str, int],
) -> bool:
    """Drop the expired partitions, then batch-delete expired rows of the unbounded ones."""
    table = layout.table
    existing = db.run(partial(partitions.partitions_of, layout=layout), idempotent=True)
    for partition in partitions.expired(existing, cutoff):
        if not run.has_time():
            return False
        with run.batch():
            name = _unless_locked(
                run, partial(partitions.drop, partition=partition), partition.name
            )
        if name is not None:
            dropped.setdefault(table, []).append(name)
    for partition in partitions.unbounded(existing, cutoff):
        batch = partial(partitions.delete_batch, layout=layout, partition=partition, cutoff=cutoff)
        if not _delete_in_batches(run, batch, table, deleted):
            return False
    return True


def _prune_batches(
    run: Run, target: retention.Target, cutoff: datetime, deleted: dict[str, int]
) -> bool:
    """Delete `target`'s rows older than `cutoff` in batches; False if time ran out."""
    batch = partial(retention.delete_batch, target=target, cutoff=cutoff)
    return _delete_in_batches(run, batch, target.table, deleted)


def _delete_in_batches(
    run: Run, delete_batch: Callable[..., int], table: str, deleted: dict[str, int]
) -> bool:
    """`delete_batch(session, limit=…)` until a batch comes back short; False if time ran out."""
    size = run.settings.cron_batch_size
    while True:
        if not run.has_time():
            return False
        with run.batch():
            count = db.run(partial(delete_batch, limit=size))
        deleted[table] += count
        run.processed += count
        if count < size:
            return True


JOB = Job("prune", prune)
