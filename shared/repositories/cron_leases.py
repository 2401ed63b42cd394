"""Cron leases: at most one run of a job at a time, across containers and platforms.

A lease is a row, taken with one `INSERT … ON CONFLICT DO UPDATE … WHERE "expiresAt" <= now`
statement and given back by the holder's token. Not an advisory lock: through Neon's pooler
(PgBouncer, transaction mode) a session lock is released, or worse, handed to another client,
as soon as a batch's transaction ends; `pg_try_advisory_xact_lock` only covers one batch.

All times are the database's clock (`clock_timestamp()` in UTC), so containers with skewed
clocks agree on when a lease expires. The row also keeps the job's resume state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import Conn
from shared.models import UTCDateTime
from shared.telemetry import database_operation

_NOW = "timezone('UTC', clock_timestamp())"

_ACQUIRE = text(
    f"""
    INSERT INTO cron_leases AS lease (job, holder, "acquiredAt", "expiresAt", "updatedAt")
    VALUES (:job, :holder, {_NOW}, {_NOW} + make_interval(secs => :ttl), {_NOW})
    ON CONFLICT (job) DO UPDATE
        SET holder = EXCLUDED.holder,
            "acquiredAt" = EXCLUDED."acquiredAt",
            "expiresAt" = EXCLUDED."expiresAt",
            "updatedAt" = EXCLUDED."updatedAt"
        -- Released (no holder), or expired. A release's expiresAt, rounded to TIMESTAMP(3), can
        -- lie half a millisecond ahead: the holder, not the time, says it was given back.
        WHERE lease.holder IS NULL OR lease."expiresAt" <= EXCLUDED."acquiredAt"
    RETURNING "expiresAt", "lastCompletedAt", state
    """
).columns(expiresAt=UTCDateTime(), lastCompletedAt=UTCDateTime(), state=JSONB)

_SAVE = text(
    f"""
    UPDATE cron_leases SET state = :state, "updatedAt" = {_NOW}
    WHERE job = :job AND holder = :holder AND "expiresAt" > {_NOW}
    RETURNING job
    """
).bindparams(bindparam("state", type_=JSONB))

_RELEASE = text(
    f"""
    UPDATE cron_leases
    SET holder = NULL,
        "expiresAt" = {_NOW},
        state = CASE WHEN :keep_state THEN state ELSE :state END,
        "lastCompletedAt" = CASE WHEN :completed THEN {_NOW} ELSE "lastCompletedAt" END,
        "updatedAt" = {_NOW}
    WHERE job = :job AND holder = :holder
    RETURNING job
    """
).bindparams(bindparam("state", type_=JSONB))


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: valid until `expires_at` (database clock) unless given back earlier."""

    job: str
    holder: str
    expires_at: datetime
    last_completed_at: datetime | None
    state: dict[str, Any]


@database_operation("acquireCronLease")
def acquire(conn: Conn, job: str, holder: str, *, ttl_seconds: float) -> Lease | None:
    """Take the job's lease for `ttl_seconds` unless another holder's lease is still live.

    One statement, so two runs racing for a free or expired lease cannot both win: the loser's
    INSERT waits on the winner's row and then fails the WHERE. None when the lease is held.
    """
    params = {"job": job, "holder": holder, "ttl": float(ttl_seconds)}
    row = conn.session.execute(_ACQUIRE, params).one_or_none()
    if row is None:
        return None
    return Lease(job, holder, expires_at=row[0], last_completed_at=row[1], state=dict(row[2] or {}))


@database_operation("saveCronState")
def save_state(conn: Conn, job: str, holder: str, state: dict[str, Any]) -> bool:
    """Store the job's resume state while `holder` still holds a live lease (False if not)."""
    result = conn.session.execute(_SAVE, {"job": job, "holder": holder, "state": state})
    return result.first() is not None


@database_operation("releaseCronLease")
def release(
    conn: Conn,
    job: str,
    holder: str,
    *,
    state: dict[str, Any] | None,
    completed: bool,
) -> bool:
    """Give the lease back (and store `state`, unless None); False when it was no longer ours.

    Fenced by the holder token: a run that outlived its lease cannot clear, or overwrite the
    state of, the run that took the lease over.
    """
    result = conn.session.execute(
        _RELEASE,
        {
            "job": job,
            "holder": holder,
            "state": state,
            "keep_state": state is None,
            "completed": completed,
        },
    )
    return result.first() is not None
