"""The dual-write outbox: one row per legacy Redis key that must be made to match Postgres.

A writer marks the key in the same transaction as its data change, then makes Redis match and
clears the mark (`shared.legacy.bridge`). The mark survives whatever goes wrong in between (Redis
down, a crash), so no write is ever lost silently; the repair job replays what is left.
Records are replayed by copying Postgres's *current* state. Usage counters, which the original
app increments too, are never copied: each change is a delta row (`legacy_counter_deltas`)
applied once with INCRBY.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from shared.clock import utcnow
from shared.db import Conn
from shared.ids import new_uuid
from shared.models.legacy import LegacyCounterDelta, LegacyRepair
from shared.models.saved_searches import SavedSearch
from shared.models.users import User
from shared.telemetry import database_operation

Kind = Literal["user", "saved_search", "erasure"]
_ERROR_MAX = 500


@database_operation("markLegacyRepair")
def mark(conn: Conn, key: str, kind: Kind, user_id: str, *, now: datetime | None = None) -> None:
    """Record that `key` must be made to match Postgres (again). One statement."""
    now = now or utcnow()
    statement = insert(LegacyRepair).values(
        key=key, kind=kind, user_id=user_id, created_at=now, updated_at=now
    )
    conn.session.execute(
        statement.on_conflict_do_update(
            index_elements=[LegacyRepair.key],
            set_={LegacyRepair.kind: kind, LegacyRepair.updated_at: now},
        )
    )


@database_operation("lockLegacyRepair")
def lock(conn: Conn, key: str, *, skip_locked: bool = False) -> LegacyRepair | None:
    """The mark, row-locked until the transaction ends; None when there is none (or, with
    `skip_locked`, when another transaction holds it).

    Holding the lock while Redis is written serialises writers of one key: a newer write
    commits its mark only after this transaction ends, and then syncs its own state.
    """
    statement = (
        select(LegacyRepair).where(LegacyRepair.key == key).with_for_update(skip_locked=skip_locked)
    )
    return conn.session.scalars(statement).one_or_none()


@database_operation("holdLegacyOwner")
def hold_user(conn: Conn, user_id: str) -> bool:
    """Lock the user's row `FOR KEY SHARE` until the transaction ends; False when there is no
    row. Legacy work on a user takes this first, the order an erasure locks in (the user's row,
    then their counter deltas and marks), so the two never deadlock: an erasure waits for it,
    and work that waited for an erasure finds no row. It does not hold up a reservation (which
    updates the row without touching its key)."""
    # `read=True` too: `key_share` alone renders FOR NO KEY UPDATE, which held reservations up.
    statement = select(User.id).where(User.id == user_id).with_for_update(read=True, key_share=True)
    return conn.session.execute(statement).first() is not None


@database_operation("findLegacyRepair")
def owed(conn: Conn, key: str) -> bool:
    """Whether the mark `key` is still there: Redis may hold an older state of it (for an
    erasure mark, `keys.erasure`, the erased identity's keys), so nothing is read or imported
    from it until the copy is made."""
    return (
        conn.session.execute(select(LegacyRepair.key).where(LegacyRepair.key == key)).first()
        is not None
    )


@database_operation("listOwedLegacySearches")
def owed_searches(conn: Conn, user_id: str) -> set[str]:
    """The keys of the user's saved searches whose copy to Redis is still owed."""
    statement = select(LegacyRepair.key).where(
        LegacyRepair.user_id == user_id, LegacyRepair.kind == "saved_search"
    )
    return set(conn.session.scalars(statement))


@database_operation("clearLegacyRepair")
def clear(conn: Conn, key: str) -> None:
    conn.session.execute(delete(LegacyRepair).where(LegacyRepair.key == key))


@database_operation("failLegacyRepair")
def record_failure(conn: Conn, key: str, error: str, *, now: datetime | None = None) -> None:
    """Keep the mark, counting the attempt and saying why (no values, no secrets)."""
    conn.session.execute(
        update(LegacyRepair)
        .where(LegacyRepair.key == key)
        .values(
            attempts=LegacyRepair.attempts + 1,
            error=error[:_ERROR_MAX],
            updated_at=now or utcnow(),
        )
    )


@database_operation("listLegacyRepairs")
def pending(conn: Conn, *, limit: int = 100, kind: Kind | None = None) -> list[str]:
    """Keys still to repair (of `kind`, when given), least recently touched first (a failing
    key does not starve the others: each failure moves it to the back)."""
    statement = select(LegacyRepair.key)
    if kind is not None:
        statement = statement.where(LegacyRepair.kind == kind)
    statement = statement.order_by(LegacyRepair.updated_at, LegacyRepair.key).limit(limit)
    return list(conn.session.scalars(statement))


@database_operation("countLegacyRepairs")
def count(conn: Conn) -> int:
    return int(conn.session.execute(select(func.count()).select_from(LegacyRepair)).scalar_one())


@database_operation("findSavedSearchState")
def saved_search_state(conn: Conn, user_id: str, search_id: str) -> SavedSearch | None:
    """The search as committed, for copying to Redis (unlike `saved_searches.get`, a plain
    read: copying must not move `lastAccessedAt`)."""
    statement = select(SavedSearch).where(
        SavedSearch.id == search_id, SavedSearch.user_id == user_id
    )
    return conn.session.scalars(statement).one_or_none()


# --- usage increments owed to the legacy counters ---------------------------------------------


@database_operation("addLegacyCounterDelta")
def add_delta(
    conn: Conn,
    key: str,
    user_id: str,
    delta: int,
    expires_at: datetime,
    *,
    now: datetime | None = None,
) -> None:
    """Record that the Redis counter `key` owes `delta` (in the transaction that changed the
    Postgres counter). Each delta is its own row: its id makes the INCRBY happen once."""
    now = now or utcnow()
    conn.session.execute(
        insert(LegacyCounterDelta).values(
            id=new_uuid(),
            key=key,
            user_id=user_id,
            delta=delta,
            expires_at=expires_at,
            created_at=now,
            updated_at=now,
        )
    )


@database_operation("lockLegacyCounterDeltas")
def lock_deltas(conn: Conn, user_id: str) -> list[LegacyCounterDelta]:
    """The user's owed deltas, oldest first, row-locked; rows another transaction is applying
    are skipped (it applies them itself)."""
    statement = (
        select(LegacyCounterDelta)
        .where(LegacyCounterDelta.user_id == user_id)
        .order_by(LegacyCounterDelta.created_at, LegacyCounterDelta.id)
        .with_for_update(skip_locked=True)
    )
    return list(conn.session.scalars(statement))


@database_operation("clearLegacyCounterDeltas")
def clear_deltas(conn: Conn, ids: Sequence[str]) -> None:
    if ids:
        conn.session.execute(delete(LegacyCounterDelta).where(LegacyCounterDelta.id.in_(list(ids))))


@database_operation("dropLegacyCounterDeltas")
def drop_deltas(conn: Conn, user_id: str) -> None:
    """Forget what the user's counters are owed (their erasure deletes the counters)."""
    conn.session.execute(delete(LegacyCounterDelta).where(LegacyCounterDelta.user_id == user_id))


@database_operation("failLegacyCounterDeltas")
def fail_deltas(conn: Conn, ids: Sequence[str], error: str, *, now: datetime | None = None) -> None:
    """Keep the deltas, counting the attempt and saying why (no values, no secrets)."""
    if ids:
        conn.session.execute(
            update(LegacyCounterDelta)
            .where(LegacyCounterDelta.id.in_(list(ids)))
            .values(
                attempts=LegacyCounterDelta.attempts + 1,
                error=error[:_ERROR_MAX],
                updated_at=now or utcnow(),
            )
        )


@database_operation("listLegacyCounterDebtors")
def users_owing_deltas(conn: Conn, *, limit: int = 100) -> list[str]:
    """Users with owed deltas, least recently attempted first."""
    oldest = func.min(LegacyCounterDelta.updated_at)
    statement = (
        select(LegacyCounterDelta.user_id)
        .group_by(LegacyCounterDelta.user_id)
        .order_by(oldest, LegacyCounterDelta.user_id)
        .limit(limit)
    )
    return list(conn.session.scalars(statement))


@database_operation("countLegacyCounterDeltas")
def count_deltas(conn: Conn) -> int:
    statement = select(func.count()).select_from(LegacyCounterDelta)
    return int(conn.session.execute(statement).scalar_one())
