"""Search rollup (hourly): keep `search_daily_rollups` equal to `search_history` per day.

Only days that may have changed are recomputed: from the day of the previous complete run's
start minus LOOKBACK (rows from requests still in flight then), through today. One day is one
batch (one statement). A first run, or `{"full": true}` (`?full=true` on Vercel), starts at the
oldest history. Days the prune may have deleted rows of are never recomputed: their rows may be
partly deleted (the prune deletes in batches, in no order, and may run out of time, or drops a
partition), and recomputed, their totals would go down. Which days those are is what the prune
recorded, not this run's clock: before deleting anything it commits the day of its cutoff
(`shared.cron.prune.record_cutoff`), and each day's statement reads that record in its own
snapshot (`shared.repositories.search_rollups.rollup_day`), so a statement that sees any of the
prune's deletions sees the day as reached. Days up to and including the recorded one are only
filled: a provider without a total for the day gets one, so rows imported there (a legacy
backfill) are rolled up by the full run after the import, before the prune deletes them, unless
the day already had that provider's total. Every later day is recomputed, also after midnight
until the prune's next run reaches it. No record (no prune with a retention since the release
that brought the record) means the days before `now - RETENTION_SEARCH_HISTORY_DAYS`'s next day
are only filled, as an earlier release's prune may have deleted rows of them. Only days with
history rows are visited (from the recorded day on, also days with rollup rows, which a
recompute may remove), each found by one index probe: a stray row from 1900 costs one day, not
every day since.

State (in the lease row): `watermark`, the start of the last complete run, and `nextDay`, where
a run that ran out of time stopped. Rows inserted later with an older `searchedAt` (a legacy
import) are only picked up by a full run: run one after such an import.

Once every day is recomputed, the materialized reports are refreshed CONCURRENTLY, one per
batch (`shared/repositories/reports.py`). A refresh recomputes its whole view, so it may take
longer than a batch: it gets what is left of the invocation less CRON_TIME_MARGIN_MS as its
statement timeout, so it never outlives the invocation. Each outcome is saved in
`state.reports` at once: `refreshedAt` (this run's time) on success; `failedAt` and the error's
class on failure, which keeps the report's last contents and does not fail the run (the next
run tries again). A run that fails before refreshing (a day's statement refused) records that
failure for every report, then fails: the runner keeps no state of a failed run, so nothing
else would say the reports went unrefreshed.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from functools import partial

from sqlalchemy.exc import DBAPIError

from shared import db
from shared.cron import prune
from shared.cron.runner import Job, Run
from shared.repositories import reports, search_rollups
from shared.telemetry import log_event

LOOKBACK = timedelta(hours=1)
PRUNE_RECORD = search_rollups.PruneRecord(prune.JOB.name, prune.PRUNED_THROUGH)
REFRESH_LOCK_TIMEOUT_MS = 5_000  # a report whose lock is held longer is tried again next run


def first_day_to_recompute(run: Run) -> date | None:
    """Where this run starts; None when there is no history at all."""
    oldest = db.read(search_rollups.first_day)
    if oldest is None:
        return None
    if run.flag("full"):
        start = oldest
    elif "nextDay" in run.state:
        start = date.fromisoformat(run.state["nextDay"])
    elif "watermark" in run.state:
        start = (datetime.fromisoformat(run.state["watermark"]) - LOOKBACK).date()
    else:
        start = oldest
    return max(start, oldest)


def unrecorded_floor(run: Run) -> date:
    """Without the prune's record, the first day it cannot have started on: the day after its
    cutoff's at this run's time (date.min with `RETENTION_SEARCH_HISTORY_DAYS=0`)."""
    days = run.settings.retention_search_history_days
    if days <= 0:
        return date.min
    return (run.now - timedelta(days=days)).date() + timedelta(days=1)


def prune_floor(run: Run) -> date:
    """The first day after the last one the prune may have deleted history of, as it recorded
    it (else `unrecorded_floor`). Read once per run, it only steers the walk: the days before
    it that have no rows are skipped, as filling them would add nothing. Each day's statement
    reads the record again, to decide whether it may recompute the day."""
    through = db.read(partial(search_rollups.pruned_through, record=PRUNE_RECORD))
    return unrecorded_floor(run) if through is None else through + timedelta(days=1)


def next_day_with_rows(since: date, floor: date) -> date | None:
    """The first day from `since` whose statement may change something: before `floor` (only
    filled) a day with history rows, from it on (recomputed) one with history or rollup rows.
    Each probe is one statement, so a stray row from 1900 costs one day, not every day since.
    On the primary: a replica's lag could hide a day's only rows, and the watermark would move
    past the day."""
    if since < floor:
        found = db.run(partial(search_rollups.first_day, since=since, before=floor))
        if found is not None:
            return found
        since = floor
    return db.run(partial(search_rollups.first_day_with_rows, since=since))


def rollup(run: Run) -> None:
    try:
        every_day_done = recompute_days(run)
    except DBAPIError as error:
        # The run fails (the next one tries again) and refreshes nothing: record that as each
        # report's failed refresh, where the trends route reads it, not only as a growing age.
        for report in reports.REPORTS:
            record_failure(run, report, type(error.orig).__name__)
        run.save_state()
        raise
    if every_day_done:
        refresh_reports(run)


def recompute_days(run: Run) -> bool:
    """Recompute the days that may have changed; False when time ran out first."""
    today = run.now.date()
    floor = prune_floor(run)
    start = first_day_to_recompute(run)
    day = None if start is None else next_day_with_rows(start, floor)
    days = 0
    while day is not None and day <= today:
        if not run.has_time():
            run.state["nextDay"] = day.isoformat()
            run.extra["daysRecomputed"] = days
            return False
        with run.batch():
            result = db.run(
                partial(
                    search_rollups.rollup_day,
                    day=day,
                    now=run.now,
                    record=PRUNE_RECORD,
                    unrecorded_floor=unrecorded_floor(run),
                )
            )
        run.processed += result.changed + result.removed
        days += 1
        day = next_day_with_rows(day + timedelta(days=1), floor)
    run.state.pop("nextDay", None)
    run.state["watermark"] = run.now.isoformat()
    run.extra["daysRecomputed"] = days
    return True


def refresh_reports(run: Run) -> None:
    """Refresh each report while time allows; a failure is recorded, never raised."""
    refreshed, failed = [], []
    for report in reports.REPORTS:
        left_ms = run.time_left_ms()
        if left_ms <= 0:
            break
        try:
            with run.batch():
                db.transaction(
                    partial(
                        reports.refresh, report=report, lock_timeout_ms=REFRESH_LOCK_TIMEOUT_MS
                    ),
                    statement_timeout_ms=max(1, int(left_ms)),  # 0 would mean no limit
                )
        except DBAPIError as error:
            record_failure(run, report, type(error.orig).__name__)
            failed.append(report)
        else:
            run.state.setdefault("reports", {})[report] = {"refreshedAt": run.now.isoformat()}
            refreshed.append(report)
        run.save_state()
    run.extra["reportsRefreshed"] = refreshed
    if failed:
        run.extra["reportsFailed"] = failed


def record_failure(run: Run, report: str, reason: str) -> None:
    """Keep the report's last `refreshedAt` and note this run's failure (logged)."""
    outcomes: dict[str, dict[str, str]] = run.state.setdefault("reports", {})
    outcomes[report] = {
        **outcomes.get(report, {}),
        "failedAt": run.now.isoformat(),
        "error": reason,
    }
    log_event("report_refresh_failed", level=logging.WARNING, report=report, error=reason)


JOB = Job(reports.REFRESHED_BY, rollup)
