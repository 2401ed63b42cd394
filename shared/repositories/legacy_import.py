"""Legacy Redis records into Postgres: multi-row upserts, one statement per batch.

Used by the backfill (`overwrite=True`: Redis is the source being copied) and by the on-demand
import of records the TypeScript app wrote (`overwrite=False`: a row Postgres has wins).
Re-running changes nothing: a conflicting row is updated only when some value differs, so rows
already equal keep their `xmin` and `updatedAt`. Original saved-search ids are kept.

A batch travels as ONE jsonb parameter expanded by `jsonb_to_recordset`: the statement text
is the same for every batch (parsed and planned once), where a VALUES list of 15,000 bind
parameters would cost more to build and bind than to run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from typing import Any

from sqlalchemy import Table, TextClause, case, func, literal, or_, select, text

from shared.clock import month_start
from shared.db import Conn
from shared.legacy import keys as legacy_keys
from shared.models.legacy import LegacyRepair
from shared.models.saved_searches import SavedSearch
from shared.models.tombstones import AccountTombstone
from shared.models.users import User
from shared.repositories import tombstones, users
from shared.telemetry import database_operation

_USERS: Table = User.__table__  # type: ignore[assignment]
_SEARCHES: Table = SavedSearch.__table__  # type: ignore[assignment]

TS = "timestamp(3)"
# The columns a legacy record fills, with their SQL types (for jsonb_to_recordset).
USER_COLUMNS: dict[str, str] = {
    "id": "text",
    "email": "text",
    "tier": '"UserTier"',
    "keywordSearchesThisMonth": "integer",
    "keywordSearchesTotal": "integer",
    "monthlyResetAt": TS,
    "stripeCustomerId": "text",
    "stripeSubscriptionId": "text",
    "subscriptionStatus": "text",
    "trialStartedAt": TS,
    "trialEndsAt": TS,
    "createdAt": TS,
    "updatedAt": TS,
}
SEARCH_COLUMNS: dict[str, str] = {
    "id": "text",
    "userId": "text",
    "name": "text",
    "description": "text",
    "keywords": "text[]",
    "keywordCount": "integer",
    "location": "text",
    "language": "text",
    "matchType": "text",
    "results": "jsonb",
    "resultCount": "integer",
    "lastRunAt": TS,
    "createdAt": TS,
    "updatedAt": TS,
    "lastAccessedAt": TS,
}
# Merged rather than copied: the legacy total is a lower bound, Redis calls ENTERPRISE pro, and
# a backfill re-run while the API counts in dual mode must not lower this month's count (a
# delta Redis still owes is in Postgres only).
_USER_MERGES = {
    "keywordSearchesTotal": 'GREATEST(t."keywordSearchesTotal", EXCLUDED."keywordSearchesTotal")',
    "keywordSearchesThisMonth": (
        'CASE WHEN t."monthlyResetAt" >= EXCLUDED."monthlyResetAt" AND t.tier = EXCLUDED.tier '
        'THEN GREATEST(t."keywordSearchesThisMonth", EXCLUDED."keywordSearchesThisMonth") '
        'ELSE EXCLUDED."keywordSearchesThisMonth" END'
    ),
    "tier": (
        "CASE WHEN t.tier = 'ENTERPRISE' AND EXCLUDED.tier = 'PRO' THEN t.tier "
        "ELSE EXCLUDED.tier END"
    ),
}
# Set on insert only: Postgres owns it afterwards (it moves on every GET).
_INSERT_ONLY = frozenset({"id", "lastAccessedAt"})


@dataclass(frozen=True, slots=True)
class Upserted:
    """Rows written by one statement; the rest of the batch already matched."""

    inserted: int = 0
    updated: int = 0
    kept: int = 0  # the backfill: Postgres holds a newer state (only counters were merged in)
    erased: int = 0  # the backfill: the identity was erased here; nothing imported


@cache
def _statement(
    table: str,
    columns: tuple[tuple[str, str], ...],
    merges: tuple[tuple[str, str], ...],
    overwrite: bool,
) -> TextClause:
    names = ", ".join(f'"{name}"' for name, _ in columns)
    shape = ", ".join(f'"{name}" {type_}' for name, type_ in columns)
    sql = (
        f"INSERT INTO {table} AS t ({names}) SELECT {names} "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({shape}) ON CONFLICT (id) "
    )
    if overwrite:
        merged = dict(merges)
        values = {
            name: merged.get(name, f'EXCLUDED."{name}"')
            for name, _ in columns
            if name not in _INSERT_ONLY
        }
        assignments = ", ".join(f'"{name}" = {value}' for name, value in values.items())
        current = ", ".join(f't."{name}"' for name in values)
        sql += (
            f"DO UPDATE SET {assignments} "
            f"WHERE ({current}) IS DISTINCT FROM ({', '.join(values.values())}) "
        )
    else:
        sql += "DO NOTHING "
    return text(sql + "RETURNING (xmax = 0)")


def _json_value(value: Any) -> Any:
    """Timestamps as naive UTC (the columns are TIMESTAMP(3) holding UTC), enums by value."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


def _upsert(
    conn: Conn,
    table: str,
    columns: dict[str, str],
    rows: Sequence[dict[str, Any]],
    *,
    overwrite: bool,
    merges: dict[str, str] | None = None,
) -> Upserted:
    if not rows:
        return Upserted()
    statement = _statement(table, tuple(columns.items()), tuple((merges or {}).items()), overwrite)
    payload = json.dumps(
        [{name: row[name] for name in columns} for row in rows], default=_json_value
    )
    flags: Sequence[bool] = conn.session.execute(statement, {"rows": payload}).scalars().all()
    inserted = sum(1 for flag in flags if flag)
    return Upserted(inserted=inserted, updated=len(flags) - inserted)


@database_operation("upsertLegacyUsers")
def upsert_users(conn: Conn, rows: Sequence[dict[str, Any]], *, overwrite: bool) -> Upserted:
    """Insert users (rows keyed by column name); with `overwrite`, update differing ones.

    Three columns are merged rather than copied: `keywordSearchesTotal` only grows (the legacy
    value is a lower bound), this month's count only grows within the same month and tier,
    and an ENTERPRISE row stays ENTERPRISE (Redis calls it `pro`).
    A taken email or Stripe id raises `IntegrityError` for the whole statement (see
    `taken_identifiers` to leave such rows out beforehand).
    """
    return _upsert(conn, "users", USER_COLUMNS, rows, overwrite=overwrite, merges=_USER_MERGES)


@database_operation("upsertLegacySavedSearches")
def upsert_saved_searches(
    conn: Conn, rows: Sequence[dict[str, Any]], *, overwrite: bool
) -> Upserted:
    """Insert saved searches with their original ids; with `overwrite`, update differing ones.
    The owners must exist (the FK raises `IntegrityError` otherwise)."""
    return _upsert(conn, "saved_searches", SEARCH_COLUMNS, rows, overwrite=overwrite)


@database_operation("findExistingUserIds")
def existing_user_ids(conn: Conn, user_ids: Sequence[str]) -> set[str]:
    """Which of `user_ids` have a row (one query per batch, for the orphan check)."""
    if not user_ids:
        return set()
    return set(conn.session.scalars(select(_USERS.c.id).where(_USERS.c.id.in_(list(user_ids)))))


@database_operation("findUsersById")
def users_by_id(conn: Conn, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Rows keyed by id, columns by name (what `shared.legacy.mapping` produces)."""
    statement = select(_USERS).where(_USERS.c.id.in_(list(user_ids)))
    return {row["id"]: dict(row) for row in conn.session.execute(statement).mappings()}


@database_operation("findSavedSearchesById")
def saved_searches_by_id(conn: Conn, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    statement = select(_SEARCHES).where(_SEARCHES.c.id.in_(list(ids)))
    return {row["id"]: dict(row) for row in conn.session.execute(statement).mappings()}


@database_operation("findTakenUserIdentifiers")
def taken_identifiers(conn: Conn, rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Rows (by id) whose email, compared case-insensitively, or Stripe ids belong to another
    user, with the reason: the unique constraints would refuse them. One query."""
    if not rows:
        return {}
    emails = {row["email"].lower(): row["id"] for row in rows}
    customers = {row["stripeCustomerId"]: row["id"] for row in rows if row["stripeCustomerId"]}
    subscriptions = {
        row["stripeSubscriptionId"]: row["id"] for row in rows if row["stripeSubscriptionId"]
    }
    c = _USERS.c
    statement = select(func.lower(c.email), c.stripeCustomerId, c.stripeSubscriptionId, c.id).where(
        or_(
            func.lower(c.email).in_(list(emails)),
            c.stripeCustomerId.in_(list(customers)),
            c.stripeSubscriptionId.in_(list(subscriptions)),
        )
    )
    taken: dict[str, str] = {}
    for email, customer, subscription, owner in conn.session.execute(statement):
        for claimed, what in (
            (emails.get(email), "email"),
            (customers.get(customer), "Stripe customer id"),
            (subscriptions.get(subscription), "Stripe subscription id"),
        ):
            if claimed is not None and claimed != owner:
                taken.setdefault(claimed, f"another user has this {what}")
    return taken


@database_operation("learnLegacyCounter")
def learn_counter(conn: Conn, user_id: str, value: int, *, trial: bool, now: datetime) -> None:
    """Raise the user's quota counter to the legacy counter's `value` (which holds the original
    app's increments as well as ours), never lower it; the total grows by the same amount.
    One statement. The trial's counter is the total; `value` is this month's count for the
    monthly one, so a row still on an earlier month is reset to it (the reservation's lazy
    reset, done here so that a reservation right after sees this month's count)."""
    c = _USERS.c
    if trial:
        gained = func.greatest(value - c.keywordSearchesTotal, 0)
        values = {
            "keywordSearchesTotal": func.greatest(c.keywordSearchesTotal, value),
            "keywordSearchesThisMonth": c.keywordSearchesThisMonth + gained,
        }
        statement = _USERS.update().where(c.id == user_id, c.tier == "FREE")
    else:
        stale = c.monthlyResetAt < month_start(now)
        month = case((stale, 0), else_=c.keywordSearchesThisMonth)
        reset_at = case((stale, literal(now, c.monthlyResetAt.type)), else_=c.monthlyResetAt)
        gained = func.greatest(value - month, 0)
        values = {
            "keywordSearchesThisMonth": month + gained,
            "keywordSearchesTotal": c.keywordSearchesTotal + gained,
            "monthlyResetAt": reset_at,
        }
        statement = _USERS.update().where(c.id == user_id, c.tier != "FREE")
    conn.session.execute(statement.values(values))


@database_operation("pageUserIds")
def user_ids_after(conn: Conn, after: str, limit: int) -> list[str]:
    """The next `limit` user ids after `after` (keyset order): verify's Postgres → Redis pass."""
    statement = select(_USERS.c.id).where(_USERS.c.id > after).order_by(_USERS.c.id).limit(limit)
    return list(conn.session.scalars(statement))


@database_operation("pageSavedSearchIds")
def saved_searches_after(conn: Conn, after: str, limit: int) -> list[tuple[str, str]]:
    """The next `limit` (id, owner) pairs after id `after` (keyset order)."""
    c = _SEARCHES.c
    statement = select(c.id, c.userId).where(c.id > after).order_by(c.id).limit(limit)
    return [(row[0], row[1]) for row in conn.session.execute(statement)]


# --- the backfill: a Redis record never overwrites a newer Postgres state -----------------------


def _ms(value: datetime) -> datetime:
    """Aware UTC, to the millisecond (the columns are TIMESTAMP(3))."""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=value.microsecond // 1000 * 1000)


def _newer_in_postgres(current: dict[str, Any] | None, row: dict[str, Any]) -> bool:
    return current is not None and _ms(current["updatedAt"]) > _ms(row["updatedAt"])


def _pending(conn: Conn, names: Sequence[str]) -> set[str]:
    """Which of these outbox keys still have a mirror owed to Redis."""
    if not names:
        return set()
    statement = select(LegacyRepair.key).where(LegacyRepair.key.in_(list(names)))
    return set(conn.session.scalars(statement))


@database_operation("findErasedUserIds")
def erased_user_ids(conn: Conn, user_ids: Sequence[str]) -> set[str]:
    """Which of these Clerk ids were erased here: their id's account tombstone, or an erasure
    of their legacy keys still owed (`erase:{id}` in the outbox)."""
    if not user_ids:
        return set()
    by_key = {tombstones.keys(user_id, None)[0]: user_id for user_id in user_ids}
    found = conn.session.scalars(
        select(AccountTombstone.key).where(AccountTombstone.key.in_(list(by_key)))
    )
    erased = {by_key[key] for key in found}
    owed = _pending(conn, [legacy_keys.erasure(user_id) for user_id in user_ids])
    return erased | {user_id for user_id in user_ids if legacy_keys.erasure(user_id) in owed}


def _same_counter(current: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether the legacy record's month counter is the one Postgres counts (same tier, this
    month): only then may it raise Postgres's."""
    have, want = current["tier"], row["tier"]
    have = getattr(have, "value", have)
    want = getattr(want, "value", want)
    same_tier = have == want or (have == "ENTERPRISE" and want == "PRO")
    return same_tier and _ms(current["monthlyResetAt"]) >= _ms(row["monthlyResetAt"])


@database_operation("findEmailHolders")
def email_holders(conn: Conn, rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each row (by id), the other user holding its email (compared case-insensitively),
    with that holder's `id` and `updatedAt`, and `owed`: a mirror of the holder is pending."""
    emails = {row["email"].lower(): row["id"] for row in rows}
    if not emails:
        return {}
    c = _USERS.c
    statement = select(func.lower(c.email), c.id, c.updatedAt).where(
        func.lower(c.email).in_(list(emails))
    )
    found = {
        emails[email]: {"id": holder, "updatedAt": updated}
        for email, holder, updated in conn.session.execute(statement)
        if emails[email] != holder
    }
    owed = _pending(conn, [legacy_keys.user(h["id"]) for h in found.values()])
    for holder in found.values():
        holder["owed"] = legacy_keys.user(holder["id"]) in owed
    return found


def newer_than(current: datetime, legacy: datetime) -> bool:
    """Whether a Postgres `updatedAt` is later than a legacy record's (to the millisecond)."""
    return _ms(current) > _ms(legacy)


@database_operation("backfillLegacyUsers")
def backfill_users(
    conn: Conn,
    rows: Sequence[dict[str, Any]],
    *,
    overwrite: bool = True,
    releases: Sequence[tuple[str, str]] = (),
) -> Upserted:
    """The backfill's write of a batch of users (`overwrite` is ignored: always True).

    The rows are locked first. An erased identity (`erased_user_ids`) is not imported at all.
    A row whose Postgres state is the newer one (its `updatedAt` is later than the record's,
    or a mirror of it to Redis is still owed in `legacy_repairs`) keeps every column; only the
    usage counters may grow from the legacy ones (the TypeScript app's increments never
    change its record's `updatedAt`). The rest are upserted as `upsert_users` does.

    `releases`, (holder id, lower-cased email): first, in the same transaction, each holder
    gives up that address for its placeholder (its `updatedAt` unchanged, so its own record,
    which the original moved to another address, is still copied): an email handover or swap
    the `email:` index decided converges in one run."""
    del overwrite
    if not rows:
        return Upserted()
    c = _USERS.c
    for holder, email in releases:
        conn.session.execute(
            _USERS.update()
            .where(c.id == holder, func.lower(c.email) == email)
            .values(email=users.placeholder_email(holder))
        )
    ids = [row["id"] for row in rows]
    current = {
        row["id"]: dict(row)
        for row in conn.session.execute(
            select(_USERS).where(_USERS.c.id.in_(ids)).with_for_update()
        ).mappings()
    }
    erased = erased_user_ids(conn, ids)
    owed = _pending(conn, [legacy_keys.user(user_id) for user_id in ids])
    fresh: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    for row in rows:
        have = current.get(row["id"])
        if row["id"] in erased:
            continue
        if have is not None and (
            legacy_keys.user(row["id"]) in owed or _newer_in_postgres(have, row)
        ):
            merged = {name: have[name] for name in USER_COLUMNS}
            merged["keywordSearchesTotal"] = row["keywordSearchesTotal"]  # merged: GREATEST
            if _same_counter(have, row):
                merged["keywordSearchesThisMonth"] = row["keywordSearchesThisMonth"]
            kept.append(merged)
        else:
            fresh.append(row)
    written = upsert_users(conn, fresh, overwrite=True)
    upsert_users(conn, kept, overwrite=True)
    return Upserted(written.inserted, written.updated, kept=len(kept), erased=len(erased))


@database_operation("backfillLegacySavedSearches")
def backfill_saved_searches(
    conn: Conn, rows: Sequence[dict[str, Any]], *, overwrite: bool = True
) -> Upserted:
    """The backfill's write of a batch of saved searches (`overwrite` is ignored: always
    True). Locked first; a search whose Postgres state is the newer one (a later `updatedAt`,
    or a mirror to Redis still owed: a change, or a deletion, Redis has not seen yet) is left
    as Postgres has it, deleted ones stay deleted. The rest are upserted."""
    del overwrite
    if not rows:
        return Upserted()
    current = {
        row["id"]: dict(row)
        for row in conn.session.execute(
            select(_SEARCHES.c.id, _SEARCHES.c.updatedAt)
            .where(_SEARCHES.c.id.in_([row["id"] for row in rows]))
            .with_for_update()
        ).mappings()
    }
    owed = _pending(conn, [legacy_keys.saved_search(row["userId"], row["id"]) for row in rows])
    fresh = [
        row
        for row in rows
        if legacy_keys.saved_search(row["userId"], row["id"]) not in owed
        and not _newer_in_postgres(current.get(row["id"]), row)
    ]
    written = upsert_saved_searches(conn, fresh, overwrite=True)
    return Upserted(written.inserted, written.updated, kept=len(rows) - len(fresh))
