"""Reads and writes in the original Redis layout, through the Upstash REST client.

Every function takes the client, so the functions (the container's bounded client), the
backfill CLI and tests share one implementation. Redis failures propagate as the SDK raises
them (see `REDIS_ERRORS`); a key holding something the original could not read raises
`LegacyRecordError`. Writes follow the original's TTLs and, as a fix (spec §10.6), refresh the
`email:`/`stripe:` index keys together with the user record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import httpx
from upstash_redis import Redis
from upstash_redis.errors import UpstashError

from shared.legacy import keys
from shared.legacy.mapping import (
    Counters,
    CounterValue,
    counter_keys,
    parse_counter,
    saved_search_record,
    user_record,
)
from shared.legacy.schemas import (
    LegacyRecordError,
    SavedSearchRecord,
    UserData,
    parse_saved_search,
    parse_user,
)
from shared.models import SavedSearch, User
from shared.telemetry import log_event

# What a failed or unreachable Redis raises through the SDK: an error reply (UpstashError), a
# transport failure or timeout (httpx), or a body that is not JSON (a proxy's error page).
REDIS_ERRORS: tuple[type[Exception], ...] = (UpstashError, httpx.HTTPError, json.JSONDecodeError)

_SCAN_COUNT = 1000
_DELETE_CHUNK = 500


def dumps(value: Any) -> str:
    """JSON as JS `JSON.stringify` writes it (no spaces)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _get(client: Redis, key: str) -> str | None:
    """GET, with a key of another type reported as an unreadable record, not a Redis outage."""
    try:
        return client.get(key)
    except UpstashError as error:
        if "WRONGTYPE" in str(error):
            raise LegacyRecordError(key, "holds a non-string value (WRONGTYPE)") from None
        raise


def load_user(client: Redis, user_id: str, now: datetime) -> tuple[UserData | None, Counters]:
    """The user record and its real usage counters (two round trips when the user exists).

    Like the original's `getUser`, a read slides the record's one-year TTL; the index keys
    slide with it (the original let them expire under active users).
    """
    key = keys.user(user_id)
    raw = _get(client, key)
    if raw is None:
        return None, Counters()
    record = parse_user(key, raw)
    monthly_key, trial_key = counter_keys(record, now)
    pipe = client.pipeline()
    pipe.expire(key, keys.ONE_YEAR_S)
    pipe.expire(keys.email(record.email), keys.ONE_YEAR_S)
    if record.stripeCustomerId:
        pipe.expire(keys.stripe(record.stripeCustomerId), keys.ONE_YEAR_S)
    pipe.get(monthly_key)
    pipe.get(trial_key)
    replies = pipe.exec()
    return record, Counters(
        monthly=parse_counter(monthly_key, replies[-2]),
        trial=parse_counter(trial_key, replies[-1]),
    )


def read_saved_search(client: Redis, user_id: str, search_id: str) -> SavedSearchRecord | None:
    """The search, None when missing; lenient on numbers in results (see `schemas`)."""
    key = keys.saved_search(user_id, search_id)
    raw = _get(client, key)
    return None if raw is None else parse_saved_search(key, raw, original_rules=False)


def is_indexed(client: Redis, user_id: str, search_id: str) -> bool:
    """Whether the original would find the search to delete (it SREMs the index first)."""
    return bool(client.sismember(keys.saved_searches(user_id), search_id))


def list_saved_searches(client: Redis, user_id: str) -> list[SavedSearchRecord] | None:
    """The user's searches, most recently updated first; None when the index is empty.

    As the original's list: SMEMBERS then one MGET; ids without an item (orphans) are skipped.
    A record that cannot be read is skipped and logged rather than failing the whole list.
    """
    members = sorted(client.smembers(keys.saved_searches(user_id)))
    if not members:
        return None
    item_keys = [keys.saved_search(user_id, member) for member in members]
    found: list[SavedSearchRecord] = []
    for key, raw in zip(item_keys, client.mget(*item_keys), strict=True):
        if raw is None:
            continue
        try:
            found.append(parse_saved_search(key, raw, original_rules=False))
        except LegacyRecordError as error:
            log_event("legacy_record_skipped", level=logging.WARNING, key=key, reason=error.reason)
    found.sort(key=lambda record: (record.metadata.updatedAt, record.id), reverse=True)
    return found


def write_saved_search(
    client: Redis, user_id: str, search_id: str, search: SavedSearch | None
) -> None:
    """Make the item and its index membership match `search` (None: it is gone), atomically."""
    item, index = keys.saved_search(user_id, search_id), keys.saved_searches(user_id)
    tx = client.multi()
    if search is None:
        tx.srem(index, search_id)
        tx.delete(item)
    else:
        tx.set(item, dumps(saved_search_record(search)), ex=keys.ONE_YEAR_S)
        tx.sadd(index, search_id)
    tx.exec()


def write_user(client: Redis, user: User) -> None:
    """Make `user:{id}` and its index keys match the Postgres row.

    The stored record is merged like the original's `updateUser`. A stored record the original
    could not read is never overwritten: it raises `LegacyRecordError`, so the data stays for
    an operator (the backfill report lists it).
    """
    key = keys.user(user.id)
    raw = _get(client, key)
    existing = None if raw is None else parse_user(key, raw)
    stale_index_keys = []
    if existing is not None:
        if existing.email.lower() != user.email.lower():
            stale_index_keys.append(keys.email(existing.email))
        if existing.stripeCustomerId and existing.stripeCustomerId != user.stripe_customer_id:
            stale_index_keys.append(keys.stripe(existing.stripeCustomerId))
    tx = client.multi()
    tx.set(key, dumps(user_record(user, existing)), ex=keys.ONE_YEAR_S)
    tx.set(keys.email(user.email), user.id, ex=keys.ONE_YEAR_S)
    if user.stripe_customer_id:
        tx.set(keys.stripe(user.stripe_customer_id), user.id, ex=keys.ONE_YEAR_S)
    for stale in _pointing_at(client, stale_index_keys, user.id):
        tx.delete(stale)
    tx.exec()


def write_counter(client: Redis, counter: CounterValue) -> None:
    """Set the legacy usage counter to Postgres's count (by value: replaying it is harmless)."""
    client.set(counter.key, str(counter.value), ex=counter.ttl_s)


def _pointing_at(client: Redis, index_keys: list[str], user_id: str) -> list[str]:
    """The index keys (email:, stripe:) whose value is `user_id`: never drop another user's."""
    if not index_keys:
        return []
    return [k for k, v in zip(index_keys, client.mget(*index_keys), strict=True) if v == user_id]


def _stored_identifiers(client: Redis, user_id: str) -> tuple[str | None, str | None]:
    """Email and Stripe customer in the stored record, read leniently (it may be invalid)."""
    raw = _get(client, keys.user(user_id))
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    email, customer = data.get("email"), data.get("stripeCustomerId")
    return (
        email if isinstance(email, str) else None,
        customer if isinstance(customer, str) else None,
    )


def _scan(client: Redis, pattern: str, count: int = _SCAN_COUNT) -> Iterable[str]:
    cursor = 0
    while True:
        cursor, found = client.scan(cursor, match=pattern, count=count)
        yield from found
        if cursor == 0:
            return


def erase_user_keys(
    client: Redis, user_id: str, email: str | None, stripe_customer_id: str | None
) -> int:
    """Delete every Redis key of a user (erasure, spec §10.21); the number of keys deleted.

    Covers `user:`, `lock:user:`, `saved-searches:`, every `saved-search:{uid}:*`, `usage:{uid}:*`
    and `trial-usage:{uid}:*`, and this port's per-user rate-limit counters
    `rate:{endpoint}:u:{uid}` (all found with one SCAN, since dates, unindexed items and endpoints
    cannot be derived), and the `email:`/`stripe:` index keys for the given identifiers and for
    those in the stored record, but only where they point at this user. Safe to repeat.
    """
    stored_email, stored_customer = _stored_identifiers(client, user_id)
    index_keys = sorted(
        {keys.email(e) for e in (email, stored_email) if e}
        | {keys.stripe(c) for c in (stripe_customer_id, stored_customer) if c}
    )
    owned_prefixes = tuple(
        f"{prefix}:{user_id}:" for prefix in ("saved-search", "usage", "trial-usage")
    )
    doomed = {keys.user(user_id), keys.lock(user_id), keys.saved_searches(user_id)}
    doomed.update(
        k
        for k in _scan(client, f"*:{keys.glob_escape(user_id)}*")
        if k.startswith(owned_prefixes) or keys.is_users_rate_limit(k, user_id)
    )
    doomed.update(_pointing_at(client, index_keys, user_id))
    # The user record goes last: if a chunk fails, a retry still finds the stored identifiers.
    ordered = [*sorted(doomed - {keys.user(user_id)}), keys.user(user_id)]
    deleted = 0
    for start in range(0, len(ordered), _DELETE_CHUNK):
        deleted += client.delete(*ordered[start : start + _DELETE_CHUNK])
    return deleted
