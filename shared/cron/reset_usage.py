"""Monthly usage reset (00:05 UTC on the 1st): zero every stale `keywordSearchesThisMonth`.

The lazy reset in `shared.repositories.users` already gives every request the right counter;
this job makes the stored numbers right too (for reports, the Prisma app and the legacy Redis
mirror), in keyset batches of CRON_BATCH_SIZE users, one UPDATE each. Each row is re-checked
under its lock, so a request counting keywords at the same moment is never lost or reset twice.
A run that stops early leaves the rest stale; the next run (or the lazy reset) finishes it.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from shared import db
from shared.cron.runner import Job, Run
from shared.db import Conn
from shared.repositories import users


def reset_monthly_usage(run: Run) -> None:
    size = run.settings.cron_batch_size
    after: str | None = None
    while run.has_time():
        with run.batch():
            batch = db.run(partial(_reset_batch, after=after, size=size, now=run.now))
        run.processed += batch.reset
        if batch.last_id is None:
            return
        after = batch.last_id


def _reset_batch(conn: Conn, *, after: str | None, size: int, now: datetime) -> users.ResetBatch:
    return users.reset_stale_monthly_usage(conn, after_id=after, limit=size, now=now)


JOB = Job("reset_monthly_usage", reset_monthly_usage)
