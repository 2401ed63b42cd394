"""Account lifecycle rules: keeping a user's email in step with Clerk (its user events applied
exactly once), and finishing an erasure.

Clerk's events can arrive late, be retried or be replayed, so the email rules are written to be
safe in any order: they apply in the order of Clerk's `updated_at`, `user.created` (the oldest
information) only ever replaces the `{id}@keyflash.local` placeholder, and the placeholder
replaces a real email only from a `user.updated` that can be ordered (the user has no address
left in Clerk, which may give it to someone else).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PlainValidator
from sqlalchemy.exc import IntegrityError

from shared import auth, db, exports, storage
from shared.clock import utcnow
from shared.config import get_settings
from shared.db import Conn, violated_constraint
from shared.errors import EmailInUseError
from shared.repositories import personal_data, subscriptions, tombstones, users, webhook_events
from shared.repositories.personal_data import Erasure
from shared.telemetry import log_event

SyncOutcome = Literal["created", "updated", "unchanged", "stale", "after_erasure"]
placeholder_email = users.placeholder_email
is_placeholder = users.is_placeholder


def sync_email(
    conn: Conn,
    user_id: str,
    email: str,
    *,
    replace_real_email: bool,
    changed_at: datetime | None = None,
    now: datetime | None = None,
) -> SyncOutcome:
    """Create the user with `email`, or set it on the existing row when the rules allow.

    `changed_at`: Clerk's `updated_at` of the event. An event older than the last one applied
    (`clerkUpdatedAt`) is stale and changes nothing: Svix does not deliver in order.
    `replace_real_email=False` (user.created) only upgrades a placeholder. With it (user.updated)
    the placeholder `email` (no primary address left) releases a real one, but only from an
    event with `changed_at`: one without cannot be told from a late delivery. Raises
    `EmailInUseError` when another account has the email (case-insensitively); a racing insert
    of the same id surfaces as `IntegrityError` (see `is_duplicate_user`) and the caller re-runs.

    An erased identity (its id tombstoned, no row) is never recreated ("after_erasure"): after
    user.deleted the event is a late delivery, after DELETE /api/me the person's next sign-in
    provisions the fresh account. An erasure in progress holds the row's lock, so the read below
    waits for it and the tombstone check, a later statement, sees what it committed.
    """
    existing = users.get(conn, user_id, lock=True)
    if existing is None:
        if tombstones.any_erased(conn, [user_id]):
            return "after_erasure"
        users.create(conn, user_id, email, clerk_updated_at=changed_at, now=now)
        return "created"
    stamp = existing.clerk_updated_at
    if changed_at is not None and stamp is not None and changed_at < stamp:
        return "stale"
    newer = changed_at is not None and (stamp is None or changed_at > stamp)
    releases = replace_real_email and changed_at is not None
    keep = (
        existing.email == email
        or (is_placeholder(email) and not releases)
        or (not replace_real_email and not is_placeholder(existing.email))
    )
    if keep:
        if newer:  # later events must still compare against this one
            users.update_user(conn, user_id, clerk_updated_at=changed_at, now=now)
        return "unchanged"
    if newer:
        users.update_user(conn, user_id, email=email, clerk_updated_at=changed_at, now=now)
    else:
        users.update_user(conn, user_id, email=email, now=now)
    return "updated"


def is_duplicate_user(error: IntegrityError) -> bool:
    """True when `error` is another transaction's insert of the same user id winning a race."""
    return violated_constraint(error) == "users_pkey"


def erase(
    conn: Conn,
    user_id: str,
    *,
    refuse_live_subscription: bool = False,
    clerk_deleted: bool = False,
) -> Erasure:
    """Erase the user (`personal_data.erase`, in the caller's transaction) and, in the same
    transaction, owe the deletion of their legacy Redis keys, so that a crash between the
    commit and `finish_erasure` cannot lose it (the repair job finishes it). The erasure's two
    retention exceptions are written first, in the same transaction: the tombstone that keeps
    the trial from starting over (`shared.repositories.tombstones`; `clerk_deleted`, Clerk's
    user.deleted: flagged so that the id is never provisioned again) and billing's hash of the
    Stripe customer (`_remember_billing_customer`). The tombstone locks the user's row first;
    organizations are locked only after it (the team keywords given back), the order a team
    search takes them in.

    With no row to lock (the id erased already, or never created here) the erasure locks no
    user row at all: a row created meanwhile (the person signing in again while a second
    erasure of theirs runs) is a new account, left to its own erasure. Locking it after the
    tombstone and the rows `personal_data.erase` changes would invert the order above: two
    erasures of one person deadlocked that way.
    """
    found = tombstones.record(conn, user_id, clerk_deleted=clerk_deleted)
    if found:
        _remember_billing_customer(conn, user_id, refusing=refuse_live_subscription)
    erasure = personal_data.erase(
        conn, user_id, refuse_live_subscription=refuse_live_subscription, user_row=found
    )
    storage.mark_legacy_erasure(conn, user_id)
    return erasure


def _remember_billing_customer(conn: Conn, user_id: str, *, refusing: bool) -> None:
    """Billing's step of an erasure: remember the Stripe customer (as a hash), so its later
    events are recorded as processed instead of failing for days. A subscription still live is
    NOT cancelled here (Stripe holds the billing relationship; docs/billing.md, "Erasure"): it
    is logged, without ids, for support, who find it through the next event's id."""
    status = subscriptions.remember_erased_customer(conn, user_id, now=utcnow())
    if status in subscriptions.LIVE_STATUSES and not refusing:
        log_event("erased_with_live_subscription", level=logging.WARNING, status=status)


def finish_erasure(
    user_id: str, erasure: Erasure, *, source: str, storage_deadline: float | None
) -> None:
    """After the erasure committed: the user's legacy Redis keys go too (or stay owed to the
    repair job when Redis fails), this container stops treating the user as provisioned (their
    next call starts a fresh account) and the erasure is logged, with counts only."""
    storage.erase_legacy_user(user_id, None, None)
    # Stored data exports: their rows went with the user (ON DELETE CASCADE); the objects and
    # incomplete uploads go now (S3 answering by `storage_deadline`) or, when storage fails, at
    # the exports cron's sweep.
    removed = exports.delete_stored(get_settings(), user_id, storage_deadline)
    auth.forget(user_id)
    log_event(
        "account_erased",
        level=logging.INFO,
        source=source,
        userDeleted=erasure.user_deleted,
        membershipsDeleted=erasure.memberships_deleted,
        teamSearchesKept=erasure.team_searches_kept,
        teamKeywordsGivenBack=erasure.team_keywords_given_back,
        historyAnonymised=erasure.history_anonymised,
        apiUsageDeleted=erasure.api_usage_deleted,
        flagsUpdated=erasure.flags_updated,
        webhookEventsScrubbed=erasure.webhook_events_scrubbed,
        metricsScrubbed=erasure.metrics_scrubbed,
        exportsDeleted=removed.objects,
        exportUploadsAborted=removed.uploads,
    )


# --------------------------------------------------------------------------- Clerk user events

CLERK = "clerk"  # the webhook ledger's provider
CLERK_USER_EVENTS = frozenset({"user.created", "user.updated", "user.deleted"})

Text = Annotated[str, Field(min_length=1, max_length=320)]
MAX_MILLISECONDS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def _as_sent(value: object) -> str:
    """A string of 1 to 320 characters, kept as Python holds it: pydantic's `str` refuses a
    lone surrogate, which matters only in the primary address (`ClerkUser.kept`)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 320:
        raise ValueError("a string of 1 to 320 characters")
    return value


class ClerkEmail(BaseModel):
    id: Text
    email_address: Annotated[str, PlainValidator(_as_sent)]


class ClerkUser(BaseModel):
    """The parts of Clerk's User object we keep; everything else is ignored, never stored."""

    id: Annotated[str, Field(min_length=1, max_length=255)]
    email_addresses: list[ClerkEmail] = []
    primary_email_address_id: str | None = None
    # Unix milliseconds of the user's last change (user.deleted carries none).
    updated_at: Annotated[int, Field(ge=0, le=MAX_MILLISECONDS, strict=True)] | None = None

    def changed_at(self) -> datetime | None:
        """When Clerk last changed the user: the order in which its events apply."""
        if self.updated_at is None:
            return None
        return datetime.fromtimestamp(self.updated_at / 1000, UTC)

    def primary_email(self) -> str:
        for address in self.email_addresses:
            if address.id == self.primary_email_address_id and address.email_address.strip():
                return address.email_address.strip()
        return placeholder_email(self.id)

    def kept(self) -> tuple[str, str]:
        """What of the user we store: the id and the primary email (not the other addresses)."""
        return self.id, self.primary_email()


def _apply(conn: Conn, delivery: str, kind: str, user: ClerkUser) -> str | Erasure | None:
    """Claim the delivery and apply its effect in the caller's transaction; None = duplicate."""
    if webhook_events.claim(conn, delivery, kind, None, provider=CLERK) is None:
        return None
    outcome: str | Erasure
    if kind == "user.deleted":
        outcome = erase(conn, user.id, clerk_deleted=True)
    else:
        outcome = sync_email(
            conn,
            user.id,
            user.primary_email(),
            replace_real_email=kind == "user.updated",
            changed_at=user.changed_at(),
        )
    webhook_events.mark_processed(conn, delivery)
    return outcome


def _run(delivery: str, kind: str, user: ClerkUser) -> str | Erasure | None:
    try:
        return db.transaction(lambda conn: _apply(conn, delivery, kind, user))
    except IntegrityError as error:
        if not is_duplicate_user(error):
            raise
    # The user's first API call created the row while we were creating it; it is there now.
    return db.transaction(lambda conn: _apply(conn, delivery, kind, user))


def _erase_created_meanwhile(user_id: str, storage_deadline: float | None) -> None:
    """After a user.deleted that found no row to erase: a first sign-in running meanwhile may
    have created one the erasure could not see yet (committed after its read). Looking again
    once the deletion committed finds it; a sign-in committing later sees the flagged tombstone
    and removes its row itself (`users.get_or_create`). Either way no row outlives the deletion."""
    if db.run(lambda conn: users.get(conn, user_id), idempotent=True) is None:
        return
    erasure = db.transaction(lambda conn: erase(conn, user_id, clerk_deleted=True))
    finish_erasure(user_id, erasure, source="clerk_webhook", storage_deadline=storage_deadline)


def apply_clerk_event(
    delivery: str, kind: str, user: ClerkUser, storage_deadline: float | None
) -> dict[str, bool]:
    """Apply one verified Clerk user event exactly once: the delivery's `svix-id` is claimed in
    the webhook ledger in the transaction of its effect; None from the claim is a replay.
    `EmailInUseError` when the new email belongs to another account (nothing changed). An
    erasure's storage calls end by `storage_deadline` (`finish_erasure`)."""
    try:
        outcome = _run(delivery, kind, user)
    except EmailInUseError:
        log_event("clerk_webhook", type=kind, outcome="email_in_use")
        raise
    if outcome is None:
        log_event("clerk_webhook", type=kind, outcome="duplicate")
        return {"received": True, "duplicate": True}
    if isinstance(outcome, Erasure):
        finish_erasure(user.id, outcome, source="clerk_webhook", storage_deadline=storage_deadline)
        if not outcome.user_deleted:
            _erase_created_meanwhile(user.id, storage_deadline)
        outcome = "erased"
    elif outcome != "after_erasure":
        storage.mirror_user(user.id)  # the legacy copy follows the email change (dual/fallback)
    log_event("clerk_webhook", type=kind, outcome=outcome)
    return {"received": True}
