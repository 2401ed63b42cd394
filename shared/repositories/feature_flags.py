"""Feature flags: read all at once (they are few), written by admins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict, Unpack

from sqlalchemy import delete, literal_column, select, true, update
from sqlalchemy.dialects.postgresql import insert

from shared.clock import utcnow
from shared.db import SNAPSHOT_QUIET, Conn
from shared.ids import new_cuid
from shared.models.feature_flags import FeatureFlag
from shared.telemetry import database_operation


@dataclass(frozen=True, slots=True)
class FlagValues:
    enabled: bool = False
    rollout_percent: int = 0
    allowed_users: tuple[str, ...] = ()
    description: str | None = None


class FlagChanges(TypedDict, total=False):
    """Columns a partial update may set."""

    enabled: bool
    rollout_percent: int
    allowed_users: list[str]
    description: str | None


@database_operation("listFeatureFlags")
def list_all(conn: Conn) -> list[FeatureFlag]:
    return list(conn.session.scalars(select(FeatureFlag).order_by(FeatureFlag.key)))


@database_operation("listFeatureFlagsQuiet")
def list_all_quiet(conn: Conn) -> tuple[list[FeatureFlag], bool]:
    """All flags, and whether the snapshot they were read in had no transaction in flight
    (`db.SNAPSHOT_QUIET`): one statement, so both are about the same snapshot."""
    quiet = select(literal_column(SNAPSHOT_QUIET).label("quiet")).subquery()
    statement = (
        select(quiet.c.quiet, FeatureFlag)
        .select_from(quiet)
        .outerjoin(FeatureFlag, true())
        .order_by(FeatureFlag.key)
    )
    rows = conn.session.execute(statement).all()
    return [flag for _, flag in rows if flag is not None], bool(rows[0].quiet)


@database_operation("listFeatureFlagPage")
def list_page(conn: Conn, *, after: str | None, limit: int) -> list[FeatureFlag]:
    """Up to `limit` flags after the key `after` (keyset, by key)."""
    statement = select(FeatureFlag).order_by(FeatureFlag.key).limit(limit)
    if after is not None:
        statement = statement.where(FeatureFlag.key > after)
    return list(conn.session.scalars(statement))


@database_operation("getFeatureFlag")
def get_by_key(conn: Conn, key: str) -> FeatureFlag | None:
    return conn.session.scalars(select(FeatureFlag).where(FeatureFlag.key == key)).one_or_none()


@database_operation("upsertFeatureFlag")
def upsert(
    conn: Conn,
    key: str,
    values: FlagValues,
    *,
    created_by: str | None = None,
    now: datetime | None = None,
) -> FeatureFlag:
    """Create or replace the flag `key`; `createdBy` and `createdAt` keep their first values."""
    now = now or utcnow()
    fields: dict[Any, Any] = {
        FeatureFlag.enabled: values.enabled,
        FeatureFlag.rollout_percent: values.rollout_percent,
        FeatureFlag.allowed_users: list(values.allowed_users),
        FeatureFlag.description: values.description,
        FeatureFlag.updated_at: now,
    }
    first_values = {
        FeatureFlag.id: new_cuid(),
        FeatureFlag.key: key,
        FeatureFlag.created_at: now,
        FeatureFlag.created_by: created_by,
    }
    statement = insert(FeatureFlag).values({**first_values, **fields})
    upsert = statement.on_conflict_do_update(index_elements=[FeatureFlag.key], set_=fields)
    flag: FeatureFlag = conn.session.scalars(upsert.returning(FeatureFlag)).one()
    return flag


@database_operation("deleteFeatureFlag")
def delete_flag(conn: Conn, key: str) -> bool:
    result = conn.session.execute(
        delete(FeatureFlag).where(FeatureFlag.key == key).returning(FeatureFlag.id),
        execution_options={"synchronize_session": False},
    )
    return result.first() is not None


@database_operation("createFeatureFlag")
def create(
    conn: Conn,
    key: str,
    values: FlagValues,
    *,
    created_by: str | None = None,
    now: datetime | None = None,
) -> FeatureFlag | None:
    """Insert the flag `key`; None when the key is taken (one `ON CONFLICT DO NOTHING`)."""
    now = now or utcnow()
    statement = (
        insert(FeatureFlag)
        .values(
            id=new_cuid(),
            key=key,
            enabled=values.enabled,
            rollout_percent=values.rollout_percent,
            allowed_users=list(values.allowed_users),
            description=values.description,
            created_at=now,
            updated_at=now,
            created_by=created_by,
        )
        .on_conflict_do_nothing(index_elements=[FeatureFlag.key])
        .returning(FeatureFlag)
    )
    flag: FeatureFlag | None = conn.session.scalars(statement).one_or_none()
    return flag


@database_operation("updateFeatureFlag")
def update_flag(
    conn: Conn, key: str, *, now: datetime | None = None, **changes: Unpack[FlagChanges]
) -> FeatureFlag | None:
    """Set only the given columns (and updatedAt); None when there is no flag `key`."""
    statement = (
        update(FeatureFlag)
        .where(FeatureFlag.key == key)
        .values(**changes, updated_at=now or utcnow())
        .returning(FeatureFlag)
    )
    flag: FeatureFlag | None = conn.session.scalars(
        statement, execution_options={"synchronize_session": False}
    ).one_or_none()
    return flag
