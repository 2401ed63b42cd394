"""An organization's pooled keyword quota: what a team search reserves (docs/organizations.md).

ONE statement gets-or-creates the organization (the mirror may not have seen it yet: the token
is proof enough, as in `organizations.ensure`), counts the keywords against its monthly quota
when they fit (`this month (lazily reset) + n <= the tier's limit`, checked on the locked row,
so parallel searches never overshoot) and writes the search's `keyword_reservations` row with
the organization's id. From there the reservation lives as a personal one does
(`shared.repositories.reservations`): confirmed by the search's record, given back to the
organization by a provider failure or by the reconcile_reservations cron.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.clock import month_start
from shared.db import Conn, HotStatement, execute_hot
from shared.errors import OrganizationNotFoundError, QuotaExceededError, UserNotFoundError
from shared.models import UserTier
from shared.models.organizations import Organization
from shared.models.users import User
from shared.quotas import OrgLimits, org_usage_view
from shared.repositories.reservations import Hold
from shared.repositories.rows import db_time
from shared.telemetry import database_operation

# The member's row is share-locked first (a one-time filter, evaluated before the organization
# is touched), then the organization's: the order an erasure takes them in (the user's row, then
# the organizations it gives keywords back to), so the two never deadlock. No member row (erased
# meanwhile): nothing is counted.
# A new organization is FREE; `first` is what its first search may count (all or nothing). An
# existing one is counted only while it is not deleted and the keywords fit its tier's limit.
# The reservation row is written only for what was counted.
_RESERVE = HotStatement(
    """
WITH counted AS (
  INSERT INTO organizations AS o (id, name, slug, "keywordSearchesThisMonth",
    "keywordSearchesTotal", "monthlyResetAt", "createdAt", "updatedAt")
  SELECT %(org_id)s, %(name)s, %(slug)s, %(first)s, %(first)s, %(now)s, %(now)s, %(now)s
  WHERE EXISTS (SELECT 1 FROM users WHERE id = %(user_id)s FOR KEY SHARE)
  ON CONFLICT (id) DO UPDATE SET
    "keywordSearchesThisMonth" = CASE WHEN o."monthlyResetAt" < %(month_start)s THEN 0
      ELSE o."keywordSearchesThisMonth" END + %(count)s,
    "keywordSearchesTotal" = o."keywordSearchesTotal" + %(count)s,
    "monthlyResetAt" = CASE WHEN o."monthlyResetAt" < %(month_start)s THEN %(now)s
      ELSE o."monthlyResetAt" END,
    "updatedAt" = %(now)s
  WHERE o."deletedAt" IS NULL AND (NOT %(enforce)s OR
    CASE WHEN o."monthlyResetAt" < %(month_start)s THEN 0 ELSE o."keywordSearchesThisMonth" END
      + %(count)s <= CASE o.tier WHEN 'FREE' THEN %(free_limit)s WHEN 'PRO' THEN %(pro_limit)s
      ELSE %(enterprise_limit)s END)
  RETURNING o."keywordSearchesThisMonth", o.tier, xmax = 0 AS inserted
), held AS (
  INSERT INTO keyword_reservations (id, "userId", "organizationId", keywords, "reservedAt",
    "expiresAt")
  SELECT %(hold_id)s, %(user_id)s, %(org_id)s, %(count)s, %(now)s, %(expires_at)s
  FROM counted WHERE NOT counted.inserted OR %(first)s > 0
)
SELECT "keywordSearchesThisMonth", tier, inserted FROM counted
"""
)


@dataclass(frozen=True, slots=True)
class OrgUsage:
    """The organization's monthly counter after a reservation, and its tier."""

    this_month: int
    tier: UserTier


@database_operation("reserveOrganizationKeywords")
def reserve_keywords(
    conn: Conn,
    org_id: str,
    user_id: str,
    count: int,
    *,
    slug: str | None,
    limits: OrgLimits,
    enforce: bool,
    now: datetime,
    hold: Hold,
) -> OrgUsage:
    """Count `count` keywords of `user_id`'s search against the organization's quota and hold
    them (see the module docstring): ONE statement. With `enforce=False` (billing off) nothing
    is limited and usage is still counted. Raises `OrganizationNotFoundError` (deleted),
    `QuotaExceededError` (nothing changed) or `UserNotFoundError` (the user has no row: the
    caller provisions it and tries again)."""
    fits_new = not enforce or count <= limits.free
    params = {
        "org_id": org_id,
        "user_id": user_id,
        "name": slug or org_id,
        "slug": slug,
        "count": count,
        "first": count if fits_new else 0,
        "now": db_time(now),
        "month_start": db_time(month_start(now)),
        "enforce": enforce,
        "free_limit": limits.free,
        "pro_limit": limits.pro,
        "enterprise_limit": limits.enterprise,
        "hold_id": hold.id,
        "expires_at": db_time(hold.expires_at),
    }
    row = execute_hot(conn, _RESERVE, params).fetchone()
    if row is not None and not (row[2] and not fits_new):
        return OrgUsage(this_month=row[0], tier=UserTier(row[1]))
    # Refused (failure path only): reads to say why, with the numbers for the message.
    if conn.session.get(User, user_id) is None:
        raise UserNotFoundError(user_id)
    org = conn.session.get(Organization, org_id)
    if org is None or org.deleted_at is not None:
        raise OrganizationNotFoundError(org_id)
    view = org_usage_view(org, limits, now)
    raise QuotaExceededError(
        used=view.used, limit=view.limit, requested=count, resets_at=view.resets_at
    )
