"""The dual-write outbox: one row per legacy Redis key that must be made to match Postgres.

A writer marks the key in the same transaction as its data change, then makes Redis match and
clears the mark (`shared.storage`). The mark survives whatever goes wrong in between (Redis
down, a crash), so no write is ever lost silently; the repair job replays what is left.
Replays are idempotent because they copy Postgres's *current* state, never a delta.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.models import LegacyRepair, SavedSearch
from shared.telemetry import database_operation

Kind = Literal["user", "saved_search", "usage", "erasure"]
_ERROR_MAX = 500


@database_operation("markLegacyRepair")
def mark(
    session: Session, key: str, kind: Kind, user_id: str, *, now: datetime | None = None
) -> None:
    """Record that `key` must be made to match Postgres (again). One statement."""
    now = now or utcnow()
    statement = insert(LegacyRepair).values(
        key=key, kind=kind, user_id=user_id, created_at=now, updated_at=now
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[LegacyRepair.key],
            set_={LegacyRepair.kind: kind, LegacyRepair.updated_at: now},
        )
    )


@database_operation("lockLegacyRepair")
def lock(session: Session, key: str, *, skip_locked: bool = False) -> LegacyRepair | None:
    """The mark, row-locked until the transaction ends; None when there is none (or, with
    `skip_locked`, when another transaction holds it).

    Holding the lock while Redis is written serialises writers of one key: a newer write
    commits its mark only after this transaction ends, and then syncs its own state.
    """
    statement = (
        select(LegacyRepair).where(LegacyRepair.key == key).with_for_update(skip_locked=skip_locked)
    )
    return session.scalars(statement).one_or_none()


@database_operation("clearLegacyRepair")
def clear(session: Session, key: str) -> None:
    session.execute(delete(LegacyRepair).where(LegacyRepair.key == key))


@database_operation("failLegacyRepair")
def record_failure(session: Session, key: str, error: str, *, now: datetime | None = None) -> None:
    """Keep the mark, counting the attempt and saying why (no values, no secrets)."""
    session.execute(
        update(LegacyRepair)
        .where(LegacyRepair.key == key)
        .values(
            attempts=LegacyRepair.attempts + 1,
            error=error[:_ERROR_MAX],
            updated_at=now or utcnow(),
        )
    )


@database_operation("listLegacyRepairs")
def pending(session: Session, *, limit: int = 100) -> list[str]:
    """Keys still to repair, least recently touched first (a failing key does not starve
    the others: each failure moves it to the back)."""
    statement = (
        select(LegacyRepair.key).order_by(LegacyRepair.updated_at, LegacyRepair.key).limit(limit)
    )
    return list(session.scalars(statement))


@database_operation("countLegacyRepairs")
def count(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(LegacyRepair)).scalar_one())


@database_operation("findSavedSearchState")
def saved_search_state(session: Session, user_id: str, search_id: str) -> SavedSearch | None:
    """The search as committed, for copying to Redis (unlike `saved_searches.get`, a plain
    read: copying must not move `lastAccessedAt`)."""
    statement = select(SavedSearch).where(
        SavedSearch.id == search_id, SavedSearch.user_id == user_id
    )
    return session.scalars(statement).one_or_none()
