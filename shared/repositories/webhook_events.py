"""Webhook events: an idempotency ledger in Postgres, claimed atomically by event id.

`claim` runs in the same transaction as the event's effects: a concurrent delivery of the same
event waits on the row until that transaction ends, then sees it processed. When processing
fails the transaction (claim included) rolls back and `mark_failed` records the attempt.
`claim` and `mark_processed`, on every Stripe delivery, are statements built once
(`shared.db.HotStatement`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import (
    ColumnElement,
    Text,
    bindparam,
    func,
    literal_column,
    null,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert

from shared.clock import utcnow
from shared.db import Conn, HotStatement, execute_hot
from shared.models import UTCDateTime
from shared.models.webhook_events import WebhookEvent
from shared.repositories.rows import db_time
from shared.telemetry import database_operation


@dataclass(frozen=True, slots=True)
class Claim:
    event_id: str
    attempts: int
    first_delivery: bool


def _first_attempt(
    event_id: str,
    event_type: str,
    provider: str,
    payload: dict[str, Any] | None,
    now: datetime,
    error: str | None = None,
) -> Any:
    """The row a first delivery inserts; both upserts below start from it."""
    return insert(WebhookEvent).values(
        id=event_id,
        type=event_type,
        provider=provider,
        payload=payload,
        attempts=1,
        last_attempt_at=now,
        created_at=now,
        error=error,
    )


def _another_attempt(
    now: datetime | ColumnElement[datetime], payload: ColumnElement[Any]
) -> dict[Any, Any]:
    """The update of an unprocessed row a delivery meets. A row without a payload (SQL or JSON
    null: another writer of the shared database, such as the Prisma app, recorded the event
    first) takes the delivery's `payload`, else the retry cron could never run it again; a
    stored one is kept."""
    return {
        WebhookEvent.attempts: WebhookEvent.attempts + 1,
        WebhookEvent.last_attempt_at: now,
        WebhookEvent.payload: func.coalesce(
            func.nullif(WebhookEvent.payload, literal_column("'null'::jsonb")),
            payload,
            WebhookEvent.payload,
        ),
    }


@database_operation("claimWebhookEvent")
def claim(
    conn: Conn,
    event_id: str,
    event_type: str,
    payload: dict[str, Any] | None,
    *,
    provider: str = "stripe",
    now: datetime | None = None,
) -> Claim | None:
    """Claim an unprocessed event (new or retried); None when it was already processed."""
    params = {
        "p_id": event_id,
        "p_type": event_type,
        "p_provider": provider,
        "p_payload": None if payload is None else Jsonb(payload),
        "p_now": db_time(now or utcnow()),
    }
    row = execute_hot(conn, _CLAIM, params).fetchone()
    if row is None:
        return None
    return Claim(event_id=event_id, attempts=row[0], first_delivery=bool(row[1]))


def _claim_statement() -> Any:
    """`claim`'s upsert, built once (binds p_id, p_type, p_provider, p_payload, p_now)."""
    now = bindparam("p_now", type_=UTCDateTime())
    first = insert(WebhookEvent).values(
        id=bindparam("p_id", type_=Text()),
        type=bindparam("p_type", type_=Text()),
        provider=bindparam("p_provider", type_=Text()),
        payload=bindparam("p_payload", type_=JSONB()),
        attempts=1,
        last_attempt_at=now,
        created_at=now,
    )
    upsert: Any = first.on_conflict_do_update(
        index_elements=[WebhookEvent.id],
        set_=_another_attempt(now, first.excluded.payload),
        where=WebhookEvent.processed.is_(False),
    ).returning(WebhookEvent.attempts, literal_column("xmax = 0"))
    return upsert


@database_operation("getWebhookEvent")
def get(conn: Conn, event_id: str) -> WebhookEvent | None:
    """One recorded event (the retry cron re-runs it from its stored payload)."""
    return conn.session.get(WebhookEvent, event_id)


@database_operation("markWebhookProcessed")
def mark_processed(
    conn: Conn, event_id: str, *, now: datetime | None = None, forget_payload: bool = False
) -> None:
    """`forget_payload`: the event is about an erased person; keep only id, type and times."""
    params = {"p_id": event_id, "p_now": db_time(now or utcnow())}
    execute_hot(conn, _FORGET if forget_payload else _PROCESSED, params)


def _processed_statement(*, forget_payload: bool) -> Any:
    values: dict[Any, Any] = {
        WebhookEvent.processed: True,
        WebhookEvent.processed_at: bindparam("p_now", type_=UTCDateTime()),
        WebhookEvent.error: None,
    }
    if forget_payload:
        values[WebhookEvent.payload] = null()  # SQL NULL: None would store JSON null
    return (
        update(WebhookEvent)
        .where(WebhookEvent.id == bindparam("p_id", type_=Text()))
        .values(values)
    )


@database_operation("markWebhookFailed")
def mark_failed(
    conn: Conn,
    event_id: str,
    event_type: str,
    payload: dict[str, Any] | None,
    error: str,
    *,
    provider: str = "stripe",
    now: datetime | None = None,
) -> None:
    """Record a failed attempt (the claim rolled back with the work, so this upserts)."""
    now = now or utcnow()
    statement = _first_attempt(event_id, event_type, provider, payload, now, error[:1000])
    conn.session.execute(
        statement.on_conflict_do_update(
            index_elements=[WebhookEvent.id],
            set_={
                **_another_attempt(now, statement.excluded.payload),
                WebhookEvent.error: statement.excluded.error,
            },
            where=WebhookEvent.processed.is_(False),
        )
    )


@database_operation("listRetryableWebhooks")
def list_retryable(
    conn: Conn,
    *,
    max_attempts: int,
    base_delay: timedelta,
    now: datetime | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 100,
) -> list[WebhookEvent]:
    """Unprocessed Stripe events under `max_attempts` whose backoff (base * 2^(attempts-1)) has
    passed, oldest first; `after` is the (createdAt, id) of the last one a run has seen, so a
    run pages through them and an event that fails again never hides the ones behind it."""
    backoff = func.make_interval(
        0, 0, 0, 0, 0, 0, base_delay.total_seconds() * func.power(2, WebhookEvent.attempts - 1)
    )
    statement = (
        select(WebhookEvent)
        .where(
            WebhookEvent.processed.is_(False),
            WebhookEvent.provider == "stripe",
            WebhookEvent.attempts < max_attempts,
            WebhookEvent.last_attempt_at + backoff <= (now or utcnow()),
        )
        .order_by(WebhookEvent.created_at, WebhookEvent.id)
        .limit(limit)
    )
    if after is not None:
        statement = statement.where(tuple_(WebhookEvent.created_at, WebhookEvent.id) > after)
    return list(conn.session.scalars(statement))


_CLAIM = HotStatement(_claim_statement)
_PROCESSED = HotStatement(partial(_processed_statement, forget_payload=False))
_FORGET = HotStatement(partial(_processed_statement, forget_payload=True))
