"""Records of the original Redis layout ↔ Postgres rows
(docs/original-app.md#redis-to-postgres-field-mapping), in both directions.

Redis → Postgres (backfill, on-demand import): rows are dicts keyed by *column* name, ready for
a multi-row `INSERT`. Usage comes from the real counter keys, never the stale
`keywordsUsedThisMonth`: the pro tier's `usage:{id}:{YYYY-MM}` feeds `keywordSearchesThisMonth`,
the trial's `trial-usage:{id}:{date}` feeds `keywordSearchesTotal` (the trial quota's counter,
see `shared.quotas`). A pro record's total is their sum, a lower bound (the original kept no
history); a trial record's is its trial counter alone, as the original's trial quota counted.
`monthlyResetAt` becomes the current UTC month's start, so the lazy reset keeps the count.

Postgres → Redis (the dual-write mirror): records in the original's JSON shape, timestamps in
JS `toISOString` form, so the TypeScript app reads them unchanged. The legacy layout has no
ENTERPRISE tier and only four subscription statuses: ENTERPRISE is written as `pro`, another
status is left out (the original schema would refuse the whole record).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from shared.clock import iso_ms, month_start, next_month_start
from shared.contracts import saved_searches as contract
from shared.legacy import keys
from shared.legacy.schemas import LegacyRecordError, SavedSearchRecord, UserData
from shared.models import Base, UserTier
from shared.models.saved_searches import SavedSearch
from shared.models.users import User
from shared.quotas import TRIAL_LENGTH
from shared.repositories.users import is_placeholder

LEGACY_STATUSES = frozenset({"active", "canceled", "past_due", "unpaid"})
DEFAULT_LOCATION = "US"  # the Prisma column default
DEFAULT_LANGUAGE = "en"  # docs/original-app.md#redis-to-postgres-field-mapping
# The column default "broad" is refused by the API (docs/original-app.md#d10).
DEFAULT_MATCH_TYPE = "phrase"

M = TypeVar("M", bound=Base)


@dataclass(frozen=True, slots=True)
class Counters:
    """A legacy user's real usage counters; None when the key does not exist."""

    monthly: int | None = None
    trial: int | None = None


def counter_keys(record: UserData, now: datetime) -> tuple[str, str]:
    """(monthly key for `now`'s UTC month, trial key dated by the trial start)."""
    return (
        keys.usage(record.clerkUserId, now),
        keys.trial_usage(record.clerkUserId, record.trialStartedAt),
    )


COUNTER_MAX = 2**31 - 1  # the Postgres integer columns the counters land in


def parse_counter(key: str, raw: str | None) -> int | None:
    """A counter value as stored by INCRBY; anything but a non-negative integer that fits the
    Postgres column is refused (never read as 0)."""
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise LegacyRecordError(key, "usage counter is not a non-negative integer")
    if int(raw) > COUNTER_MAX:
        raise LegacyRecordError(key, f"usage counter is larger than {COUNTER_MAX}")
    return int(raw)


def user_row(record: UserData, counters: Counters, now: datetime) -> dict[str, Any]:
    """The `users` row for a legacy record (columns by name)."""
    tier = UserTier.PRO if record.tier == "pro" else UserTier.FREE
    # A trial record counts only its trial counter: a month counter beside it is the pro
    # tier's (an upgrade and a downgrade during the trial leave one), never the trial's quota.
    monthly = (counters.monthly or 0) if tier is UserTier.PRO else 0
    trial = counters.trial or 0
    return {
        "id": record.clerkUserId,
        "email": record.email,
        "tier": tier,
        "keywordSearchesThisMonth": monthly if tier is UserTier.PRO else trial,
        "keywordSearchesTotal": monthly + trial,
        "monthlyResetAt": month_start(now),
        "stripeCustomerId": record.stripeCustomerId,
        "stripeSubscriptionId": record.subscriptionId,
        "subscriptionStatus": record.subscriptionStatus,
        "trialStartedAt": record.trialStartedAt,
        "trialEndsAt": record.trialExpiresAt,
        "createdAt": record.createdAt,
        "updatedAt": record.updatedAt,
    }


def saved_search_row(record: SavedSearchRecord) -> dict[str, Any]:
    """The `saved_searches` row for a legacy record, keeping its id (columns by name).

    `lastAccessedAt` has no source; it starts at the last run (else the last update) and is
    only ever set on insert.
    """
    params, meta = record.searchParams, record.metadata
    results = None
    if record.results is not None:
        results = [item.model_dump(exclude_unset=True) for item in record.results]
    return {
        "id": record.id,
        "userId": record.clerkUserId,
        "name": record.name,
        "description": record.description,
        "keywords": list(params.keywords),
        "keywordCount": len(params.keywords),
        "location": params.location or DEFAULT_LOCATION,
        "language": params.language or DEFAULT_LANGUAGE,
        "matchType": params.matchType or DEFAULT_MATCH_TYPE,
        "results": results,
        "resultCount": meta.resultCount,
        "lastRunAt": meta.lastRunAt,
        "createdAt": meta.createdAt,
        "updatedAt": meta.updatedAt,
        "lastAccessedAt": meta.lastRunAt or meta.updatedAt,
    }


def orm(model: type[M], row: dict[str, Any]) -> M:
    """A transient (never added to a session) ORM object from a row keyed by column name."""
    columns = {attr.columns[0].name: attr.key for attr in model.__mapper__.column_attrs}
    return model(**{columns[name]: value for name, value in row.items()})


def saved_search_from_record(record: SavedSearchRecord) -> SavedSearch:
    """What the functions render (`contract.record`) for a search read from Redis."""
    return orm(SavedSearch, saved_search_row(record))


def trial_window(user: User) -> tuple[datetime, datetime]:
    """(start, end) of the user's trial; rows created by Prisma may lack the start."""
    if user.trial_started_at is not None:
        started = user.trial_started_at
    elif user.trial_ends_at is not None:
        started = user.trial_ends_at - TRIAL_LENGTH
    else:
        started = user.created_at
    return started, user.trial_ends_at or started + TRIAL_LENGTH


def user_record(user: User, existing: UserData | None) -> dict[str, Any]:
    """The `user:{id}` JSON for a Postgres row, merged over the stored record like the
    original's `updateUser` (its vestigial fields are kept, unknown keys are dropped). A real
    stored address is never replaced by the placeholder (`keeps_stored_email`)."""
    started, expires = trial_window(user)
    record: dict[str, Any] = {
        "clerkUserId": user.id,
        "email": existing.email if existing and keeps_stored_email(user, existing) else user.email,
        "tier": "trial" if user.tier is UserTier.FREE else "pro",
        "trialStartedAt": iso_ms(started),
        "trialExpiresAt": iso_ms(expires),
        "keywordsUsedThisMonth": existing.keywordsUsedThisMonth if existing else 0,
        "monthlyResetAt": iso_ms(
            existing.monthlyResetAt if existing else next_month_start(user.created_at)
        ),
        "createdAt": iso_ms(user.created_at),
        "updatedAt": iso_ms(user.updated_at),
    }
    if user.stripe_customer_id:
        record["stripeCustomerId"] = user.stripe_customer_id
    if user.stripe_subscription_id:
        record["subscriptionId"] = user.stripe_subscription_id
    if user.subscription_status in LEGACY_STATUSES:
        record["subscriptionStatus"] = user.subscription_status
    return record


def keeps_stored_email(user: User, existing: UserData) -> bool:
    """A reattached user (`shared.legacy.bridge.reattach_user`) has the placeholder in Postgres
    because another account holds their address; Redis keeps their real one, and the `email:`
    index keeps naming the other account."""
    return is_placeholder(user.email) and not is_placeholder(existing.email)


def saved_search_record(search: SavedSearch) -> dict[str, Any]:
    """The `saved-search:{uid}:{sid}` JSON: the API's record is the stored record
    (docs/original-app.md#saved-search-record)."""
    return contract.record(search)


def counter_target(user: User, at: datetime) -> tuple[str, datetime]:
    """The legacy counter a usage change of `user` at `at` belongs to, and when it expires
    (the original's TTL rule then applies from that moment): the trial's single counter for
    FREE, else the UTC month's."""
    if user.tier is UserTier.FREE:
        started, expires = trial_window(user)
        return keys.trial_usage(user.id, started), expires
    return keys.usage(user.id, at), next_month_start(at)


def counter_ttl(expires_at: datetime, now: datetime) -> int:
    """Seconds until `expires_at`, at least an hour (the original's floor)."""
    return max(int((expires_at - now).total_seconds()), keys.MIN_COUNTER_TTL_S)
