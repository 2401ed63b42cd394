"""STORAGE_MODE dual and fallback: Postgres and the original's Redis layout kept in step.

`shared.storage` is the switch and serves postgres mode itself; it imports this module only for
the migration's two modes, and in any mode for what touches the legacy keys (reattaching a
legacy user at sign-in, erasing a user's keys). Dual reads from Redis; fallback reads Redis and
uses Postgres when the key is missing or unreadable, or Redis fails (its reads here answer
None, and the switch then reads Postgres). Both write to both stores, so the TypeScript app,
still reading and writing Redis, keeps working.

Write policy in dual and fallback: **Postgres is the commit point.**
1. The data change and a `legacy_repairs` row naming the Redis key commit in ONE transaction. If
   Postgres fails, the request fails with 503 and nothing was written anywhere.
2. Then, holding that row's lock, Postgres's current state is copied to Redis and the row is
   deleted. If Redis fails (down, slower than `REDIS_TIMEOUT_S`, or holding a record the
   original could not read or another account's user record, neither ever overwritten), the
   row stays with the error and the request still succeeds: the write is committed, and
   `repair_pending()` (`python -m devkit.legacy repair`) copies it once Redis is back. A crash
   between 1 and 2 leaves the row too. No write is ever lost silently; Redis may lag until the
   repair runs.
Records are copied by state, so replaying one is harmless, and the row lock serialises the
writers of a key, so an older state never lands after a newer one; a user record the original
app rewrote between our read and our write is merged again (compare-and-set), not overwritten.
Usage counters are the exception: the TypeScript app increments them too, so copying our count
over them would erase its increments. Each reservation or release of ours records its delta
(`legacy_counter_deltas`) in the transaction that changes the Postgres counter; `mirror_usage`
then applies it with INCRBY under a once-only marker (a replay changes nothing), and Postgres
learns the counter's value afterwards (GREATEST), so it counts what the original added too.

Reads: dual answers 503 when Redis fails or holds an unreadable record (the original's
behaviour); fallback then reads Postgres, and reads it too for a key whose copy is still owed
(Redis holds an older state: a Redis back from an outage with its data), and lists what both
stores hold (`list_searches`). Records only the TypeScript app has are imported on
demand: the user at sign-in, a saved search when it is updated or deleted. A legacy user whose
address or Stripe id another account holds is imported without it (`reattach_user`).
Known limits: in dual mode a read can miss a write whose copy is still pending; the 50-search
cap counts Postgres rows; a search the TypeScript app deleted leaves its Postgres row until a
delete through this port, or an operator, removes it (docs/migration-from-redis.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import IntegrityError
from upstash_redis import Redis

from shared import db
from shared.clock import next_month_start, utcnow
from shared.config import ConfigurationError
from shared.db import Conn, DatabaseUnavailableError, violated_constraint
from shared.errors import EmailInUseError, UnstorableSearchError, UserNotFoundError
from shared.ids import new_uuid
from shared.legacy import keys, mapping, store
from shared.legacy.mapping import Counters
from shared.legacy.schemas import LegacyRecordError, UserData, storable
from shared.models import UserTier
from shared.models.saved_searches import SavedSearch
from shared.quotas import Limits, UsageView
from shared.redis import get_redis
from shared.repositories import (
    legacy_import,
    legacy_repairs,
    saved_searches,
    tombstones,
    users,
)
from shared.repositories.legacy_repairs import Kind
from shared.storage import mode
from shared.telemetry import log_event

T = TypeVar("T")
# What another user's row can hold of a legacy record: the reattach leaves such a field out.
_UNIQUE_CONSTRAINTS = (
    "users_email_key",
    "users_email_lower_key",
    "users_stripeCustomerId_key",
    "users_stripeSubscriptionId_key",
)
UNIQUE_COLUMNS = ("email", "stripeCustomerId", "stripeSubscriptionId")


class LegacyStoreUnavailableError(DatabaseUnavailableError):
    """Redis, the read source in dual mode, failed or holds a record the original could not
    read. HTTP functions answer it like any store outage: 503 with `Retry-After`."""


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """What Redis answered for a read; a read that returns None instead leaves it to Postgres."""

    value: T


def _client() -> Redis:
    client = get_redis()
    if client is None:  # Settings and the switch refuse this; kept for a clear message anyway
        raise ConfigurationError(
            "the legacy layout needs UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN"
        )
    return client


def _from_redis(read: Callable[[], T], what: str) -> T | None:
    """A read from the legacy layout. Dual: a failure is a 503. Fallback: None (logged), and
    the caller reads Postgres instead."""
    try:
        return read()
    except LegacyRecordError as error:
        reason = f"unreadable record: {error.reason}"
    except store.REDIS_ERRORS as error:
        reason = f"redis: {error}"
    log_event("legacy_read_failed", level=logging.WARNING, what=what, mode=mode(), reason=reason)
    if mode() == "dual":
        raise LegacyStoreUnavailableError(f"legacy store failed reading {what}") from None
    return None


# --- the outbox: mark in the data transaction, then copy and clear ---------------------------


def _copy(conn: Conn, entry_key: str, kind: str, user_id: str, client: Redis) -> None:
    """Make the Redis side of `entry_key` match what Postgres has committed."""
    if kind == "saved_search":
        ids = keys.saved_search_ids_of(entry_key)
        if ids is None:  # never written by this module; refused, not fatal to the repair loop
            raise LegacyRecordError(entry_key, "not a saved-search:{userId}:{searchId} key")
        search = legacy_repairs.saved_search_state(conn, *ids)
        store.write_saved_search(client, ids[0], ids[1], search)
        return
    user = users.get(conn, user_id)
    if kind == "erasure":
        # Owed whenever the account was erased here (its id's tombstone, written by every
        # erasure), even if something recreated the row meanwhile (a sign-in or an import
        # that read the keys still there): those keys are the erased person's. The row is
        # left for an operator; `verify` lists it, its Redis record being gone. A mark with a
        # row and no tombstone names no erasure: the keys of a live user are never deleted.
        if user is None or tombstones.any_erased(conn, [user_id]):
            store.erase_user_keys(client, user_id, None, None)
            if user is not None:
                log_event("legacy_erasure_row_exists", level=logging.WARNING, reason="recreated")
        else:
            log_event("legacy_erasure_skipped", level=logging.WARNING, reason="user exists")
    elif user is not None:  # else nothing to copy; a Redis-only record is left as it is
        store.write_user(client, user)


def _logged(key: str) -> str:
    """A mark's key as a log line may show it: an erasure's names the erased user, whom no log
    line may name (logs outlive the erasure), so only its kind is shown."""
    prefix = keys.erasure("")
    return prefix + "…" if key.startswith(prefix) else key


def _sync_locked(conn: Conn, key: str, client: Redis, *, skip_locked: bool) -> bool | None:
    """True: Redis matches and the mark is gone. False: Redis failed, the mark stays with the
    reason. None: no mark (already synced) or, with `skip_locked`, another writer holds it."""
    entry = legacy_repairs.lock(conn, key, skip_locked=skip_locked)
    if entry is None:
        return None
    try:
        _copy(conn, entry.key, entry.kind, entry.user_id, client)
    except LegacyRecordError as error:
        reason = f"legacy key left untouched: {error.reason}"
    except store.REDIS_ERRORS as error:
        reason = f"redis: {error}"
    else:
        legacy_repairs.clear(conn, key)
        return True
    legacy_repairs.record_failure(conn, key, reason)
    log_event("legacy_mirror_failed", level=logging.WARNING, key=_logged(key), reason=reason)
    return False


def _sync(key: str) -> bool:
    """After the data committed: copy it to Redis now. Never fails the request: when Redis or
    Postgres fails here, the committed mark stays for the repair job."""
    try:
        client = _client()
        outcome = db.transaction(lambda conn: _sync_locked(conn, key, client, skip_locked=False))
        return outcome is not False
    except DatabaseUnavailableError:
        log_event("legacy_mirror_deferred", level=logging.WARNING, key=_logged(key))
        return False


def _mark(key: str, kind: Kind, user_id: str) -> Callable[[Conn], None]:
    return lambda conn: legacy_repairs.mark(conn, key, kind, user_id)


def _owed(key: str) -> bool:
    """Whether Redis still owes `key` a copy of Postgres's state (it may hold an older one)."""
    return db.run(lambda conn: legacy_repairs.owed(conn, key), idempotent=True)


# --- users ------------------------------------------------------------------------------------


def _import_user(client: Redis, record: UserData, counters: Counters, now: datetime) -> None:
    """Give a user only the TypeScript app knows a Postgres row; an existing row wins. When
    the original's `email:` index names another user for their address, or another account
    holds it or a Stripe id of theirs, they are reattached (`reattach_user`), which applies
    that one rule in every mode."""
    elsewhere = _from_redis(lambda: store.email_index_names_another(client, record), "user")
    if not elsewhere:  # None: fallback, Redis failed, so Postgres alone decides
        row = mapping.user_row(record, counters, now)
        try:
            db.run(
                lambda conn: legacy_import.upsert_users(conn, [row], overwrite=False),
                idempotent=True,
            )
            return
        except IntegrityError as error:
            if violated_constraint(error) not in _UNIQUE_CONSTRAINTS:
                raise
    reattached = _from_redis(
        lambda: reattach_user(client, record.clerkUserId, now=now, loaded=(record, counters)),
        "saved searches",
    )
    if reattached is None:  # fallback, Redis failed: the sign-in is refused as before
        raise EmailInUseError()


def reattach_user(
    client: Redis,
    user_id: str,
    *,
    now: datetime | None = None,
    loaded: tuple[UserData, Counters] | None = None,
) -> int | None:
    """Import a legacy user the backfill quarantined as a conflict (another account holds their
    address, case-insensitively, or a Stripe id of theirs) under their own Clerk id, whatever
    email the session claims: trial dates, tier, subscription status, usage counters (so no
    second trial, no quota given back), Stripe ids, and the saved searches their index lists.
    A field another user's row holds is left out: the address becomes the placeholder
    `{id}@keyflash.local` (also when the original's `email:` index names another user), a
    Stripe customer or subscription id is left empty. The Clerk id is the proof of ownership:
    nothing of the other account is read or changed, and the Redis record keeps its real
    address (the mirror never writes the placeholder over it). One transaction; rows already
    there are kept, so a repeat changes nothing; the searches an unreadable index hides come
    with the backfill's next run (their owner now exists). Returns the saved searches inserted,
    or None when Redis has no record of the user or the identity was erased (a tombstone: the
    person's next account is a fresh one); raises `LegacyRecordError` for a record it cannot
    read or Postgres cannot store, and `RedisFailure`."""
    now = now or utcnow()
    record, counters = loaded or _load_importable(client, user_id, now)
    if record is None:
        return None
    row = mapping.user_row(record, counters, now)
    address_elsewhere = store.email_index_names_another(client, record)
    try:
        listed = store.list_saved_searches(client, user_id) or []
    except LegacyRecordError as error:  # an unreadable index: the backfill's re-run copies them
        log_event(
            "legacy_record_skipped", level=logging.WARNING, key=error.key, reason=error.reason
        )
        listed = []
    searches = []
    for search in listed:
        try:
            searches.append(
                mapping.saved_search_row(storable(keys.saved_search(user_id, search.id), search))
            )
        except LegacyRecordError as error:  # it cannot be copied; the rest are
            log_event(
                "legacy_record_skipped", level=logging.WARNING, key=error.key, reason=error.reason
            )

    def work(conn: Conn) -> tuple[int, list[str]] | None:
        if tombstones.any_erased(conn, [user_id]):
            return None
        left_out = held_by_others(conn, row)
        if address_elsewhere and "email" not in left_out:
            left_out.insert(0, "email")
        free: dict[str, str | None] = dict.fromkeys(left_out)
        if "email" in left_out:
            free["email"] = users.placeholder_email(user_id)
        legacy_import.upsert_users(conn, [{**row, **free}], overwrite=False)
        inserted = legacy_import.upsert_saved_searches(conn, searches, overwrite=False).inserted
        return inserted, left_out

    for attempt in range(3):
        try:
            done = db.transaction(work)
            break
        except IntegrityError as error:  # another row took one of them meanwhile: look again
            if attempt == 2 or violated_constraint(error) not in _UNIQUE_CONSTRAINTS:
                raise
    if done is None:
        log_event("legacy_reattach_skipped", level=logging.WARNING, reason="identity erased")
        return None
    inserted, left_out = done
    log_event(
        "legacy_user_reattached",
        level=logging.WARNING,
        savedSearches=inserted,
        leftOut=",".join(left_out),
    )
    return inserted


def _load_importable(
    client: Redis, user_id: str, now: datetime
) -> tuple[UserData | None, Counters]:
    """The user's legacy record and counters (`store.load_user`), for an import: a record
    Postgres cannot store (a NUL in a Stripe id, say) is a `LegacyRecordError`, as the
    backfill quarantines it, never a failed statement."""
    record, counters = store.load_user(client, user_id, now)
    return (None if record is None else storable(keys.user(user_id), record)), counters


def held_by_others(conn: Conn, row: dict[str, Any]) -> list[str]:
    """The columns of `row` (email, compared case-insensitively; Stripe ids) that another
    user's row holds, each checked alone (`taken_identifiers` names only the first)."""
    held = []
    alone = {"id": row["id"], "email": users.placeholder_email(row["id"])}
    for column in UNIQUE_COLUMNS:
        if row[column] is None:
            continue
        probe = {**alone, "stripeCustomerId": None, "stripeSubscriptionId": None}
        if legacy_import.taken_identifiers(conn, [{**probe, column: row[column]}]):
            held.append(column)
    return held


def provision_user(user_id: str, email: str) -> None:
    """Dual/fallback sign-in: a user only Redis knows is imported (reattached when another
    account holds the address); a new one gets a Postgres row, then a Redis record. After an
    erasure of the id whose Redis keys are still owed, the keys are deleted first."""
    now = utcnow()
    client = _client()
    erasure = keys.erasure(user_id)
    # The id was erased and its legacy keys are still in Redis: they go first, so nothing of
    # the erased account is imported into the fresh one (Redis failing: 503, to be retried).
    if _owed(erasure) and not erase_user(user_id, None, None):
        raise LegacyStoreUnavailableError("legacy store failed finishing an erasure")
    loaded = _from_redis(lambda: _load_importable(client, user_id, now), "user")
    record, counters = loaded or (None, Counters())
    if record is not None:
        _import_user(client, record, counters, now)
        return
    db.run(lambda conn: users.get_or_create(conn, user_id, email), idempotent=True)
    # Marked after the get-or-create commits: if we crash in between, the next sign-in (Redis
    # still missing the user) runs this again.
    key = keys.user(user_id)
    db.run(_mark(key, "user", user_id), idempotent=True)
    _sync(key)


def reattach_on_sign_in(user_id: str) -> bool:
    """Postgres mode, a first sign-in (no row yet): whether the user could be reattached from
    the legacy keys still in Redis. No record, a Redis failure or an unreadable record answers
    no: the caller provisions as for anyone else (a 409 when another account has the email)."""
    try:
        return reattach_user(_client(), user_id) is not None
    except LegacyRecordError as error:
        reason = f"unreadable record: {error.reason}"
    except store.REDIS_ERRORS as error:
        reason = f"redis: {error}"
    log_event("legacy_reattach_failed", level=logging.WARNING, reason=reason)
    return False


def mark_erasure(conn: Conn, user_id: str) -> None:
    """In the erasure's own transaction: record that the user's legacy Redis keys must go.

    Committed with the erasure, so a crash before `erase_user` has deleted the keys
    leaves the mark for the repair job (a redelivered Clerk event is a duplicate and would not
    finish it); increments still owed to the user's counters are dropped, the counters going
    too.
    """
    legacy_repairs.mark(conn, keys.erasure(user_id), "erasure", user_id)
    legacy_repairs.drop_deltas(conn, user_id)  # the erasure deletes the counters


def erase_user(user_id: str, email: str | None, stripe_customer_id: str | None) -> bool:
    """After an erasure committed in Postgres: delete the user's legacy Redis keys, in any mode,
    then clear the erasure's mark (see `mark_erasure`).

    Returns False when Redis failed; the deletion is then recorded in `legacy_repairs` and the
    repair job erases the keys (the user row being gone). Never raises for Redis; a Postgres
    outage while recording raises `DatabaseUnavailableError` (one while clearing only leaves a
    mark the repair job clears).
    """
    client = _client()
    key = keys.erasure(user_id)
    try:
        store.erase_user_keys(client, user_id, email, stripe_customer_id)
    except store.REDIS_ERRORS as error:
        log_event("legacy_erase_deferred", level=logging.WARNING, reason=str(error))
    else:
        try:
            db.run(lambda conn: legacy_repairs.clear(conn, key), idempotent=True)
        except DatabaseUnavailableError:
            log_event("legacy_erase_mark_kept", level=logging.WARNING, key=_logged(key))
        return True
    db.run(_mark(key, "erasure", user_id), idempotent=True)
    return False


def pending_erasures(*, limit: int) -> list[str]:
    """The marks of erasures whose legacy keys Redis failed to delete, oldest attempt first."""
    return db.run(
        lambda conn: legacy_repairs.pending(conn, limit=limit, kind="erasure"), idempotent=True
    )


def finish_erasure(key: str) -> bool | None:
    """Delete the keys an erasure mark (`pending_erasures`) still owes, then the mark, as
    `repair_pending` does: True when done, False when Redis failed again (the mark stays),
    None when an in-flight request holds the mark (it finishes it itself)."""
    client = _client()
    return db.transaction(lambda conn: _sync_locked(conn, key, client, skip_locked=True))


# --- usage --------------------------------------------------------------------------------------


def _legacy_usage_view(
    record: UserData, counters: Counters, limits: Limits, now: datetime
) -> UsageView:
    """The original's rule: the trial has one counter for its whole window, pro a monthly one."""
    if record.tier == "trial":
        expired = now > record.trialExpiresAt
        return UsageView(counters.trial or 0, limits.trial, None, expired)
    return UsageView(counters.monthly or 0, limits.pro, next_month_start(now), False)


def usage(user_id: str, limits: Limits, now: datetime) -> Answer[UsageView] | None:
    """The user's usage as the legacy counters have it; None: read Postgres (fallback).
    Raises `UserNotFoundError` in dual mode when Redis has no such user."""
    loaded = _from_redis(lambda: store.load_user(_client(), user_id, now), "user")
    if loaded is not None and loaded[0] is not None:
        return Answer(_legacy_usage_view(loaded[0], loaded[1], limits, now))
    if mode() == "dual":
        raise UserNotFoundError(user_id)
    return None


def count_usage(conn: Conn, user_id: str, delta: int, at: datetime) -> None:
    """In the transaction that moved the user's Postgres counter by `delta` (a reservation, or
    a release when negative): record that the legacy counter owes it. `mirror_usage` applies
    it after the commit."""
    user = users.get(conn, user_id)
    if user is not None:
        key, expires_at = mapping.counter_target(user, at)
        legacy_repairs.add_delta(conn, key, user_id, delta, expires_at)


def learn_usage(conn: Conn, user_id: str, now: datetime) -> None:
    """Dual, in a reservation's transaction before it counts: raise the user's Postgres counter
    to the legacy counter the reservation will count on, which holds what the TypeScript app
    counted, so the reservation's own check (on Postgres alone, one statement) refuses what
    the larger of the two counts leaves no room for. Parallel reservations of ours still queue
    on the row. Redis failing or an unreadable counter (logged) leaves Postgres to decide alone,
    as before: a write in dual does not fail on Redis."""
    user = users.get(conn, user_id)
    if user is None:  # a first request: the reservation creates the row
        return
    key, _ = mapping.counter_target(user, now)
    try:
        [value] = store.redis_call(store.read_counters)(_client(), [key])
    except store.REDIS_ERRORS as error:
        log_event("legacy_usage_unread", level=logging.WARNING, reason=f"redis: {error}")
        return
    if isinstance(value, LegacyRecordError):
        log_event("legacy_usage_unread", level=logging.WARNING, key=key, reason=value.reason)
    elif value:
        legacy_import.learn_counter(conn, user_id, value, trial=user.tier is UserTier.FREE, now=now)


def mirror_usage(user_id: str) -> None:
    """After a usage change committed: apply the user's owed deltas to the legacy counters and
    let Postgres learn what the TypeScript app added. Never fails the request: what Redis (or
    Postgres, here) refuses stays owed for the repair job."""
    try:
        client = _client()
        db.transaction(lambda conn: _apply_owed(conn, user_id, client))
    except DatabaseUnavailableError:
        log_event("legacy_usage_deferred", level=logging.WARNING)


def _apply_owed(conn: Conn, user_id: str, client: Redis) -> bool | None:
    """True: every owed delta of the user was applied. False: Redis failed or a counter was
    unreadable; those stay owed with the reason. None: nothing owed (or in use elsewhere).

    The user's row is locked (key share) before the deltas, as an erasure locks them: the
    erasure deletes the deltas while holding the row, so taking the deltas first and the row
    last (to learn the counter) deadlocked with it."""
    legacy_repairs.hold_user(conn, user_id)
    owed = legacy_repairs.lock_deltas(conn, user_id)
    if not owed:
        return None
    user = users.get(conn, user_id)
    if user is None:  # erased meanwhile: the erasure deletes the counters, nothing to add
        legacy_repairs.clear_deltas(conn, [d.id for d in owed])
        return True
    now = utcnow()
    try:
        values = store.apply_deltas(
            client,
            [(d.id, d.key, d.delta, mapping.counter_ttl(d.expires_at, now)) for d in owed],
        )
    except store.REDIS_ERRORS as error:
        reason = f"redis: {error}"
        legacy_repairs.fail_deltas(conn, [d.id for d in owed], reason)
        log_event("legacy_usage_failed", level=logging.WARNING, reason=reason)
        return False
    applied = [d for d, value in zip(owed, values, strict=True) if isinstance(value, int)]
    legacy_repairs.clear_deltas(conn, [d.id for d in applied])
    refused = False
    for delta, value in zip(owed, values, strict=True):
        if isinstance(value, str):
            refused = True
            reason = f"legacy key left untouched: {value}"
            legacy_repairs.fail_deltas(conn, [delta.id], reason)
            log_event("legacy_usage_failed", level=logging.WARNING, key=delta.key, reason=reason)
    current, _ = mapping.counter_target(user, now)
    learned = [value for d, value in zip(owed, values, strict=True) if d.key == current]
    if learned and isinstance(learned[-1], int):
        legacy_import.learn_counter(
            conn, user_id, learned[-1], trial=user.tier is UserTier.FREE, now=now
        )
    return not refused


def mirror_user(user_id: str) -> None:
    """After a user row changed in Postgres outside this module (the email sync): copy it to
    `user:{id}` and its index keys. The mark commits on its own, after the caller's change: a
    crash in between loses only this copy, and the next change to the same user repeats it."""
    key = keys.user(user_id)
    db.run(_mark(key, "user", user_id), idempotent=True)
    _sync(key)


def mark_user(conn: Conn, user_id: str) -> None:
    """In the transaction that changes a user row outside this module (billing's tier and
    Stripe ids): owe `user:{id}` a copy, committed with the change, so a crash before
    `sync_user` leaves it to the repair job."""
    legacy_repairs.mark(conn, keys.user(user_id), "user", user_id)


def sync_user(user_id: str) -> None:
    """After that change committed: copy the row to `user:{id}` now (compare-and-set, merged
    over what the TypeScript app stored). Never fails the caller."""
    _sync(keys.user(user_id))


# --- saved searches ---------------------------------------------------------------------------


def list_searches(user_id: str) -> list[SavedSearch]:
    """The user's searches, newest `updatedAt` first, at most 50 (the API's cap, as Postgres
    lists them: an index set may hold more than the original's create allowed).

    Dual: as Redis lists them. Fallback: each search as `get_search` reads it, so the list
    never hides a search Postgres holds behind an index set Redis lost and recreated (a
    FLUSHALL, a crash without persistence), nor shows one whose delete is owed to Redis.
    Postgres (its rows, then the owed marks) is read before Redis: a mark gone means its
    copy is already in Redis."""
    client = _client()
    if mode() == "dual":
        records = _from_redis(lambda: store.list_saved_searches(client, user_id), "saved searches")
        newest = (records or [])[: saved_searches.MAX_PER_USER]
        return [mapping.saved_search_from_record(r) for r in newest]

    def held(conn: Conn) -> tuple[list[SavedSearch], set[str]]:
        rows = saved_searches.list_for_user(conn, user_id).items
        return rows, legacy_repairs.owed_searches(conn, user_id)

    rows, owed = db.run(held, idempotent=True)
    shown = {row.id: row for row in rows}
    records = _from_redis(lambda: store.list_saved_searches(client, user_id), "saved searches")
    for record in records or []:
        if keys.saved_search(user_id, record.id) not in owed:
            shown[record.id] = mapping.saved_search_from_record(record)
    merged = sorted(shown.values(), key=lambda s: (s.updated_at, s.id), reverse=True)
    return merged[: saved_searches.MAX_PER_USER]


def get_search(user_id: str, search_id: str) -> Answer[SavedSearch | None] | None:
    """The search as Redis has it (dual: None when missing); None: read Postgres (fallback),
    also when Redis has it but still owes it a copy (a rename or delete made while Redis
    failed: Redis holds the older state)."""
    client = _client()
    record = _from_redis(
        lambda: store.read_saved_search(client, user_id, search_id), "saved search"
    )
    if mode() == "dual":
        return Answer(None if record is None else mapping.saved_search_from_record(record))
    if record is None or _owed(keys.saved_search(user_id, search_id)):
        return None
    return Answer(mapping.saved_search_from_record(record))


def create_search(user_id: str, search: saved_searches.NewSavedSearch) -> SavedSearch:
    """Save a search in both stores; raises `SavedSearchLimitError` at the cap."""
    search_id = new_uuid()
    key = keys.saved_search(user_id, search_id)

    def work(conn: Conn) -> SavedSearch:
        created = saved_searches.create(conn, user_id, search, search_id=search_id)
        legacy_repairs.mark(conn, key, "saved_search", user_id)
        return created

    created = db.transaction(work)
    _sync(key)
    return created


def update_search(
    user_id: str, search_id: str, *, name: str | None, description: str | None
) -> SavedSearch | None:
    """Rename or describe a search, importing it first when only Redis has it; None when
    neither store has it. `UnstorableSearchError` when it cannot be imported (it stays as it
    was, in Redis)."""
    key = keys.saved_search(user_id, search_id)
    client = _client()

    def held() -> bool:  # what GET finds
        return store.read_saved_search(client, user_id, search_id) is not None

    def work(conn: Conn, *, imported: bool = False) -> SavedSearch | None:
        updated = saved_searches.update_search(
            conn, user_id, search_id, name=name, description=description
        )
        if updated is not None:
            # Dual reads Redis: a search its GET no longer finds is a 404 for the rename too,
            # never brought back into both stores.
            if not imported and _deleted_in_redis(conn, key, held):
                raise _DeletedInRedis()  # the rename is rolled back
            legacy_repairs.mark(conn, key, "saved_search", user_id)
        return updated

    try:
        updated = db.transaction(work)
    except _DeletedInRedis:
        return None
    if updated is None:  # maybe only the TypeScript app has it: import it, then update

        def import_then_work(conn: Conn) -> SavedSearch | None:
            # The owner's row first (the erasure's order), and the legacy item read only
            # after it, and after no erasure of this identity is pending: an item read before
            # an erasure committed, or still in Redis after it, never reaches the account
            # signing in again (the erasure's mark goes only once its keys are gone). Nor is
            # an item whose copy is owed: Postgres holds no row for it, so what is owed is a
            # delete, and the item is the state before it.
            if not legacy_repairs.hold_user(conn, user_id):
                return None
            if legacy_repairs.owed(conn, keys.erasure(user_id)) or legacy_repairs.owed(conn, key):
                return None
            record = _from_redis(
                lambda: store.read_saved_search(client, user_id, search_id), "saved search"
            )
            if record is None:
                return None
            try:
                row = mapping.saved_search_row(storable(key, record))
            except LegacyRecordError:
                raise UnstorableSearchError(search_id) from None
            legacy_import.upsert_saved_searches(conn, [row], overwrite=False)
            return work(conn, imported=True)

        updated = db.transaction(import_then_work)
    if updated is not None:
        _sync(key)
    return updated


def delete_search(user_id: str, search_id: str) -> bool:
    """True when the user's search existed (in either store) and is now gone from both. In
    dual, False (the original's 404) also when only Postgres still had it, the TypeScript app
    having deleted it: that leftover row is deleted all the same."""
    key = keys.saved_search(user_id, search_id)
    client = _client()

    def indexed() -> bool:  # the original's test is index membership
        return store.is_indexed(client, user_id, search_id)

    def work(conn: Conn) -> bool | None:
        """None: Postgres has no such search; else whether Redis still had it."""
        if not saved_searches.delete_search(conn, user_id, search_id):
            return None
        deleted_there = _deleted_in_redis(conn, key, indexed)
        legacy_repairs.mark(conn, key, "saved_search", user_id)
        return not deleted_there

    found = db.transaction(work)
    if found is None:
        # Maybe only the TypeScript app has it. Unless a copy is owed: then the item is what
        # Redis held before a delete of ours.
        if _owed(key) or not _from_redis(indexed, "saved search"):
            return False
        db.run(_mark(key, "saved_search", user_id), idempotent=True)
    _sync(key)
    return found is not False


class _DeletedInRedis(Exception):
    """Rolls back a write on a search the TypeScript app deleted (`_deleted_in_redis`)."""


def _deleted_in_redis(conn: Conn, key: str, held: Callable[[], bool]) -> bool:
    """Dual: whether the TypeScript app deleted the search `key` names, Postgres still holding
    it: Redis no longer `held` it and no copy of ours is owed (an owed copy is a write of ours
    Redis has yet to get). Redis is asked after the mark is looked for, in the writer's
    transaction: a copy clears its mark only once Redis holds it, so one finishing meanwhile
    is never taken for a deletion. Redis failing or holding what the original cannot read is
    no deletion: Postgres decides, as for any write in dual. Fallback: always False (it reads
    Postgres when Redis misses)."""
    if mode() != "dual" or legacy_repairs.owed(conn, key):
        return False
    try:
        return not store.redis_call(held)()
    except LegacyRecordError:
        return False
    except store.REDIS_ERRORS:
        return False


# --- repair -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepairSummary:
    repaired: int
    failed: int
    skipped: int  # held by an in-flight request, which syncs it itself
    remaining: int


def pending_repairs() -> int:
    """How many legacy keys still have to be made to match Postgres, and counter deltas
    Redis still owes."""
    return db.run(
        lambda conn: legacy_repairs.count(conn) + legacy_repairs.count_deltas(conn), idempotent=True
    )


def repair_pending(client: Redis | None = None, *, limit: int = 500) -> RepairSummary:
    """Copy Postgres's state to Redis for up to `limit` marked keys, oldest first, then apply
    the owed counter deltas of up to `limit` users (each user counts as one repair).

    Safe to run at any time and concurrently with requests (rows in use are skipped).
    """
    client = client or _client()
    outcomes: list[bool | None] = []
    for key in db.run(lambda conn: legacy_repairs.pending(conn, limit=limit), idempotent=True):

        def repair(conn: Conn, key: str = key) -> bool | None:
            return _sync_locked(conn, key, client, skip_locked=True)

        outcomes.append(db.transaction(repair))
    for user_id in db.run(
        lambda conn: legacy_repairs.users_owing_deltas(conn, limit=limit), idempotent=True
    ):

        def apply(conn: Conn, user_id: str = user_id) -> bool | None:
            return _apply_owed(conn, user_id, client)

        outcomes.append(db.transaction(apply))
    repaired, failed = outcomes.count(True), outcomes.count(False)
    skipped = len(outcomes) - repaired - failed
    return RepairSummary(repaired, failed, skipped, pending_repairs())
