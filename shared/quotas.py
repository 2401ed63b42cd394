"""Keyword quotas per tier (spec §3, §10.3, §10.11): one place that says what a tier may use.

FREE is the 7-day trial: `TRIAL_KEYWORD_LIMIT` (300) keywords for the whole trial, counted by
`keywordSearchesTotal`, which never resets. PRO and ENTERPRISE get `PRO_MONTHLY_LIMIT` (1,000)
and `ENTERPRISE_MONTHLY_LIMIT` (10,000) keywords per UTC calendar month, counted by
`keywordSearchesThisMonth` with the lazy monthly reset. With `BILLING_ENABLED=false` nothing is
limited, and usage is still counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.clock import month_start, next_month_start
from shared.config import Settings
from shared.models import User, UserTier


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


def this_month(user: User, now: datetime) -> int:
    """The monthly counter as the next increment sees it: 0 once a new UTC month has begun
    (the Python mirror of the lazy reset in `shared.repositories.users`)."""
    return 0 if user.monthly_reset_at < month_start(now) else user.keyword_searches_this_month


def usage_view(user: User, limits: Limits, now: datetime) -> UsageView:
    """The counter that applies to the user's tier, with the lazy monthly reset applied."""
    if user.tier is UserTier.FREE:
        expired = user.trial_ends_at is None or user.trial_ends_at < now
        return UsageView(user.keyword_searches_total, limits.trial, None, expired)
    return UsageView(
        this_month(user, now), limits.for_tier(user.tier), next_month_start(now), False
    )
