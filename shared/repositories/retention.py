"""Retention deletes of the tables not partitioned by time: a bounded batch per statement.

`DELETE … WHERE id IN (SELECT id … WHERE <time> < cutoff LIMIT n)`: each statement locks at
most n rows for a moment and commits on its own, so writers are never blocked for long and a
run can stop between any two batches. Every table here has an index led by its time column.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, select

from shared.db import Conn
from shared.models.webhook_events import WebhookEvent
from shared.telemetry import database_operation


@dataclass(frozen=True)
class Target:
    """A table under retention: its model, the column ages are measured on, and a filter."""

    table: str
    model: Any
    age_column: Any
    only: ColumnElement[bool] | None = None


# The partitioned logs (api_usage, search_history, system_metrics) go by whole partitions
# instead (`shared.repositories.partitions`).
TARGETS: dict[str, Target] = {
    # Processed events only: an unprocessed one is still owed a retry (or a look by a human).
    "webhook_events": Target(
        "webhook_events", WebhookEvent, WebhookEvent.created_at, WebhookEvent.processed.is_(True)
    ),
}


@database_operation("pruneBatch")
def delete_batch(conn: Conn, target: Target, *, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` rows of `target` older than `cutoff`; returns how many."""
    conditions = [target.age_column < cutoff]
    if target.only is not None:
        conditions.append(target.only)
    ids = select(target.model.id).where(*conditions).limit(limit)
    result = conn.session.execute(
        delete(target.model).where(target.model.id.in_(ids.scalar_subquery()), *conditions),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
