"""Reads and writes in the original Redis layout, through the Upstash REST client.

Every function takes the client, so the functions (the container's bounded client), the
backfill CLI and tests share one implementation. Whatever the client raises (an error reply, a
transport failure or timeout, a body that is not JSON, an `AttributeError` out of its pipeline
code on an error page) leaves here as `RedisFailure`; a key holding something the original
could not read (bad JSON, a value that is not UTF-8, a key of another Redis type) raises
`LegacyRecordError`. Writes follow the original's TTLs and, as a fix (docs/original-app.md#d6),
refresh the `email:`/`stripe:` index keys together with the user record. Usage counters are only
ever moved by INCRBY (`apply_deltas`): the original app increments them too.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from upstash_redis import Redis
from upstash_redis.errors import UpstashError

from shared.legacy import keys
from shared.legacy.mapping import (
    COUNTER_MAX,
    Counters,
    counter_keys,
    keeps_stored_email,
    parse_counter,
    saved_search_record,
)
from shared.legacy.mapping import user_record as user_record_of
from shared.legacy.schemas import (
    LegacyRecordError,
    SavedSearchRecord,
    UserData,
    parse_saved_search,
    parse_user,
)
from shared.models.saved_searches import SavedSearch
from shared.models.users import User
from shared.telemetry import log_event

P = ParamSpec("P")
R = TypeVar("R")

_SCAN_COUNT = 1000
_DELETE_CHUNK = 500
_WRITE_ATTEMPTS = 3
NOT_UTF8 = "holds bytes that are not valid UTF-8"
# How long a delta's once-only marker outlives its INCRBY: a replay (a crash between the INCRBY
# and the Postgres commit that clears the delta) must come within this time.
DELTA_MARKER_TTL_S = 7 * 86_400


class RedisFailure(Exception):
    """The Upstash client failed, whatever it raised; the message is the exception's class
    (never its text, which may hold values)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)


REDIS_ERRORS: tuple[type[Exception], ...] = (RedisFailure,)


def redis_call(function: Callable[P, R]) -> Callable[P, R]:
    """Let `LegacyRecordError` through and turn anything else raised into `RedisFailure`."""

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except (LegacyRecordError, RedisFailure):
            raise
        except Exception as error:
            raise RedisFailure(error) from error

    return call


def dumps(value: Any) -> str:
    """JSON as JS `JSON.stringify` writes it (no spaces)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _get(client: Redis, key: str) -> str | None:
    """GET; a key of another type or bytes that are not UTF-8 are an unreadable record, not a
    Redis outage."""
    try:
        return client.get(key)
    except UnicodeDecodeError:
        raise LegacyRecordError(key, NOT_UTF8) from None
    except UpstashError as error:
        raise _wrong_type(error, key, "string") or error from None


def read_values(client: Redis, names: Sequence[str]) -> list[str | LegacyRecordError | None]:
    """MGET of `names` (None: missing or not a string), where one value that is not UTF-8
    spoils only itself: the batch is then read key by key."""
    if not names:
        return []
    try:
        return list(client.mget(*names))
    except UnicodeDecodeError:
        pass
    found: list[str | LegacyRecordError | None] = []
    for name in names:
        try:
            found.append(_get(client, name))
        except LegacyRecordError as error:
            found.append(error)
    return found


def pipe_types(client: Redis, names: Sequence[str]) -> list[Any]:
    """TYPE of each name, in one pipeline."""
    pipe = client.pipeline()
    for name in names:
        pipe.type(name)
    return list(pipe.exec())


def read_counters(client: Redis, names: Sequence[str]) -> list[int | LegacyRecordError | None]:
    """Usage counters (None: missing). A counter of another type, or whose value is not a
    whole number, is a `LegacyRecordError` in its place, never a silent 0. One round trip
    (more only when a value is not UTF-8)."""
    if not names:
        return []
    pipe = client.pipeline()
    for name in names:
        pipe.type(name)
    pipe.mget(*names)
    try:
        *types, mget = pipe.exec()
        values: list[str | LegacyRecordError | None] = list(mget) if isinstance(mget, list) else []
    except UnicodeDecodeError:  # one value spoils the reply: read them again, one by one
        types, values = pipe_types(client, names), read_values(client, names)
    kinds = [str(kind) for kind in types]
    found: list[int | LegacyRecordError | None] = []
    for name, kind, value in zip(names, kinds, values, strict=True):
        try:
            if kind not in ("string", "none"):
                raise LegacyRecordError(name, f"usage counter holds a {kind}, not a number")
            if isinstance(value, LegacyRecordError):
                raise value
            found.append(parse_counter(name, value))
        except LegacyRecordError as error:
            found.append(error)
    return found


def _counters(key: str, read: list[int | LegacyRecordError | None]) -> Counters:
    """The user's counters; an unreadable one is logged (a report line) and left out."""
    values: list[int | None] = []
    for value in read:
        if isinstance(value, LegacyRecordError):
            log_event(
                "legacy_counter_unreadable",
                level=logging.WARNING,
                key=value.key,
                user=key,
                reason=value.reason,
            )
            values.append(None)
        else:
            values.append(value)
    return Counters(monthly=values[0], trial=values[1])


@redis_call
def load_user(client: Redis, user_id: str, now: datetime) -> tuple[UserData | None, Counters]:
    """The user record and its real usage counters (three round trips when the user exists).

    Like the original's `getUser`, a read slides the record's one-year TTL; the index keys
    slide with it (the original let them expire under active users). An unreadable counter
    does not make the user unreadable: it is logged and counted as missing.
    """
    key = keys.user(user_id)
    raw = _get(client, key)
    if raw is None:
        return None, Counters()
    record = parse_user(key, raw)
    pipe = client.pipeline()
    pipe.expire(key, keys.ONE_YEAR_S)
    pipe.expire(keys.email(record.email), keys.ONE_YEAR_S)
    if record.stripeCustomerId:
        pipe.expire(keys.stripe(record.stripeCustomerId), keys.ONE_YEAR_S)
    pipe.exec()
    return record, _counters(key, read_counters(client, counter_keys(record, now)))


@redis_call
def email_index_names_another(client: Redis, record: UserData) -> bool:
    """Whether the original's `email:` index of the record's address names another user: the
    original's answer to whose address it is (compared case-insensitively, as it keys it)."""
    owner = read_values(client, [keys.email(record.email)])[0]
    return isinstance(owner, str) and owner != record.clerkUserId


@redis_call
def read_saved_search(client: Redis, user_id: str, search_id: str) -> SavedSearchRecord | None:
    """The search, None when missing; lenient on numbers in results (see `schemas`)."""
    key = keys.saved_search(user_id, search_id)
    raw = _get(client, key)
    return None if raw is None else parse_saved_search(key, raw, original_rules=False)


def _members(client: Redis, index: str) -> list[str]:
    """SMEMBERS; an index of another type or with a member that is not UTF-8 is unreadable."""
    try:
        return sorted(client.smembers(index))
    except UnicodeDecodeError:
        raise LegacyRecordError(index, NOT_UTF8) from None
    except UpstashError as error:
        raise _wrong_type(error, index, "set") or error from None


def _wrong_type(error: UpstashError, key: str, what: str) -> LegacyRecordError | None:
    if "WRONGTYPE" in str(error):
        return LegacyRecordError(key, f"holds a non-{what} value (WRONGTYPE)")
    return None


@redis_call
def is_indexed(client: Redis, user_id: str, search_id: str) -> bool:
    """Whether the original would find the search to delete (it SREMs the index first)."""
    index = keys.saved_searches(user_id)
    try:
        return bool(client.sismember(index, search_id))
    except UpstashError as error:
        raise _wrong_type(error, index, "set") or error from None


@redis_call
def list_saved_searches(client: Redis, user_id: str) -> list[SavedSearchRecord] | None:
    """The user's searches, most recently updated first; None when the index is empty.

    As the original's list: SMEMBERS then one MGET; ids without an item (orphans) are skipped.
    Like the original's, the list does not check string lengths (nor, so, a half emoji's
    encoding); a record that cannot be read at all (bad JSON, a missing field) is skipped and
    logged rather than failing the whole list.
    """
    members = _members(client, keys.saved_searches(user_id))
    if not members:
        return None
    item_keys = [keys.saved_search(user_id, member) for member in members]
    found: list[SavedSearchRecord] = []
    for key, raw in zip(item_keys, read_values(client, item_keys), strict=True):
        if raw is None:
            continue
        try:
            if isinstance(raw, LegacyRecordError):
                raise raw
            found.append(parse_saved_search(key, raw, original_rules=False, listing=True))
        except LegacyRecordError as error:
            log_event("legacy_record_skipped", level=logging.WARNING, key=key, reason=error.reason)
    found.sort(key=lambda record: (record.metadata.updatedAt, record.id), reverse=True)
    return found


@redis_call
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
    try:
        tx.exec()
    except UpstashError as error:
        raise _wrong_type(error, index, "set") or error from None


# Compare-and-set of a user record and its index keys: written only if `user:{id}` still holds
# what was read (ARGV[1] "1" + ARGV[2], or "0": missing), so a record the original app rewrote
# meanwhile is merged again instead of overwritten. KEYS[2..n+1] are set to the user id;
# KEYS[n+2..] are deleted only while they still point at the user.
_WRITE_USER = """
local current = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and current) or (ARGV[1] == '1' and current ~= ARGV[2]) then
  return 0
end
local ttl = tonumber(ARGV[5])
redis.call('SET', KEYS[1], ARGV[3], 'EX', ttl)
local n = tonumber(ARGV[6])
for i = 2, n + 1 do redis.call('SET', KEYS[i], ARGV[4], 'EX', ttl) end
for i = n + 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[4] then redis.call('DEL', KEYS[i]) end
end
return 1
"""


@redis_call
def write_user(client: Redis, user: User) -> None:
    """Make `user:{id}` and its index keys match the Postgres row.

    The stored record is merged like the original's `updateUser` and written only if nobody
    changed it since it was read (else read and merged again, a few times). A stored record
    the original could not read is never overwritten: it raises `LegacyRecordError`, so the
    data stays for an operator (the backfill report lists it). Nor is the record of another
    account: one whose `createdAt`, which the original never changes, is not the row's (the
    row was created while Redis could not be read, a fresh trial in fallback mode).
    """
    key = keys.user(user.id)
    for _ in range(_WRITE_ATTEMPTS):
        raw = _get(client, key)
        existing = None if raw is None else parse_user(key, raw)
        if existing is not None and existing.createdAt != user.created_at:
            raise LegacyRecordError(
                key,
                "createdAt differs from the user row's: another account's record (the original "
                "never changes it), never overwritten",
            )
        stale, fresh = [], []
        kept = existing is not None and keeps_stored_email(user, existing)
        if existing is not None:
            if existing.email.lower() != user.email.lower() and not kept:
                stale.append(keys.email(existing.email))
            if existing.stripeCustomerId and existing.stripeCustomerId != user.stripe_customer_id:
                stale.append(keys.stripe(existing.stripeCustomerId))
        if not kept:
            fresh.append(keys.email(user.email))
        if user.stripe_customer_id:
            fresh.append(keys.stripe(user.stripe_customer_id))
        written = client.eval(
            _WRITE_USER,
            keys=[key, *fresh, *stale],
            args=[
                "0" if raw is None else "1",
                raw or "",
                dumps(user_record_of(user, existing)),
                user.id,
                str(keys.ONE_YEAR_S),
                str(len(fresh)),
            ],
        )
        if written == 1:
            return
    raise LegacyRecordError(key, "the original app kept rewriting it while it was merged")


# Apply owed deltas once each: KEYS come in pairs (counter, once-only marker), ARGV in pairs
# (delta, ttl), then the marker's TTL and the largest value a Postgres integer holds. A counter
# that is not a whole number (or not a string) is left alone and -1 stands in its place; one
# that the delta would take (or that already is) past that largest value is left alone too, -2;
# for the others the counter's value after the delta is returned, also when the marker says it
# was applied before (a replay).
_APPLY_DELTAS = """
local out = {}
local largest = tonumber(ARGV[#ARGV])
for i = 1, #KEYS / 2 do
  local counter, marker = KEYS[2 * i - 1], KEYS[2 * i]
  local kind = redis.call('TYPE', counter).ok
  local value = redis.call('GET', counter)
  if kind ~= 'none' and (kind ~= 'string' or not string.match(value, '^%d+$')) then
    out[i] = -1
  elseif tonumber(value or '0') + tonumber(ARGV[2 * i - 1]) > largest then
    out[i] = -2
  else
    if redis.call('SET', marker, '1', 'NX', 'EX', tonumber(ARGV[#ARGV - 1])) then
      local now = redis.call('INCRBY', counter, tonumber(ARGV[2 * i - 1]))
      if now < 0 then redis.call('SET', counter, '0') end
      redis.call('EXPIRE', counter, tonumber(ARGV[2 * i]))
    end
    out[i] = tonumber(redis.call('GET', counter) or '0')
  end
end
return out
"""


NOT_WHOLE = "usage counter is not a whole number"
TOO_LARGE = f"usage counter would be larger than {COUNTER_MAX}"
_REFUSALS = {-1: NOT_WHOLE, -2: TOO_LARGE}


@redis_call
def apply_deltas(client: Redis, deltas: Sequence[tuple[str, str, int, int]]) -> list[int | str]:
    """INCRBY each (delta id, counter key, delta, ttl) once, in one script: replaying an
    applied delta changes nothing. The counters' values afterwards; in place of a counter left
    untouched (the delta stays owed), why: it holds something other than a whole number
    (`NOT_WHOLE`), or the delta would take it past what Postgres's counter can hold
    (`TOO_LARGE`: the original's counter is already unlike anything we count)."""
    if not deltas:
        return []
    names: list[str] = []
    args: list[str] = []
    for delta_id, key, delta, ttl in deltas:
        names += [key, f"legacy-delta:{delta_id}"]
        args += [str(delta), str(ttl)]
    values = client.eval(
        _APPLY_DELTAS, keys=names, args=[*args, str(DELTA_MARKER_TTL_S), str(COUNTER_MAX)]
    )
    return [_REFUSALS.get(int(value), int(value)) for value in values]


def _pointing_at(client: Redis, index_keys: list[str], user_id: str) -> list[str]:
    """The index keys (email:, stripe:) whose value is `user_id`: never drop another user's."""
    if not index_keys:
        return []
    return [k for k, v in zip(index_keys, client.mget(*index_keys), strict=True) if v == user_id]


def _stored_identifiers(client: Redis, user_id: str) -> tuple[str | None, str | None]:
    """Email and Stripe customer in the stored record, read leniently (it may be invalid)."""
    try:
        raw = _get(client, keys.user(user_id))
        data = json.loads(raw) if raw is not None else None
    except (LegacyRecordError, ValueError, RecursionError):
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


@redis_call
def erase_user_keys(
    client: Redis, user_id: str, email: str | None, stripe_customer_id: str | None
) -> int:
    """Delete every Redis key of a user (erasure, docs/original-app.md#d21); the number of keys
    deleted.

    Covers `user:`, `lock:user:`, `saved-searches:`, every `saved-search:{uid}:*`, `usage:{uid}:*`
    and `trial-usage:{uid}:*`, and this port's per-user rate-limit counters
    `rate:{endpoint}:u:{uid}` (all found with one SCAN, since dates, unindexed items and endpoints
    cannot be derived; anchored, so user `a`'s erasure leaves user `a:b`'s keys alone), and the
    `email:`/`stripe:` index keys for the given identifiers and for
    those in the stored record, but only where they point at this user. Safe to repeat.
    """
    stored_email, stored_customer = _stored_identifiers(client, user_id)
    index_keys = sorted(
        {keys.email(e) for e in (email, stored_email) if e}
        | {keys.stripe(c) for c in (stripe_customer_id, stored_customer) if c}
    )
    doomed = {keys.user(user_id), keys.lock(user_id), keys.saved_searches(user_id)}
    doomed.update(
        k
        for k in _scan(client, f"*:{keys.glob_escape(user_id)}*")
        if keys.is_users_item(k, user_id) or keys.is_users_rate_limit(k, user_id)
    )
    doomed.update(_pointing_at(client, index_keys, user_id))
    # The user record goes last: if a chunk fails, a retry still finds the stored identifiers.
    ordered = [*sorted(doomed - {keys.user(user_id)}), keys.user(user_id)]
    deleted = 0
    for start in range(0, len(ordered), _DELETE_CHUNK):
        deleted += client.delete(*ordered[start : start + _DELETE_CHUNK])
    return deleted
