"""Reservation reconciliation (every 5 minutes): give back keywords whose search never finished.

`POST /api/keywords` reserves a search's keywords with a `keyword_reservations` row that expires
after KEYWORD_RESERVATION_TTL_S (5 minutes, far beyond the function's 20 s limit). Recording the
search or a provider failure removes the row; only a function killed in between (its time limit,
an out-of-memory kill, a crash) leaves it. Each run gives back every reservation past its
expiry, in batches, each batch one statement (`shared.repositories.reservations`), to the user,
or to the organization whose pooled quota a team search reserved. A killed
search's keywords are therefore back within TTL + 5 minutes. During the Redis migration
(STORAGE_MODE dual or fallback) the original app's usage counters get a personal give-back
too, as an owed delta applied by INCRBY (`shared.legacy.bridge`), never by copying our count over
theirs (teams have no legacy counters).
"""

from __future__ import annotations

from datetime import datetime

from shared import db
from shared.cron.runner import Job, Run
from shared.db import Conn
from shared.repositories import reservations


def reconcile_reservations(run: Run) -> None:
    size = run.settings.cron_batch_size
    legacy = run.settings.storage_mode != "postgres"
    given_back = 0
    while run.has_time():
        with run.batch():
            released = db.run(lambda conn: _give_back(conn, run.now, size, legacy=legacy))
        if legacy:
            _mirror({user_id for user_id, _, _ in released.given_back})
        run.processed += released.reservations
        given_back += released.keywords
        if released.reservations < size:
            break
    run.extra["keywordsGivenBack"] = given_back


def _give_back(conn: Conn, now: datetime, size: int, *, legacy: bool) -> reservations.Released:
    """One batch. In dual/fallback storage modes the legacy Redis counters, which the
    TypeScript app increments too, owe each give-back as a negative delta, recorded in the
    same transaction (never copied over: `shared.storage.count_legacy_usage`)."""
    released = reservations.release_expired(conn, now=now, limit=size)
    if legacy:
        from shared import storage  # only the migration's modes need the switch here

        for user_id, keywords, reserved_at in released.given_back:
            storage.count_legacy_usage(conn, user_id, -keywords, reserved_at)
    return released


def _mirror(user_ids: set[str]) -> None:
    """After the batch committed: apply the owed deltas (INCRBY, once each) and let Postgres
    learn what the TypeScript app counted meanwhile. What Redis refuses stays owed for the
    repair job; never raises for it."""
    from shared import storage

    for user_id in sorted(user_ids):
        storage.mirror_usage(user_id)


JOB = Job("reconcile_reservations", reconcile_reservations)
