"""Personal data: everything stored about one user, exported or erased in one place (GDPR).

Both operations walk the same tables, so a table added later is handled here or visibly
nowhere. The export (`export`, one read-only snapshot) streams the user's rows whole from users,
organization_members, saved_searches (the team searches they created included),
search_history and api_usage, the ledger and metric rows that mention one of the user's
identifiers (the rows erasure scrubs), and the keys of the flags that name the user (the rest of
a flag row is configuration and names other users). Erasure (`erase`, in one transaction) per
table:
- users: deleted (the row is locked first, so a concurrent saved-search create waits and then
  finds no owner); personal saved_searches go with it (FK ON DELETE CASCADE).
- saved_searches of a team (organizationId set) that the user created stay with the team, the
  creator cleared (userId NULL) before the cascade could take them.
- organization_members: the user's rows (current and removed memberships) are deleted: a
  tombstone would keep the user id. A late Clerk membership event may bring a row back; Clerk
  stops sending them once the user is deleted there (docs/organizations.md).
- keyword_reservations held against a team's quota: given back to the organization, then
  deleted (a personal one goes with the user row; its counters go with it).
- search_history: kept for aggregate stats (a team's rows for the team) but anonymised:
  userId, ipAddress and userAgent are cleared. The FK alone would null userId and keep the IP
  and user agent (docs/original-app.md#d21).
- api_usage: deleted (no FK, so nothing cascades).
- feature_flags: the id is removed from every `allowedUsers` list.
- webhook_events, system_metrics: a payload, error or tags that mention one of the user's
  identifiers (id, Stripe customer and subscription ids exactly, email in any letter case) is
  cleared. Ledger rows stay, so
  a replayed webhook is still recognised as processed. These two are scans (in the export too):
  erasure and export are rare.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard

from psycopg.pq import TransactionStatus
from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.clock import utcnow
from shared.db import Conn, driver_connection
from shared.errors import SubscriptionLiveError
from shared.models.api_usage import ApiUsage
from shared.models.feature_flags import FeatureFlag
from shared.models.organizations import OrganizationMember
from shared.models.saved_searches import SavedSearch
from shared.models.search_history import SearchHistory
from shared.models.system_metrics import SystemMetric
from shared.models.users import User
from shared.models.webhook_events import WebhookEvent
from shared.repositories import reservations
from shared.repositories.users import is_placeholder
from shared.telemetry import database_operation

# Any string anywhere in the document equal to one of `$ids` (lax mode: `.**` walks every level).
_MENTIONS_PATH: ColumnElement[Any] = literal_column("'$.** ? (@ == $ids[*])'::jsonpath")

# Rows fetched per round trip of a table's server-side cursor: what the export holds at once.
# A saved search's `results` can be up to the request body cap (under 1 MB of JSON).
SAVED_SEARCHES_PER_FETCH = 4
ROWS_PER_FETCH = 1000


@dataclass(frozen=True, slots=True)
class PersonalData:
    """The user's rows, table by table, each table a stream to be read in this order (each
    opens its server-side cursor when its turn comes) inside the snapshot's transaction."""

    user: User | None
    memberships: Iterator[OrganizationMember]
    saved_searches: Iterator[SavedSearch]
    search_history: Iterator[SearchHistory]
    api_usage: Iterator[ApiUsage]
    webhook_events: Iterator[WebhookEvent]
    system_metrics: Iterator[SystemMetric]
    feature_flags: Iterator[str]  # keys of the flags whose allowedUsers names the user


@dataclass(frozen=True, slots=True)
class Erasure:
    """Rows touched per table (counts only: safe to log)."""

    user_deleted: bool
    memberships_deleted: int
    team_searches_kept: int  # the user's team searches, now without a creator
    team_keywords_given_back: int
    history_anonymised: int
    api_usage_deleted: int
    flags_updated: int
    webhook_events_scrubbed: int
    metrics_scrubbed: int


def _require_transaction(conn: Conn, operation: str) -> None:
    if driver_connection(conn).info.transaction_status == TransactionStatus.IDLE:
        raise RuntimeError(f"personal_data.{operation} must run inside a transaction")


def identifiers(user_id: str, owner: Any) -> list[str]:
    """The strings that identify the user in ledger payloads and metric tags: the id, and the
    email and Stripe customer and subscription ids when known (`owner`: a row with those three
    first, or None)."""
    return [user_id, *(value for value in (owner or ())[:3] if value)]


@database_operation("exportPersonalData")
def export(conn: Conn, user_id: str) -> PersonalData:
    """Every row about the user, oldest first: one query per table, one snapshot, read in
    bounded chunks through server-side cursors (`yield_per`), so memory does not grow with
    the account. Named cursors live inside the transaction, which the pooled (transaction
    mode) lane keeps on one server connection.

    Must run in a transaction (`db.read(…, snapshot=True)`, on a replica when one serves): it
    switches the transaction to REPEATABLE READ, READ ONLY (a hot standby allows both), so
    the reads see the same moment even while the user keeps searching.
    """
    _require_transaction(conn, "export")
    conn.session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    user = conn.session.scalars(select(User).where(User.id == user_id)).one_or_none()
    owner = (
        None if user is None else (user.email, user.stripe_customer_id, user.stripe_subscription_id)
    )
    ids = identifiers(user_id, owner)
    email = None if owner is None else owner[0]
    return PersonalData(
        user=user,
        memberships=_stream(
            conn,
            select(OrganizationMember)
            .where(OrganizationMember.user_id == user_id)
            .order_by(OrganizationMember.created_at, OrganizationMember.organization_id),
        ),
        saved_searches=_stream(
            conn,
            select(SavedSearch)
            .where(SavedSearch.user_id == user_id)
            .order_by(SavedSearch.created_at, SavedSearch.id),
            SAVED_SEARCHES_PER_FETCH,
        ),
        search_history=_stream(
            conn,
            select(SearchHistory)
            .where(SearchHistory.user_id == user_id)
            .order_by(SearchHistory.searched_at, SearchHistory.id),
        ),
        api_usage=_stream(
            conn,
            select(ApiUsage)
            .where(ApiUsage.user_id == user_id)
            .order_by(ApiUsage.timestamp, ApiUsage.id),
        ),
        webhook_events=_stream(
            conn,
            select(WebhookEvent)
            .where(_event_mentions(ids, email))
            .order_by(WebhookEvent.created_at, WebhookEvent.id),
        ),
        system_metrics=_stream(
            conn,
            select(SystemMetric)
            .where(_mentions(SystemMetric.tags, ids, email))
            .order_by(SystemMetric.timestamp, SystemMetric.id),
        ),
        feature_flags=_stream(
            conn,
            select(FeatureFlag.key)
            .where(FeatureFlag.allowed_users.any_() == user_id)
            .order_by(FeatureFlag.key),
        ),
    )


def _stream(conn: Conn, statement: Any, per_fetch: int = ROWS_PER_FETCH) -> Iterator[Any]:
    """The statement's rows through a server-side cursor, `per_fetch` at a time. A generator:
    the query runs when the first row is asked for. Rows read are not kept: the session's
    identity map holds its objects weakly."""
    result = conn.session.scalars(statement, execution_options={"yield_per": per_fetch})
    try:
        yield from result
    finally:
        result.close()


_ESTIMATE = text(
    """
    SELECT (SELECT coalesce(sum(octet_length(t::text)), 0) FROM saved_searches t
             WHERE "userId" = :user_id)
         + (SELECT coalesce(sum(octet_length(t::text)), 0) FROM search_history t
             WHERE "userId" = :user_id)
         + (SELECT coalesce(sum(octet_length(t::text)), 0) FROM api_usage t
             WHERE "userId" = :user_id)
    """
)


@database_operation("estimatePersonalData")
def estimated_bytes(conn: Conn, user_id: str) -> int:
    """Roughly how large the export would be (the text of the user's rows in the three tables
    that grow), measured in the database so nothing is loaded: one statement."""
    return int(conn.session.execute(_ESTIMATE, {"user_id": user_id}).scalar_one())


def _mentions(column: Any, identifiers: list[str], email: str | None) -> ColumnElement[bool]:
    """Whether a JSON value anywhere in `column` is one of `identifiers` (exactly: ids are
    case-sensitive) or the email in any letter case (emails are case-insensitive; placeholders
    are not, `_folded`), matched in the lowered JSON text. No index serves either: the ledger
    tables are scanned. The lowered text is parsed again only where it holds the lowered email
    as a JSON string (`strpos`, first in the AND): almost no row, so the scan stays one
    serialisation per row."""
    variables = bindparam(None, {"ids": identifiers}, type_=JSONB)
    exact = func.jsonb_path_exists(column, _MENTIONS_PATH, variables)
    if not _folded(email):
        return exact
    lowered_text = func.lower(cast(column, Text))
    needle = func.lower(cast(func.to_jsonb(cast(func.lower(email), Text)), Text))
    folded = func.jsonb_build_object("ids", func.jsonb_build_array(func.lower(email)))
    return or_(
        exact,
        and_(
            func.strpos(lowered_text, needle) > 0,
            func.jsonb_path_exists(cast(lowered_text, JSONB), _MENTIONS_PATH, folded),
        ),
    )


def _text_mentions(column: Any, identifiers: list[str], email: str | None) -> ColumnElement[bool]:
    exact = [func.strpos(column, identifier) > 0 for identifier in identifiers]
    folded = [func.strpos(func.lower(column), func.lower(email)) > 0] if _folded(email) else []
    return or_(*exact, *folded)


def _folded(email: str | None) -> TypeGuard[str]:
    """Whether `email` is also matched in any letter case: a real address. A placeholder
    carries its case-sensitive id (`users_email_lower_key` holds it exactly): the exact match
    is its only one."""
    return email is not None and not is_placeholder(email)


def _event_mentions(identifiers: list[str], email: str | None) -> ColumnElement[bool]:
    return or_(
        _mentions(WebhookEvent.payload, identifiers, email),
        _text_mentions(WebhookEvent.error, identifiers, email),
    )


LIVE_SUBSCRIPTION = frozenset({"active", "trialing", "past_due"})


@database_operation("erasePersonalData")
def erase(
    conn: Conn,
    user_id: str,
    *,
    refuse_live_subscription: bool = False,
    now: datetime | None = None,
    user_row: bool = True,
) -> Erasure:
    """Remove or anonymise every row about the user (see the module docstring). Idempotent.

    Must run in `transaction()`: all tables change together or none does. With
    `refuse_live_subscription`, a user whose Stripe subscription is live is refused
    (`SubscriptionLiveError`) under the same row lock a billing webhook would need, so no
    checkout can slip in between the check and the erasure.

    `user_row=False`: the caller found no user row to lock (the id erased already, or never
    created here), so this erasure locks and deletes none: one created since (the person signing
    in again meanwhile) is a new account, and locking it after the rows below would take the
    locks in the opposite order to an erasure of that account (a deadlock). The rest that names
    the id is still scrubbed.
    """
    _require_transaction(conn, "erase")
    now = now or utcnow()
    # The user's row first, organizations after it (the team keywords given back below): the
    # order a team search locks them in, so the two never deadlock. Ledger rows come after it
    # too, as a Stripe event takes them (`shared.billing._subject`): the payloads cleared below
    # include every event committed before this lock, and an event waiting for it finds no user.
    owner = None
    if user_row:
        owner = conn.session.execute(
            select(
                User.email,
                User.stripe_customer_id,
                User.stripe_subscription_id,
                User.subscription_status,
            )
            .where(User.id == user_id)
            .with_for_update()
        ).first()
    if refuse_live_subscription and owner is not None and owner[3] in LIVE_SUBSCRIPTION:
        raise SubscriptionLiveError()
    ids = identifiers(user_id, owner)
    email = None if owner is None else owner[0]
    options = {"synchronize_session": False}

    history = conn.session.execute(
        update(SearchHistory)
        .where(SearchHistory.user_id == user_id)
        .values(user_id=None, ip_address=None, user_agent=None),
        execution_options=options,
    )
    usage = conn.session.execute(
        delete(ApiUsage).where(ApiUsage.user_id == user_id), execution_options=options
    )
    given_back = reservations.release_team_holds(conn, user_id, now=now)
    team_searches = conn.session.execute(
        update(SavedSearch)
        .where(SavedSearch.user_id == user_id, SavedSearch.organization_id.is_not(None))
        .values(user_id=None),
        execution_options=options,
    )
    memberships = conn.session.execute(
        delete(OrganizationMember).where(OrganizationMember.user_id == user_id),
        execution_options=options,
    )
    flags = conn.session.execute(
        update(FeatureFlag)
        .where(FeatureFlag.allowed_users.any_() == user_id)
        .values(
            allowed_users=func.array_remove(FeatureFlag.allowed_users, user_id), updated_at=now
        ),
        execution_options=options,
    )
    events = conn.session.execute(
        update(WebhookEvent)
        .where(_event_mentions(ids, email))
        .values(payload=null(), error=None),  # SQL NULL: None would store JSON null
        execution_options=options,
    )
    metrics = conn.session.execute(
        update(SystemMetric).where(_mentions(SystemMetric.tags, ids, email)).values(tags=null()),
        execution_options=options,
    )
    deleted = (
        conn.session.execute(
            delete(User).where(User.id == user_id).returning(User.id), execution_options=options
        ).first()
        if user_row
        else None
    )
    return Erasure(
        user_deleted=deleted is not None,
        memberships_deleted=_count(memberships),
        team_searches_kept=_count(team_searches),
        team_keywords_given_back=given_back,
        history_anonymised=_count(history),
        api_usage_deleted=_count(usage),
        flags_updated=_count(flags),
        webhook_events_scrubbed=_count(events),
        metrics_scrubbed=_count(metrics),
    )


def _count(result: Any) -> int:
    return int(result.rowcount or 0)
