"""Reservation reconciliation (every 5 minutes): give back keywords whose search never finished.

`POST /api/keywords` reserves a search's keywords with a `keyword_reservations` row that expires
after KEYWORD_RESERVATION_TTL_S (5 minutes, far beyond the function's 20 s limit). Recording the
search or a provider failure removes the row; only a function killed in between (its time limit,
an out-of-memory kill, a crash) leaves it. Each run gives back every reservation past its
expiry, in batches, each batch one statement (`shared.repositories.reservations`). A killed
search's keywords are therefore back within TTL + 5 minutes.
"""

from __future__ import annotations

from shared import db
from shared.cron.runner import Job, Run
from shared.repositories import reservations


def reconcile_reservations(run: Run) -> None:
    size = run.settings.cron_batch_size
    given_back = 0
    while run.has_time():
        with run.batch():
            count, keywords = db.run(
                lambda s: reservations.release_expired(s, now=run.now, limit=size)
            )
        run.processed += count
        given_back += keywords
        if count < size:
            break
    run.extra["keywordsGivenBack"] = given_back


JOB = Job("reconcile_reservations", reconcile_reservations)
