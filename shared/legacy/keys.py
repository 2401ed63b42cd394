"""The original app's Redis keys (docs/original-app.md#key-table), built in one place.

Readers, the dual-write mirror, the backfill and erasure all use these builders, so they can
never disagree on a key. This port's rate-limit counters are built here too: a signed-in
user's counters name them, so erasure has to find them. Months and dates are UTC
(docs/original-app.md#d12: the original used server-local time for the month, which is UTC on
Vercel).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

ONE_YEAR_S = 31_536_000  # user:, email:, stripe: and saved-search: records
MIN_COUNTER_TTL_S = 3600  # the original's floor for usage counters

USER_PATTERN = "user:*"
SAVED_SEARCH_PATTERN = "saved-search:*"  # does not match saved-searches:
INDEX_PATTERN = "saved-searches:*"

_USER_PREFIX = "user:"
_SAVED_SEARCH_PREFIX = "saved-search:"
_INDEX_PREFIX = "saved-searches:"
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def user(user_id: str) -> str:
    return f"{_USER_PREFIX}{user_id}"


def email(address: str) -> str:
    """The email index: the original lower-cases the address (JS `toLowerCase`)."""
    return f"email:{address.lower()}"


def stripe(customer_id: str) -> str:
    return f"stripe:{customer_id}"


def lock(user_id: str) -> str:
    """The original's get-or-create lock (10 s TTL); only erasure touches it."""
    return f"lock:user:{user_id}"


def usage(user_id: str, moment: datetime) -> str:
    """The pro tier's monthly counter, for `moment`'s UTC month."""
    return f"usage:{user_id}:{moment.astimezone(UTC):%Y-%m}"


def trial_usage(user_id: str, trial_started_at: datetime) -> str:
    """The trial's single counter, dated by the trial start (UTC, as the original)."""
    return f"trial-usage:{user_id}:{trial_started_at.astimezone(UTC):%Y-%m-%d}"


def erasure(user_id: str) -> str:
    """Names a pending erasure of all of a user's keys in the dual-write outbox; not a key
    that exists in Redis."""
    return f"erase:{user_id}"


def rate_limit(endpoint: str, identity: str) -> str:
    """This port's rate-limit counter (`shared.ratelimit`): one per endpoint and identity (the
    original's `rate:{ip}:{ua}` had no endpoint). Endpoint names contain no colon."""
    return f"rate:{endpoint}:{identity}"


def signed_in(user_id: str) -> str:
    """The rate limiter's identity for a signed-in user: their counters name them, so erasure
    deletes them (`rate:{endpoint}:u:{id}`)."""
    return f"u:{user_id}"


def is_users_rate_limit(key: str, user_id: str) -> bool:
    """Whether `key` is one of `user_id`'s rate-limit counters, at any endpoint."""
    parts = key.split(":", 2)
    return len(parts) == 3 and key == rate_limit(parts[1], signed_in(user_id))


_ITEM_PREFIXES = ("saved-search", "usage", "trial-usage")


def is_users_item(key: str, user_id: str) -> bool:
    """Whether `key` is one of `user_id`'s saved searches or usage counters:
    `{prefix}:{user_id}:{suffix}` with a suffix (a search id, a month, a date) that holds no
    colon. Legacy ids may contain colons, so a mere prefix match would also take the keys of
    user `{user_id}:anything`."""
    for prefix in _ITEM_PREFIXES:
        head = f"{prefix}:{user_id}:"
        if key.startswith(head):
            suffix = key[len(head) :]
            return bool(suffix) and ":" not in suffix
    return False


def saved_searches(user_id: str) -> str:
    """The set of a user's saved-search ids (no TTL in the original)."""
    return f"{_INDEX_PREFIX}{user_id}"


def saved_search(user_id: str, search_id: str) -> str:
    return f"{_SAVED_SEARCH_PREFIX}{user_id}:{search_id}"


def user_id_of(key: str) -> str | None:
    """`user:{id}` → id; None for anything else (e.g. `user:` alone)."""
    if not key.startswith(_USER_PREFIX) or len(key) == len(_USER_PREFIX):
        return None
    return key[len(_USER_PREFIX) :]


def saved_search_ids_of(key: str) -> tuple[str, str] | None:
    """`saved-search:{uid}:{sid}` → (uid, sid); search ids never contain a colon."""
    if not key.startswith(_SAVED_SEARCH_PREFIX):
        return None
    user_id, colon, search_id = key[len(_SAVED_SEARCH_PREFIX) :].rpartition(":")
    return (user_id, search_id) if colon and user_id and search_id else None


def index_owner_of(key: str) -> str | None:
    """`saved-searches:{uid}` → uid."""
    if not key.startswith(_INDEX_PREFIX) or len(key) == len(_INDEX_PREFIX):
        return None
    return key[len(_INDEX_PREFIX) :]


def glob_escape(value: str) -> str:
    """`value` as a literal inside a SCAN MATCH pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", value)
