"""Keyword reservations: the quota a keyword search holds until it is recorded.

The lifecycle, each step one statement:
- `users.reserve_keywords(..., hold=Hold(...))` counts the keywords and writes the row (a team
  search: `org_quota.reserve_keywords`, the row naming the organization whose quota holds them);
- `confirm_statement` (part of the statement recording the search) deletes it: kept;
- `release` deletes it and gives the keywords back (the provider failed);
- `release_expired` (the reconcile_reservations cron) does the same for every reservation past
  its `expiresAt`: the function holding it was killed before it could confirm or release.

Giving back is always "delete the reservation, and subtract what the delete returned", so a
reservation is given back at most once whoever races (a release and the cron, two crons), to
the user, or to the organization when the row names one. The monthly counter is only
decremented while it still counts the reservation's month.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Integer, String, bindparam, column, delete, exists, select, text

from shared.clock import utcnow
from shared.db import Conn
from shared.models import UTCDateTime
from shared.models.reservations import KeywordReservation
from shared.models.users import User
from shared.repositories import organizations
from shared.telemetry import database_operation


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation to write with the quota increment."""

    id: str
    expires_at: datetime


_GIVE_BACK = """
WITH released AS (
  DELETE FROM keyword_reservations WHERE id IN ({selected})
  RETURNING "userId", "organizationId", keywords, "reservedAt"
), per_user AS (
  SELECT r."userId" AS owner_id,
         sum(r.keywords) AS total,
         coalesce(sum(r.keywords) FILTER (
           WHERE u."monthlyResetAt" < date_trunc('month', r."reservedAt") + interval '1 month'
         ), 0) AS this_month
  FROM released r JOIN users u ON u.id = r."userId"
  WHERE r."organizationId" IS NULL
  GROUP BY r."userId"
), given AS (
UPDATE users SET
  "keywordSearchesTotal" = greatest(users."keywordSearchesTotal" - p.total, 0),
  "keywordSearchesThisMonth" = greatest(users."keywordSearchesThisMonth" - p.this_month, 0),
  "updatedAt" = :now
FROM per_user p
WHERE users.id = p.owner_id
RETURNING users.id
), per_org AS (
  SELECT r."organizationId" AS owner_id,
         sum(r.keywords) AS total,
         coalesce(sum(r.keywords) FILTER (
           WHERE o."monthlyResetAt" < date_trunc('month', r."reservedAt") + interval '1 month'
         ), 0) AS this_month
  FROM released r JOIN organizations o ON o.id = r."organizationId"
  GROUP BY r."organizationId"
), given_to_orgs AS (
UPDATE organizations SET
  "keywordSearchesTotal" = greatest(organizations."keywordSearchesTotal" - p.total, 0),
  "keywordSearchesThisMonth" =
    greatest(organizations."keywordSearchesThisMonth" - p.this_month, 0),
  "updatedAt" = :now
FROM per_org p
WHERE organizations.id = p.owner_id
RETURNING organizations.id
)
SELECT r."userId", r."organizationId", r.keywords, r."reservedAt"
FROM released r
WHERE (r."organizationId" IS NULL AND r."userId" IN (SELECT id FROM given))
   OR r."organizationId" IN (SELECT id FROM given_to_orgs)
"""
_COLUMNS = (
    column("userId", String()),
    column("organizationId", String()),
    column("keywords", Integer()),
    column("reservedAt", UTCDateTime()),
)
_RELEASE = (
    text(_GIVE_BACK.format(selected=":id"))
    .bindparams(bindparam("now", type_=UTCDateTime()))
    .columns(*_COLUMNS)
)
_RELEASE_EXPIRED = (
    text(
        _GIVE_BACK.format(
            selected='SELECT id FROM keyword_reservations WHERE "expiresAt" < :now '
            'ORDER BY "expiresAt" LIMIT :limit FOR UPDATE SKIP LOCKED'
        )
    )
    .bindparams(bindparam("now", type_=UTCDateTime()))
    .columns(*_COLUMNS)
)

# An erasure's step: every reservation the user holds against a team's quota (a personal one
# goes with the user's row, and its counters with it).
_RELEASE_TEAM_HOLDS = (
    text(
        _GIVE_BACK.format(
            selected='SELECT id FROM keyword_reservations WHERE "userId" = :user_id '
            'AND "organizationId" IS NOT NULL'
        )
    )
    .bindparams(bindparam("now", type_=UTCDateTime()))
    .columns(*_COLUMNS)
)


class Released(NamedTuple):
    """What `release_expired` gave back: totals over every reservation, and each personal one
    (user, keywords, when): what the legacy usage counters owe (a team's have none)."""

    reservations: int
    keywords: int
    given_back: list[tuple[str, int, datetime]]


def confirm_statement(reservation_id: str, user_id: str, org_id: str | None = None) -> Any:
    """The DELETE that confirms a reservation, for a caller's data-modifying CTE.

    It share-locks the user's row before the reservation's (a one-time filter runs before the
    scan): an erasure locks the user row first and then deletes the reservations by cascade, so
    taking the two in the same order is what keeps a search recorded during an erasure from
    deadlocking with it. A team search's (`org_id`) locks its organization's row in between
    (`organizations.live_team`), as the history row beside it does and before the reservation,
    which the organization's deletion removes after tombstoning the row: the same order. An
    erased user, or a deleted organization, leaves nothing to confirm."""
    owner = select(User.id).where(User.id == user_id).with_for_update(read=True, key_share=True)
    if org_id is not None:
        owner = organizations.live_team(org_id, user_id)
    return delete(KeywordReservation).where(KeywordReservation.id == reservation_id, exists(owner))


@database_operation("releaseReservation")
def release(conn: Conn, reservation_id: str, *, now: datetime | None = None) -> int:
    """Give a reservation back; returns the keywords given back (0 if it was already gone)."""
    rows = conn.session.execute(_RELEASE, {"id": reservation_id, "now": now or utcnow()}).all()
    return sum(int(row.keywords) for row in rows)


@database_operation("releaseExpiredReservations")
def release_expired(conn: Conn, *, now: datetime, limit: int) -> Released:
    """Give back up to `limit` reservations past their expiry."""
    rows = conn.session.execute(_RELEASE_EXPIRED, {"now": now, "limit": limit}).all()
    personal = [
        (str(row.userId), int(row.keywords), row.reservedAt)
        for row in rows
        if row.organizationId is None
    ]
    return Released(len(rows), sum(int(row.keywords) for row in rows), personal)


@database_operation("releaseTeamReservations")
def release_team_holds(conn: Conn, user_id: str, *, now: datetime) -> int:
    """Give back to each organization what `user_id` holds against its quota (their erasure):
    the keywords given back."""
    rows = conn.session.execute(_RELEASE_TEAM_HOLDS, {"user_id": user_id, "now": now}).all()
    return sum(int(row.keywords) for row in rows)
