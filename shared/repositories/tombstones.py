"""Account tombstones: erasure must not reset a trial.

Erasing an account deletes everything about the person, but a trial user who erased and signed
in again (same Clerk identity, or a new one with the same email) would otherwise get a fresh
trial and a full quota each time. So the erasure keeps, in the same transaction, one row per
keyed identity: `HMAC-SHA256(ACCOUNT_HMAC_SECRET, "id:" + Clerk user id)` and, for a real
email, `HMAC-SHA256(…, "email:" + normalised email)`, each with the trial's end and the keywords
used. Nothing else: not the id, not the email, no dates but the trial's end. Without the key
the rows cannot be linked to a person; with it, only someone who already knows an id or email
can test it. Provisioning looks the identity up in the statement that creates the user, and
the new row continues that trial (its end, its usage) instead of starting a new one.

Clerk's `user.deleted` also flags the id's row `clerkDeleted`: Clerk never reuses an id, so
provisioning creates no row for it again (a session token outlives the deletion by up to a
minute). An erasure through DELETE /api/me leaves it unset: that person may sign in again.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Subquery,
    Text,
    Update,
    any_,
    bindparam,
    exists,
    false,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert

from shared.clock import utcnow
from shared.config import get_settings
from shared.db import Conn
from shared.models.tombstones import AccountTombstone
from shared.models.users import User
from shared.quotas import trial_end
from shared.telemetry import database_operation

# Only where neither ACCOUNT_HMAC_SECRET nor RATE_LIMIT_HMAC_SECRET is set, which production
# refuses (shared.config): stable across processes, so local tombstones keep working.
_DEVELOPMENT_KEY = "keyflash-development-only-account-hmac-key"
_PLACEHOLDER_SUFFIX = "@keyflash.local"  # `{id}@keyflash.local`: the id key covers it


def normalised_email(email: str) -> str:
    return email.strip().lower()


def _digest(key: bytes, kind: str, value: str) -> str:
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def keys(user_id: str, email: str | None) -> list[str]:
    """The identity's tombstone keys: its Clerk id's, and its email's unless a placeholder."""
    key = (get_settings().account_hmac_key or _DEVELOPMENT_KEY).encode()
    found = [_digest(key, "id", user_id)]
    address = normalised_email(email) if email else ""
    if email and not address.endswith(_PLACEHOLDER_SUFFIX):
        found.append(_digest(key, "email", address))
    return found


def found_under(identity: ColumnElement[Any]) -> Subquery:
    """One row for these keys (`identity`: a text array, e.g. a bound `keys(...)`): `ends`, the
    earliest trial end tombstoned (NULL: none), `used`, the most keywords (0: none), and
    `deleted`, whether Clerk deleted the id (only an id's row is ever flagged)."""
    return (
        select(
            func.min(AccountTombstone.trial_ends_at).label("ends"),
            func.coalesce(func.max(AccountTombstone.keywords_used), 0).label("used"),
            func.coalesce(func.bool_or(AccountTombstone.clerk_deleted), false()).label("deleted"),
        )
        .where(AccountTombstone.key == any_(identity))
        .subquery("tombstone")
    )


# The user row was just created, by a statement whose snapshot may predate an erasure of the
# same identity (a first request whose snapshot saw no tombstone yet, while a concurrent first
# request created the row and an erasure removed it and committed): apply what that statement
# could not see.
def _settle_statement() -> Update:
    tombstone = found_under(bindparam("keys", type_=ARRAY(Text())))
    used = tombstone.c.used + User.keyword_searches_this_month
    return (
        update(User)
        .where(
            User.id == bindparam("user_id"),
            tombstone.c.ends.is_not(None),
            or_(User.trial_ends_at > tombstone.c.ends, User.keyword_searches_total < used),
        )
        .values(
            trial_ends_at=func.least(User.trial_ends_at, tombstone.c.ends),
            keyword_searches_total=func.greatest(User.keyword_searches_total, used),
        )
        .returning(User.keyword_searches_total, User.trial_ends_at)
    )


_SETTLE = _settle_statement()


@dataclass(frozen=True, slots=True)
class Settled:
    total: int
    trial_ends_at: datetime


@database_operation("settleTombstone")
def settle(conn: Conn, user_id: str, email: str) -> Settled | None:
    """For a user row its caller has just created: continue a tombstoned trial the creating
    statement could not see. None when there was nothing to apply (the usual case)."""
    row = conn.session.execute(
        _SETTLE,
        {"user_id": user_id, "keys": keys(user_id, email)},
        execution_options={"synchronize_session": False},
    ).first()
    return None if row is None else Settled(total=row[0], trial_ends_at=row[1])


@database_operation("recordTombstone")
def record(conn: Conn, user_id: str, *, clerk_deleted: bool = False) -> bool:
    """In the erasure's transaction, before the user row goes: keep the trial's end and the
    keywords used under the user's keys (an earlier tombstone of the same identity only ever
    gets stricter). The row is locked, so no request can count usage the tombstone misses.
    `clerk_deleted` (Clerk's user.deleted) flags the id's row, whatever was there before; a
    flag once set stays.

    With no row, False (no account to keep), and two cases told apart by the id's tombstone:
    - it exists: the id was erased already (a double click whose second erasure waited on the
      first one's lock; DELETE /api/me, then Clerk's user.deleted). That tombstone was recorded
      from the real row and stays as it is: nothing here could make it more accurate.
    - it does not: Clerk's `user.deleted` before any event or sign-in created a row here. The
      id's tombstone alone, its trial over: Clerk never reuses an id, so it only marks the id
      erased, and a late `user.created` creates nothing.
    One statement decides (ON CONFLICT): an erasure still writing the id's tombstone is waited
    for, and an existing one keeps its trial (only its flag may be set)."""
    user = conn.session.scalars(
        select(User).where(User.id == user_id).with_for_update()
    ).one_or_none()
    if user is None:
        [key] = keys(user_id, None)
        never_created = insert(AccountTombstone).values(
            key=key, trial_ends_at=utcnow(), keywords_used=0, clerk_deleted=clerk_deleted
        )
        conflict = [AccountTombstone.key]
        conn.session.execute(
            never_created.on_conflict_do_update(
                index_elements=conflict, set_={AccountTombstone.clerk_deleted: True}
            )
            if clerk_deleted
            else never_created.on_conflict_do_nothing(index_elements=conflict)
        )
        return False
    id_key, *email_key = keys(user.id, user.email)
    kept = {"trial_ends_at": trial_end(user), "keywords_used": user.keyword_searches_total}
    rows = [{"key": id_key, "clerk_deleted": clerk_deleted, **kept}]
    rows += [{"key": key, "clerk_deleted": False, **kept} for key in email_key]
    statement = insert(AccountTombstone).values(rows)
    conn.session.execute(
        statement.on_conflict_do_update(
            index_elements=[AccountTombstone.key],
            set_={
                AccountTombstone.trial_ends_at: func.least(
                    AccountTombstone.trial_ends_at, statement.excluded.trialEndsAt
                ),
                AccountTombstone.keywords_used: func.greatest(
                    AccountTombstone.keywords_used, statement.excluded.keywordsUsed
                ),
                AccountTombstone.clerk_deleted: or_(
                    AccountTombstone.clerk_deleted, statement.excluded.clerkDeleted
                ),
            },
        )
    )
    return True


def clerk_deleted(user_id: str) -> ColumnElement[bool]:
    """True where Clerk deleted this id (its tombstone flagged by user.deleted)."""
    [key] = keys(user_id, None)
    return exists().where(AccountTombstone.key == key, AccountTombstone.clerk_deleted)


@database_operation("findDeletedClerkUser")
def deleted_in_clerk(conn: Conn, user_id: str) -> bool:
    """Whether Clerk deleted this id: it never comes back. Asked only where no row was found
    or created for the id, never for a live user."""
    return bool(conn.session.execute(select(clerk_deleted(user_id))).scalar())


@database_operation("findErasedAccount")
def any_erased(conn: Conn, user_ids: Sequence[str]) -> bool:
    """True when one of these Clerk user ids had an account that was erased: every erasure of
    an account keeps its id's tombstone (`record`), and nothing else writes one. So where no
    user row has the id now, it tells an erased account from one never provisioned here (a
    returning user keeps the tombstone)."""
    if not user_ids:
        return False
    statement = (
        select(AccountTombstone.key)
        .where(AccountTombstone.key.in_([keys(user_id, None)[0] for user_id in user_ids]))
        .limit(1)
    )
    return conn.session.execute(statement).first() is not None
