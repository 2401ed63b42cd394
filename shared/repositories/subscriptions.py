"""Users' Stripe subscription columns: found by Stripe's ids, changed by one guarded UPDATE.

The billing core (`shared.billing`) decides what an event means; this module finds the user and
applies the change in a single statement whose WHERE carries every ordering rule, so concurrent
deliveries of different events for one user serialise on the row lock and each re-checks the
rules against the row as the other left it (READ COMMITTED re-evaluates an UPDATE's WHERE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    func,
    literal,
    not_,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from shared.models import User, UserTier, UTCDateTime
from shared.telemetry import database_operation

# Stripe statuses a subscription never leaves: once stored, no event for it applies again.
TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})

LookupKey = Literal["id", "customer", "email"]


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """What one Stripe event asks of the user's subscription columns.

    `tier` None leaves the tier alone; `plan`, `ends_at` and `customer_id` None keep the stored
    values. `only_from`: apply only while the user's current subscription is this one and its
    status is one of these (a payment failure must not revive an unpaid subscription).
    """

    subscription_id: str
    status: str
    tier: UserTier | None
    customer_id: str | None = None
    plan: str | None = None
    ends_at: datetime | None = None
    only_from: frozenset[str] | None = None


@database_operation("findBillingUser")
def find_user_id(session: Session, candidates: Sequence[tuple[LookupKey, str]]) -> str | None:
    """The first user matching the candidates, in their order, in ONE query.

    Keys: `id` (Clerk user id from Stripe metadata), `customer` (stripeCustomerId) and `email`
    (case-insensitive, served by the `lower(email)` unique index).
    """
    selects = []
    for rank, (key, value) in enumerate(candidates):
        condition: ColumnElement[bool]
        if key == "id":
            condition = User.id == value
        elif key == "customer":
            condition = User.stripe_customer_id == value
        else:
            condition = func.lower(User.email) == func.lower(literal(value))
        selects.append(select(User.id, literal(rank).label("rank")).where(condition))
    if not selects:
        return None
    matches = union_all(*selects).subquery()
    statement = select(matches.c.id).order_by(matches.c.rank).limit(1)
    found: str | None = session.execute(statement).scalar_one_or_none()
    return found


@database_operation("applySubscriptionChange")
def apply_change(
    session: Session,
    user_id: str,
    change: SubscriptionChange,
    *,
    event_at: datetime,
    now: datetime,
) -> bool:
    """Apply `change` unless a rule says the event is stale; True when the row changed.

    Rules, all in the UPDATE's WHERE: the event is not older than the last one applied
    (`subscriptionEventAt`; equal times apply, Stripe's `created` has one-second resolution);
    a subscription stored as canceled or incomplete_expired stays so; an event for a
    subscription other than the user's current one applies only when it grants PRO (a new
    subscription takes over, a late cancellation of an old one changes nothing).

    Tier effects: ENTERPRISE (managed outside Stripe) is never changed. FREE → PRO starts a
    fresh monthly counter (as the original's new usage key did). → FREE ends any running trial
    (`trialEndsAt = least(trialEndsAt, now)`), so a downgrade never grants a new trial.
    """
    sub = change.subscription_id
    now_value = literal(now, UTCDateTime())
    same_subscription = User.stripe_subscription_id == sub
    stored_terminal = and_(
        User.stripe_subscription_id.is_not_distinct_from(sub),
        func.coalesce(User.subscription_status, "").in_(TERMINAL_STATUSES),
    )
    conditions: list[ColumnElement[bool]] = [
        User.id == user_id,
        or_(User.subscription_event_at.is_(None), User.subscription_event_at <= event_at),
        not_(stored_terminal),
    ]
    if change.tier is not UserTier.PRO:
        conditions.append(or_(User.stripe_subscription_id.is_(None), same_subscription))
    if change.only_from is not None:
        conditions += [same_subscription, User.subscription_status.in_(change.only_from)]

    values: dict[Any, Any] = {
        User.subscription_status: change.status,
        User.stripe_subscription_id: sub,
        User.subscription_event_at: event_at,
        User.updated_at: now,
    }
    if change.customer_id is not None:
        values[User.stripe_customer_id] = change.customer_id
    if change.plan is not None:
        values[User.subscription_plan] = change.plan
    if change.ends_at is not None:
        values[User.subscription_ends_at] = change.ends_at
    if change.tier is not None:
        enterprise = User.tier == UserTier.ENTERPRISE
        values[User.tier] = case(
            (enterprise, User.tier), else_=literal(change.tier, User.tier.type)
        )
        if change.tier is UserTier.PRO:
            upgrading = User.tier == UserTier.FREE
            values[User.keyword_searches_this_month] = case(
                (upgrading, 0), else_=User.keyword_searches_this_month
            )
            values[User.monthly_reset_at] = case(
                (upgrading, now_value), else_=User.monthly_reset_at
            )
        elif change.tier is UserTier.FREE:
            values[User.trial_ends_at] = case(
                (enterprise, User.trial_ends_at),
                else_=func.least(User.trial_ends_at, now_value, type_=UTCDateTime()),
            )
    statement = update(User).where(*conditions).values(values).returning(User.id)
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return result.first() is not None
