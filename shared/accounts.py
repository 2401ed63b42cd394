"""Account lifecycle rules: keeping a user's email in step with Clerk, and finishing an erasure.

Clerk's events can arrive late, be retried or be replayed, so the email rules are written to be
safe in any order: a real email is never replaced by the `{id}@keyflash.local` placeholder, and
`user.created` (the oldest information) only ever replaces that placeholder.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import auth, errors, exports, storage
from shared.config import get_settings
from shared.repositories import personal_data, users
from shared.repositories.personal_data import Erasure
from shared.telemetry import log_event

PLACEHOLDER_DOMAIN = "keyflash.local"
EMAIL_IN_USE = errors.EMAIL_IN_USE
SyncOutcome = Literal["created", "updated", "unchanged"]


def placeholder_email(user_id: str) -> str:
    """What we store when Clerk gives no email (the original's fallback, spec §10.19)."""
    return f"{user_id}@{PLACEHOLDER_DOMAIN}"


def is_placeholder(email: str) -> bool:
    return email.lower().endswith(f"@{PLACEHOLDER_DOMAIN}")


def sync_email(
    session: Session,
    user_id: str,
    email: str,
    *,
    replace_real_email: bool,
    now: datetime | None = None,
) -> SyncOutcome:
    """Create the user with `email`, or set it on the existing row when the rules allow.

    `replace_real_email=False` (user.created) only upgrades a placeholder. Raises
    `EmailInUseError` when another account has the email (case-insensitively); a racing insert
    of the same id surfaces as `IntegrityError` (see `is_duplicate_user`) and the caller re-runs.
    """
    existing = users.get(session, user_id)
    if existing is None:
        users.create(session, user_id, email, now=now)
        return "created"
    if existing.email == email or is_placeholder(email):
        return "unchanged"
    if not replace_real_email and not is_placeholder(existing.email):
        return "unchanged"
    users.update_user(session, user_id, email=email, now=now)
    return "updated"


def is_duplicate_user(error: IntegrityError) -> bool:
    """True when `error` is another transaction's insert of the same user id winning a race."""
    constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
    return constraint == "users_pkey"


def erase(session: Session, user_id: str, *, refuse_live_subscription: bool = False) -> Erasure:
    """Erase the user (`personal_data.erase`, in the caller's transaction) and, in the same
    transaction, owe the deletion of their legacy Redis keys, so that a crash between the
    commit and `finish_erasure` cannot lose it (the repair job finishes it)."""
    erasure = personal_data.erase(
        session, user_id, refuse_live_subscription=refuse_live_subscription
    )
    storage.mark_legacy_erasure(session, user_id)
    return erasure


def finish_erasure(user_id: str, erasure: Erasure, *, source: str) -> None:
    """After the erasure committed: the user's legacy Redis keys go too (or stay owed to the
    repair job when Redis fails), this container stops treating the user as provisioned (their
    next call starts a fresh account) and the erasure is logged, with counts only."""
    storage.erase_legacy_user(user_id, None, None)
    # --- Stored data exports -------------------------------------------------------------
    # Their rows went with the user (ON DELETE CASCADE); the objects in storage go now, or,
    # when storage fails, at the exports cron's next sweep (no ready row names them any more).
    exports_deleted = exports.delete_stored(get_settings(), user_id)
    # --- end of stored data exports ------------------------------------------------------
    auth.forget(user_id)
    log_event(
        "account_erased",
        level=logging.INFO,
        source=source,
        userDeleted=erasure.user_deleted,
        historyAnonymised=erasure.history_anonymised,
        apiUsageDeleted=erasure.api_usage_deleted,
        flagsUpdated=erasure.flags_updated,
        webhookEventsScrubbed=erasure.webhook_events_scrubbed,
        metricsScrubbed=erasure.metrics_scrubbed,
        exportsDeleted=exports_deleted,
    )
