"""Keyword quotas per tier (docs/original-app.md#tiers-trials-and-quotas, #d3, #d11): one place that
says what a tier may use.

FREE is the 7-day trial: `TRIAL_KEYWORD_LIMIT` (300) keywords for the whole trial, counted by
`keywordSearchesTotal`, which never resets. PRO and ENTERPRISE get `PRO_MONTHLY_LIMIT` (1,000)
and `ENTERPRISE_MONTHLY_LIMIT` (10,000) keywords per UTC calendar month, counted by
`keywordSearchesThisMonth` with the lazy monthly reset. With `BILLING_ENABLED=false` nothing is
limited, and usage is still counted.

An organization's quota is pooled: its members' searches in it count against its own monthly
counter, `ORG_FREE_MONTHLY_LIMIT` (300), `ORG_PRO_MONTHLY_LIMIT` (5,000) and
`ORG_ENTERPRISE_MONTHLY_LIMIT` (50,000) keywords per UTC calendar month; no tier of an
organization is a trial.

The trial ends at `trialEndsAt`; a row without one (another writer of the shared database
creating a FREE user with Prisma's defaults) gets a trial of `TRIAL_LENGTH` from
`trialStartedAt`, else from `createdAt`. `trial_end` and `trial_over` are that rule, in Python
and in SQL; nothing else decides when a trial ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Interval, and_, func, literal, or_

from shared.clock import month_start, next_month_start
from shared.config import Settings
from shared.models import UserTier
from shared.models.organizations import Organization
from shared.models.users import User

TRIAL_LENGTH = timedelta(days=7)


def trial_end(user: User) -> datetime:
    """When the user's trial ends (or ended), by the rule in the module docstring."""
    if user.trial_ends_at is not None:
        return user.trial_ends_at
    return (user.trial_started_at or user.created_at) + TRIAL_LENGTH


def trial_end_sql() -> ColumnElement[Any]:
    """`trial_end` as a SQL expression over the `users` row."""
    started = func.coalesce(User.trial_started_at, User.created_at)
    return func.coalesce(User.trial_ends_at, started + _trial_length())


def trial_over(now: datetime) -> ColumnElement[bool]:
    """`trial_end < now`, spelled so the `(tier, "trialEndsAt")` index serves both branches."""
    started = func.coalesce(User.trial_started_at, User.created_at)
    return or_(
        User.trial_ends_at < now,
        and_(User.trial_ends_at.is_(None), started + _trial_length() < now),
    )


def _trial_length() -> ColumnElement[Any]:
    return literal(TRIAL_LENGTH, Interval())


@dataclass(frozen=True, slots=True)
class Limits:
    trial: int
    pro: int
    enterprise: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            trial=settings.trial_keyword_limit,
            pro=settings.pro_monthly_limit,
            enterprise=settings.enterprise_monthly_limit,
        )

    def for_tier(self, tier: UserTier) -> int:
        return {UserTier.FREE: self.trial, UserTier.PRO: self.pro}.get(tier, self.enterprise)


@dataclass(frozen=True, slots=True)
class UsageView:
    """What the user has used against what the tier allows, at `now`."""

    used: int
    limit: int
    resets_at: datetime | None  # None for the trial: it does not reset, it ends
    trial_expired: bool

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


def this_month(owner: User | Organization, now: datetime) -> int:
    """The monthly counter as the next increment sees it: 0 once a new UTC month has begun
    (the Python mirror of the lazy reset in `shared.repositories.users` and `.org_quota`)."""
    stale = owner.monthly_reset_at < month_start(now)
    return 0 if stale else owner.keyword_searches_this_month


def usage_view(user: User, limits: Limits, now: datetime) -> UsageView:
    """The counter that applies to the user's tier, with the lazy monthly reset applied."""
    if user.tier is UserTier.FREE:
        expired = trial_end(user) < now
        return UsageView(user.keyword_searches_total, limits.trial, None, expired)
    return UsageView(
        this_month(user, now), limits.for_tier(user.tier), next_month_start(now), False
    )


@dataclass(frozen=True, slots=True)
class OrgLimits:
    """An organization's monthly keyword limit per tier."""

    free: int
    pro: int
    enterprise: int

    @classmethod
    def from_settings(cls, settings: Settings) -> OrgLimits:
        return cls(
            free=settings.org_free_monthly_limit,
            pro=settings.org_pro_monthly_limit,
            enterprise=settings.org_enterprise_monthly_limit,
        )

    def for_tier(self, tier: UserTier) -> int:
        return {UserTier.FREE: self.free, UserTier.PRO: self.pro}.get(tier, self.enterprise)


@dataclass(frozen=True, slots=True)
class OrgUsageView:
    """What an organization has used this month against what its tier allows, at `now`."""

    tier: UserTier
    used: int
    limit: int
    resets_at: datetime

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


def org_usage_view(org: Organization, limits: OrgLimits, now: datetime) -> OrgUsageView:
    """The organization's monthly counter, with the lazy reset applied, and its tier's limit."""
    return OrgUsageView(
        org.tier, this_month(org, now), limits.for_tier(org.tier), next_month_start(now)
    )
