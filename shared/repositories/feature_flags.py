"""Feature flags: read all at once (they are few), written by admins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.ids import new_cuid
from shared.models import FeatureFlag
from shared.telemetry import database_operation


@dataclass(frozen=True, slots=True)
class FlagValues:
    enabled: bool = False
    rollout_percent: int = 0
    allowed_users: tuple[str, ...] = ()
    description: str | None = None


@database_operation("listFeatureFlags")
def list_all(session: Session) -> list[FeatureFlag]:
    return list(session.scalars(select(FeatureFlag).order_by(FeatureFlag.key)))


@database_operation("getFeatureFlag")
def get_by_key(session: Session, key: str) -> FeatureFlag | None:
    return session.scalars(select(FeatureFlag).where(FeatureFlag.key == key)).one_or_none()


@database_operation("upsertFeatureFlag")
def upsert(
    session: Session,
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
    flag: FeatureFlag = session.scalars(upsert.returning(FeatureFlag)).one()
    return flag


@database_operation("deleteFeatureFlag")
def delete_flag(session: Session, key: str) -> bool:
    result = session.execute(
        delete(FeatureFlag).where(FeatureFlag.key == key).returning(FeatureFlag.id),
        execution_options={"synchronize_session": False},
    )
    return result.first() is not None
