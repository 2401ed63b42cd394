"""Where users, usage and saved searches live during the Redis → Postgres migration.

`STORAGE_MODE` picks the phase (docs/original-app.md#original-prisma-schema, the original's
docs/DATABASE.md plan):
- `postgres` (default, phase 3): Postgres only, through `shared.repositories`; Redis keeps only
  caches and rate limits. Behaviour is exactly that of the repositories called directly.
- `dual` (phase 1): writes go to both stores and reads come from Redis, in the original layout,
  so the TypeScript app, still reading and writing Redis, keeps working.
- `fallback` (phase 2): writes as in dual; reads try Redis and use Postgres when the key is
  missing or unreadable, Redis fails, or a copy to it is still owed; the list shows what
  either store holds.

This module is the switch and the postgres path. Dual and fallback, and everything that reads
or writes the original's layout (reattaching a legacy user, erasing their keys), are in
`shared.legacy.bridge`, with the write policy they follow. It is imported on first use: a
container in postgres mode signs users in, counts usage and serves saved searches without
loading the legacy layer or the Upstash client for it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from shared import db
from shared.clock import utcnow
from shared.config import get_settings
from shared.db import Conn
from shared.errors import UserNotFoundError
from shared.models.saved_searches import SavedSearch
from shared.quotas import Limits, UsageView, usage_view
from shared.repositories import saved_searches, users

Mode = Literal["dual", "fallback", "postgres"]


def mode() -> Mode:
    return get_settings().storage_mode


# --- users ------------------------------------------------------------------------------------


def provision_user(user_id: str, email: str) -> None:
    """Make sure the signed-in user has a Postgres row (and, in dual/fallback, a Redis record).

    A legacy user with no Postgres row (one the backfill quarantined as a conflict, say) is
    reattached by their Clerk id (`shared.legacy.bridge.reattach_user`), in every mode while
    Redis still has their record, whatever `email` the session claims. Raises
    `EmailInUseError` when another account has the email and Redis has no record of this user.
    """
    if mode() != "postgres":
        from shared.legacy import bridge

        bridge.provision_user(user_id, email)
        return
    if get_settings().redis_configured and _first_sign_in(user_id):
        from shared.legacy import bridge

        if bridge.reattach_on_sign_in(user_id):
            return
    db.run(lambda conn: users.get_or_create(conn, user_id, email), idempotent=True)


def _first_sign_in(user_id: str) -> bool:
    """Whether the user has no row yet (once per warm container and user: `shared.auth`)."""
    return db.run(lambda conn: users.get(conn, user_id) is None, idempotent=True)


def mark_legacy_erasure(conn: Conn, user_id: str) -> None:
    """In the erasure's own transaction: record that the user's legacy Redis keys must go
    (`shared.legacy.bridge.mark_erasure`). Without Redis configured there is nothing to delete."""
    if get_settings().redis_configured:
        from shared.legacy import bridge

        bridge.mark_erasure(conn, user_id)


def erase_legacy_user(user_id: str, email: str | None, stripe_customer_id: str | None) -> bool:
    """After an erasure committed in Postgres: delete the user's legacy Redis keys, in any mode
    (`shared.legacy.bridge.erase_user`). False when Redis failed and the repair job will."""
    if not get_settings().redis_configured:
        return True
    from shared.legacy import bridge

    return bridge.erase_user(user_id, email, stripe_customer_id)


def pending_legacy_erasures(*, limit: int) -> list[str]:
    """Erasures whose legacy Redis keys are still owed (Redis failed at the time), oldest
    attempt first; none without Redis configured."""
    if not get_settings().redis_configured:
        return []
    from shared.legacy import bridge

    return bridge.pending_erasures(limit=limit)


def finish_legacy_erasure(key: str) -> bool | None:
    """Delete what one of those erasures owes (`shared.legacy.bridge.finish_erasure`)."""
    from shared.legacy import bridge

    return bridge.finish_erasure(key)


def mirror_user(user_id: str) -> None:
    """After a user row changed in Postgres outside this module (the email sync): copy it to
    the legacy layout. A no-op in postgres mode."""
    if mode() != "postgres":
        from shared.legacy import bridge

        bridge.mirror_user(user_id)


def mark_user(conn: Conn, user_id: str) -> None:
    """In the transaction that changes a user row outside this module (billing's tier and
    Stripe ids): owe the legacy record a copy, committed with the change, so a crash before
    `sync_user` leaves it to the repair job. A no-op in postgres mode."""
    if mode() != "postgres":
        from shared.legacy import bridge

        bridge.mark_user(conn, user_id)


def sync_user(user_id: str) -> None:
    """After that change committed: copy the row to the legacy record now. Never fails the
    caller. A no-op in postgres mode."""
    if mode() != "postgres":
        from shared.legacy import bridge

        bridge.sync_user(user_id)


# --- usage --------------------------------------------------------------------------------------


def usage(user_id: str, limits: Limits, *, now: datetime | None = None) -> UsageView:
    """What the user has used against their tier's quota. Raises `UserNotFoundError`."""
    now = now or utcnow()
    if mode() != "postgres":
        from shared.legacy import bridge

        answer = bridge.usage(user_id, limits, now)
        if answer is not None:
            return answer.value
    user = db.run(lambda conn: users.get(conn, user_id), idempotent=True)
    if user is None:
        raise UserNotFoundError(user_id)
    return usage_view(user, limits, now)


def learn_legacy_usage(conn: Conn, user_id: str, now: datetime) -> None:
    """In a reservation's transaction, before it counts: in dual, where the TypeScript app
    still counts in Redis, raise the Postgres counter to the legacy one
    (`shared.legacy.bridge.learn_usage`). A no-op in the other modes: the reservation stays
    one statement in postgres mode, and in fallback only this port counts."""
    if mode() == "dual":
        from shared.legacy import bridge

        bridge.learn_usage(conn, user_id, now)


def count_legacy_usage(conn: Conn, user_id: str, delta: int, at: datetime) -> None:
    """In the transaction that moved the user's Postgres counter by `delta` (a reservation, or
    a release when negative): record that the legacy counter owes it. A no-op in postgres mode.
    `mirror_usage` applies it after the commit."""
    if mode() != "postgres" and delta != 0:
        from shared.legacy import bridge

        bridge.count_usage(conn, user_id, delta, at)


def mirror_usage(user_id: str) -> None:
    """After a usage change committed: apply the user's owed deltas to the legacy counters.
    Never fails the request. A no-op in postgres mode."""
    if mode() != "postgres":
        from shared.legacy import bridge

        bridge.mirror_usage(user_id)


# --- saved searches ---------------------------------------------------------------------------


def list_searches(user_id: str) -> list[SavedSearch]:
    """The user's searches, most recently updated first (at most 50)."""
    if mode() != "postgres":
        from shared.legacy import bridge

        return bridge.list_searches(user_id)
    page = db.run(lambda conn: saved_searches.list_for_user(conn, user_id), idempotent=True)
    return page.items


def get_search(user_id: str, search_id: str) -> SavedSearch | None:
    if mode() != "postgres":
        from shared.legacy import bridge

        found = bridge.get_search(user_id, search_id)
        if found is not None:
            return found.value
    return db.run(lambda conn: saved_searches.get(conn, user_id, search_id), idempotent=True)


def create_search(user_id: str, search: saved_searches.NewSavedSearch) -> SavedSearch:
    """Save a search; raises `SavedSearchLimitError` at the cap."""
    if mode() != "postgres":
        from shared.legacy import bridge

        return bridge.create_search(user_id, search)
    return db.transaction(lambda conn: saved_searches.create(conn, user_id, search))


def update_search(
    user_id: str, search_id: str, *, name: str | None, description: str | None
) -> SavedSearch | None:
    """Rename or describe a search; None when the user has no such search."""
    if mode() != "postgres":
        from shared.legacy import bridge

        return bridge.update_search(user_id, search_id, name=name, description=description)
    return db.run(
        lambda conn: saved_searches.update_search(
            conn, user_id, search_id, name=name, description=description
        )
    )


def delete_search(user_id: str, search_id: str) -> bool:
    """True when the user's search existed (in either store) and is now gone."""
    if mode() != "postgres":
        from shared.legacy import bridge

        return bridge.delete_search(user_id, search_id)
    return db.run(lambda conn: saved_searches.delete_search(conn, user_id, search_id))
