"""Data exports: asking for one, the cron claiming and finishing it, expiry.

Every change is one statement. Asking is an `INSERT … ON CONFLICT` on the partial unique index
(one open export per user), so a double click or two racing requests get the same export. The
cron claims with `FOR UPDATE SKIP LOCKED` and finishes only a row still `running` under its own
claim: an erasure that removed the row meanwhile (ON DELETE CASCADE) is noticed, and the job
deletes the object it just stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from shared.db import Conn, violated_constraint
from shared.errors import UserNotFoundError
from shared.ids import new_cuid
from shared.models.data_exports import DataExport
from shared.telemetry import database_operation

_USER_FOREIGN_KEY = "data_exports_userId_fkey"


@dataclass(frozen=True, slots=True)
class Requested:
    export: DataExport
    created: bool  # False: the user's open export was returned instead


@database_operation("requestDataExport")
def request(conn: Conn, user_id: str, *, now: datetime) -> Requested:
    """A new pending export for the user, or their open one (one statement). A user erased
    meanwhile (the foreign key finds no row) raises `UserNotFoundError`; nothing is written."""
    table = DataExport.__table__
    statement = (
        insert(DataExport)
        .values(
            id=new_cuid(),
            user_id=user_id,
            status="pending",
            attempts=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_update(
            index_elements=[table.c.userId],
            # A literal: a bound parameter could not match the index's predicate once the
            # statement is prepared (a generic plan knows no values).
            index_where=text("status IN ('pending', 'running')"),
            set_={"userId": table.c.userId},  # no change: only to return the open row
        )
        .returning(DataExport, text("(xmax = 0) AS created"))
    )
    try:
        row = conn.session.execute(statement).one()
    except IntegrityError as error:
        if violated_constraint(error) == _USER_FOREIGN_KEY:
            raise UserNotFoundError(user_id) from None
        raise
    return Requested(row[0], bool(row[1]))


@database_operation("getDataExport")
def get(conn: Conn, user_id: str, export_id: str, *, now: datetime) -> DataExport | None:
    """The user's export `export_id` unless it has expired; another user's is None too."""
    return conn.session.scalars(
        select(DataExport).where(
            DataExport.id == export_id,
            DataExport.user_id == user_id,
            or_(DataExport.expires_at.is_(None), DataExport.expires_at > now),
        )
    ).one_or_none()


@dataclass(frozen=True, slots=True)
class Claimed:
    export: DataExport
    # The primary's WAL position once the claim saw the request committed: everything its user
    # wrote before asking is at or below it, so the build reads where it is replayed.
    position: int


@database_operation("claimDataExport")
def claim(conn: Conn, *, now: datetime, stale_after: timedelta) -> Claimed | None:
    """The pending export tried least, oldest first (or one whose runner died: running since
    before `now - stale_after`), marked running by this caller; None when there is none. Fewest
    attempts first: an export that keeps failing goes behind fresh ones instead of being taken,
    failing and ending every run until it is marked failed."""
    oldest = (
        select(DataExport.id)
        .where(
            or_(
                DataExport.status == "pending",
                (DataExport.status == "running") & (DataExport.started_at < now - stale_after),
            )
        )
        .order_by(DataExport.attempts, DataExport.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    row = conn.session.execute(
        update(DataExport)
        .where(DataExport.id == oldest)
        .values(status="running", started_at=now, attempts=DataExport.attempts + 1, updated_at=now)
        .returning(DataExport, text("pg_current_wal_insert_lsn() - '0/0'::pg_lsn")),
        execution_options={"synchronize_session": False},
    ).one_or_none()
    return None if row is None else Claimed(row[0], int(row[1]))


@database_operation("finishDataExport")
def finish(
    conn: Conn,
    export_id: str,
    *,
    started_at: datetime,
    object_key: str,
    raw_bytes: int,
    gzip_bytes: int,
    now: datetime,
    ttl: timedelta,
) -> bool:
    """Mark the claimed export ready; False when it is no longer this claim's (erased, or
    claimed again after being taken for dead): the caller then deletes what it stored."""
    done = conn.session.execute(
        update(DataExport)
        .where(*_this_claim(export_id, started_at))
        .values(
            status="ready",
            object_key=object_key,
            bytes=raw_bytes,
            gzip_bytes=gzip_bytes,
            finished_at=now,
            expires_at=now + ttl,
            error=None,
            updated_at=now,
        )
        .returning(DataExport.id),
        execution_options={"synchronize_session": False},
    ).first()
    return done is not None


@database_operation("retryDataExport")
def retry(conn: Conn, export_id: str, *, started_at: datetime, error: str, now: datetime) -> None:
    """Give the claimed export back as pending with the attempt's error, so the next run takes
    it again; nothing when it is no longer this claim's."""
    conn.session.execute(
        update(DataExport)
        .where(*_this_claim(export_id, started_at))
        .values(status="pending", error=error, updated_at=now),
        execution_options={"synchronize_session": False},
    )


@database_operation("failDataExport")
def fail(
    conn: Conn,
    export_id: str,
    *,
    started_at: datetime,
    error: str,
    now: datetime,
    ttl: timedelta,
) -> None:
    """Mark the claimed export failed (kept, like a ready one, until it expires); nothing when
    it is no longer this claim's."""
    conn.session.execute(
        update(DataExport)
        .where(*_this_claim(export_id, started_at))
        .values(
            status="failed", error=error, finished_at=now, expires_at=now + ttl, updated_at=now
        ),
        execution_options={"synchronize_session": False},
    )


def _this_claim(export_id: str, started_at: datetime) -> tuple[ColumnElement[bool], ...]:
    """The export while it is still the claim that started at `started_at`: a run that lost
    its claim (stale, taken again) changes nothing."""
    return (
        DataExport.id == export_id,
        DataExport.status == "running",
        DataExport.started_at == started_at,
    )


@database_operation("expireDataExports")
def expire(conn: Conn, *, now: datetime) -> int:
    """Delete every export past its `expiresAt`; the number deleted."""
    result = conn.session.execute(
        delete(DataExport).where(DataExport.expires_at <= now),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0) or 0)


@database_operation("liveDataExportKeys")
def live_keys(conn: Conn) -> set[str]:
    """The object keys of every ready export: any other object under the prefix is garbage."""
    keys = conn.session.scalars(select(DataExport.object_key).where(DataExport.status == "ready"))
    return {key for key in keys if key is not None}
