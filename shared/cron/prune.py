"""Retention (daily): delete what is older than each table's retention, in small batches.

| table | kept for (days) | setting |
|---|---|---|
| search_history | 400 | RETENTION_SEARCH_HISTORY_DAYS |
| api_usage | 90 | RETENTION_API_USAGE_DAYS |
| webhook_events (processed only) | 30 | RETENTION_WEBHOOK_EVENTS_DAYS |
| system_metrics | 90 | RETENTION_SYSTEM_METRICS_DAYS |

0 keeps a table's rows forever. Cutoffs are taken once per run from the run's time, so a run is
a fixed set of deletes; one that stops early leaves the rest for the next. Daily aggregates of
`search_history` survive it in `search_daily_rollups` (the rollup never recomputes pruned days).
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from shared import db
from shared.config import Settings
from shared.cron.runner import Job, Run
from shared.repositories import retention


def retention_days(settings: Settings) -> dict[str, int]:
    """Days each table's rows are kept (0: forever), by table name."""
    return {
        "search_history": settings.retention_search_history_days,
        "api_usage": settings.retention_api_usage_days,
        "webhook_events": settings.retention_webhook_events_days,
        "system_metrics": settings.retention_system_metrics_days,
    }


def prune(run: Run) -> None:
    size = run.settings.cron_batch_size
    deleted: dict[str, int] = {}
    run.extra["deleted"] = deleted
    for table, days in retention_days(run.settings).items():
        if days <= 0:
            continue
        target = retention.TARGETS[table]
        cutoff = run.now - timedelta(days=days)
        deleted[table] = 0
        while True:
            if not run.has_time():
                return
            with run.batch():
                count = db.run(
                    partial(retention.delete_batch, target=target, cutoff=cutoff, limit=size)
                )
            deleted[table] += count
            run.processed += count
            if count < size:
                break


JOB = Job("prune", prune)
