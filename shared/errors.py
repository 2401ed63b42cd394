"""Domain errors raised by the core; the HTTP layer maps each to a status and message."""

from __future__ import annotations

from datetime import datetime


class DomainError(Exception):
    """An expected business outcome (not a fault): logged as a successful database operation."""


class NotFoundError(DomainError, LookupError):
    """The row does not exist, or belongs to another user (both look the same to callers)."""


class UserNotFoundError(NotFoundError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id} not found")
        self.user_id = user_id


class OrganizationNotFoundError(NotFoundError):
    """The organization was deleted (a tombstone): it is treated as never having existed."""

    def __init__(self, org_id: str) -> None:
        super().__init__(f"organization {org_id} not found")
        self.org_id = org_id


class AccountDeletedError(DomainError):
    """Clerk deleted this user (its id never comes back): a session token that outlived the
    deletion provisions nothing; the HTTP layer answers 401."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id} was deleted in Clerk")
        self.user_id = user_id


class EmailInUseError(DomainError, ValueError):
    """Another user already has this email (compared case-insensitively)."""

    def __init__(self) -> None:
        super().__init__("email address already belongs to another user")


class QuotaExceededError(DomainError):
    """Adding `requested` would take `used` past `limit`; nothing was changed.

    `trial` says the limit is the trial's (it ends rather than resets); `resets_at` is when a
    monthly counter starts again (None for the trial)."""

    def __init__(
        self,
        used: int,
        limit: int,
        requested: int,
        *,
        trial: bool = False,
        resets_at: datetime | None = None,
    ) -> None:
        super().__init__(f"quota exceeded: {used} used + {requested} requested > {limit}")
        self.used = used
        self.limit = limit
        self.requested = requested
        self.trial = trial
        self.resets_at = resets_at


class TrialExpiredError(DomainError):
    """A FREE user's 7-day trial is over; nothing was counted."""

    def __init__(self) -> None:
        super().__init__("trial expired")


class SubscriptionLiveError(DomainError):
    """Erasure refused: the user's Stripe subscription is still live (it would keep billing)."""

    def __init__(self) -> None:
        super().__init__("subscription is live")


EMAIL_IN_USE = "This email address already belongs to another account"


class UnstorableSearchError(DomainError):
    """A saved search only the legacy Redis store holds carries text PostgreSQL cannot store
    (a NUL, half a UTF-16 surrogate pair), so it cannot be imported to be changed."""

    def __init__(self, search_id: str) -> None:
        super().__init__(f"saved search {search_id} holds text PostgreSQL cannot store")


class SavedSearchLimitError(DomainError):
    """The user already has the maximum number of saved searches."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"saved search limit of {limit} reached")
        self.limit = limit
