"""Users' Stripe subscription columns: found by Stripe's ids, changed under the user's row lock.

The billing core (`shared.billing`) decides what an event means; this module decides whether it
still applies to the user's row (`decide`, a pure function of the stored state) and writes it.
`apply_change` reads the row `FOR UPDATE`, so concurrent deliveries of different events for one
user serialise on the lock and each decides against the row as the other left it.

The rules (docs/billing.md):
- A user has ONE current subscription; a user without one takes the first event's (except a
  payment failure). An event about another subscription takes the user over only when it may
  (subscription events and checkout, not invoices), grants PRO, and that subscription was
  created after the current one: a replaced subscription's late events, its final invoice
  included, never take the user back.
- Events for the current subscription apply in Stripe's `created` order
  (`subscriptionEventAt`). An older one only fills the fields the row still lacks (plan, period
  end, customer): it never brings back an old status.
- `canceled` and `incomplete_expired` are final: nothing applies to that subscription again.
- A Stripe customer belongs to one row (the `stripeCustomerId` unique index): a change naming a
  customer another row holds applies everything else and leaves the row's customer as it was
  (`Applied.customer_shared`), checked inside the statement that writes.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    Text,
    bindparam,
    case,
    func,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert

from shared.db import Conn, HotStatement, execute_hot
from shared.models import UserTier
from shared.models.erased_billing_customers import ErasedBillingCustomer
from shared.models.organizations import Organization
from shared.models.users import User
from shared.repositories import users
from shared.telemetry import database_operation

# Stripe statuses a subscription never leaves: once stored, no event for it applies again.
TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
LIVE_STATUSES = frozenset({"active", "trialing", "past_due"})
# FREE statuses only a subscription that was live (PRO) reaches; not `incomplete_expired`.
LAPSED_STATUSES = frozenset({"unpaid", "canceled", "paused"})

LookupKey = Literal["id", "customer", "email"]


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """What one Stripe event asks of the user's subscription columns.

    `status` None keeps the stored status; `tier` None the tier; `plan`, `ends_at`,
    `customer_id` None keep the stored values (except on a take-over, where they belong to the
    old subscription and are cleared). `created_at`: Stripe's `created` of the subscription
    (`created_exact` False: a checkout session's, an upper bound kept only until the
    subscription's own events say). `ordered`: the event carries the subscription's state as of
    its `created` (stamped in `subscriptionEventAt`); checkout does not. `status_from`: the
    status applies only while the stored one is in this set (None: any).
    """

    subscription_id: str
    status: str | None
    tier: UserTier | None
    customer_id: str | None = None
    plan: str | None = None
    ends_at: datetime | None = None
    created_at: datetime | None = None
    created_exact: bool = True
    may_take_over: bool = True
    ordered: bool = True
    status_from: frozenset[str | None] | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """The user's stored subscription state, as `decide` reads it."""

    subscription_id: str | None
    status: str | None
    event_at: datetime | None
    created_at: datetime | None


class Decision(enum.StrEnum):
    TAKE_OVER = "take_over"  # this subscription becomes the user's current one
    APPLY = "apply"  # the current subscription's newer state
    FILL = "fill"  # older: only the fields the row lacks
    STALE = "stale"  # nothing to do


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply_change` did: its `decision`, and `customer_shared` True when the change
    named a customer another row holds, which was not linked (everything else was written)."""

    decision: Decision
    customer_shared: bool = False


class Link(enum.StrEnum):
    """What `link_customer` did."""

    LINKED = "linked"  # the customer is the row's now
    HAS_ONE = "has_one"  # the row has a customer already (or no row): nothing changed
    SHARED = "shared"  # another row holds the customer: nothing changed


def decide(stored: Stored, change: SubscriptionChange, event_at: datetime) -> Decision:
    """Whether and how an event applies to the stored state (see the module docstring)."""
    if stored.subscription_id is None:  # the user's first subscription
        vacant_ok = change.status_from is None or None in change.status_from
        return Decision.TAKE_OVER if vacant_ok else Decision.STALE
    if stored.subscription_id != change.subscription_id:
        if not change.may_take_over:
            return Decision.STALE
        newer = change.created_at is not None and (
            stored.created_at is None or change.created_at > stored.created_at
        )
        return Decision.TAKE_OVER if change.tier is UserTier.PRO and newer else Decision.STALE
    if stored.status in TERMINAL_STATUSES:
        return Decision.STALE
    if change.ordered and stored.event_at is not None and event_at < stored.event_at:
        return Decision.FILL
    if change.status_from is not None and stored.status not in change.status_from:
        return Decision.FILL
    return Decision.APPLY


@database_operation("lockBillingUser")
def lock_user(conn: Conn, candidates: Sequence[tuple[LookupKey, str]]) -> str | None:
    """The first user matching the candidates, in their order, with their row locked `FOR
    UPDATE`, in ONE query while the row stays. Keys: `id` (Clerk user id from Stripe metadata
    or client_reference_id), `customer` (stripeCustomerId) and `email` (case-insensitive,
    served by the `lower(email)` unique index).

    A billing event takes this lock before it claims its ledger row: an erasure locks the row
    first too, so the two never deadlock, and whichever commits second sees the other's work.
    A row an erasure deleted while we waited is skipped; the lookup then runs again on what is
    committed now (None: no user matches)."""
    if not candidates:
        return None
    keys = tuple(key for key, _ in candidates)
    params = _find_params(candidates)
    while (row := execute_hot(conn, _find_statement(keys, lock=True), params).fetchone()) is None:
        if execute_hot(conn, _find_statement(keys), params).fetchone() is None:
            return None
    return str(row[0])


def _find_params(candidates: Sequence[tuple[LookupKey, str]]) -> dict[str, str]:
    return {f"p_{rank}": value for rank, (_, value) in enumerate(candidates)}


_FINDS: dict[tuple[tuple[LookupKey, ...], bool], HotStatement] = {}


def _find_statement(keys: tuple[LookupKey, ...], *, lock: bool = False) -> HotStatement:
    """`lock_user`'s UNION ALL for this sequence of key kinds (`lock`: the row it finds locked;
    without, the check that a row still matches), compiled once (binds p_0 …)."""
    statement = _FINDS.get((keys, lock))
    if statement is None:
        statement = HotStatement(partial(_find, keys, lock=lock))
        _FINDS[(keys, lock)] = statement
    return statement


def _find(keys: tuple[LookupKey, ...], *, lock: bool) -> Any:
    selects = []
    for rank, key in enumerate(keys):
        value = bindparam(f"p_{rank}", type_=Text())
        condition: ColumnElement[bool]
        if key == "id":
            condition = User.id == value
        elif key == "customer":
            condition = User.stripe_customer_id == value
        else:
            condition = func.lower(User.email) == func.lower(value)
        selects.append(select(User.id, literal(rank).label("rank")).where(condition))
    matches = union_all(*selects).subquery()
    first = select(matches.c.id).order_by(matches.c.rank).limit(1)
    if not lock:
        return first
    return select(User.id).where(User.id == first.scalar_subquery()).with_for_update()


@database_operation("applySubscriptionChange")
def apply_change(
    conn: Conn,
    user_id: str,
    change: SubscriptionChange,
    *,
    event_at: datetime,
    now: datetime,
) -> Applied:
    """Lock the user's row, decide (`decide`) and write; returns what was done.

    Tier effects: ENTERPRISE (managed outside Stripe) is never changed. FREE → PRO starts a
    fresh monthly counter (as the original's new usage key did), unless the row lapsed from PRO
    since the counter's last reset (`_lapsed_pro`). → FREE ends any running trial
    (`trialEndsAt = least(trialEndsAt, now)`), so a downgrade never grants a new trial. The
    customer is linked only when no other user holds it (`users.update_columns`).
    """
    user = users.locked_row(conn, user_id)
    return apply_locked(
        user, change, partial(users.update_columns, conn, user_id), event_at=event_at, now=now
    )


def apply_locked(
    row: User | Organization | None,
    change: SubscriptionChange,
    write: Callable[[dict[Any, Any]], bool],
    *,
    event_at: datetime,
    now: datetime,
) -> Applied:
    """The one flow for a user's and an organization's row, which the caller has locked (None:
    no row to write): `decide`, then `write` the `column_values`, unless they change nothing
    but `updatedAt` (an older event with nothing the row lacks: STALE). `write` links the
    customer only when no other row holds it, and returns False when it did not."""
    if row is None:
        return Applied(Decision.STALE)
    stored = Stored(
        row.stripe_subscription_id,
        row.subscription_status,
        row.subscription_event_at,
        row.subscription_created_at,
    )
    decision = decide(stored, change, event_at)
    if decision is Decision.STALE:
        return Applied(decision)
    values = column_values(row, change, decision, event_at=event_at, now=now)
    if values.keys() == {type(row).updated_at}:
        return Applied(Decision.STALE)
    return Applied(decision, customer_shared=not write(values))


def column_values(
    row: User | Organization,
    change: SubscriptionChange,
    decision: Decision,
    *,
    event_at: datetime,
    now: datetime,
) -> dict[Any, Any]:
    """The columns `decision` writes on a user's or an organization's row (the same columns,
    the same rules), keyed by the row's model attributes. Only a user has a trial to end."""
    model: Any = type(row)
    values: dict[Any, Any] = {model.updated_at: now}
    if decision is Decision.FILL:
        fills = {
            model.subscription_plan: (row.subscription_plan, change.plan),
            model.subscription_ends_at: (row.subscription_ends_at, change.ends_at),
            model.stripe_customer_id: (row.stripe_customer_id, change.customer_id),
            model.subscription_customer_id: (row.subscription_customer_id, change.customer_id),
            model.subscription_created_at: (row.subscription_created_at, change.created_at),
        }
        values.update({column: new for column, (old, new) in fills.items() if old is None and new})
        return values

    taking_over = decision is Decision.TAKE_OVER
    values[model.stripe_subscription_id] = change.subscription_id
    if change.customer_id is not None:
        values[model.stripe_customer_id] = change.customer_id
    if taking_over or change.customer_id is not None:
        values[model.subscription_customer_id] = change.customer_id  # even when held elsewhere
    if taking_over or change.plan is not None:
        values[model.subscription_plan] = change.plan
    if taking_over or change.ends_at is not None:
        values[model.subscription_ends_at] = change.ends_at
    if taking_over or (
        change.created_at is not None
        and (change.created_exact or row.subscription_created_at is None)
    ):
        values[model.subscription_created_at] = change.created_at
    if change.ordered:
        values[model.subscription_event_at] = event_at
    elif taking_over:
        values[model.subscription_event_at] = None  # no event of this subscription applied yet
    if change.status is not None:
        values[model.subscription_status] = change.status
    if change.tier is not None and row.tier is not UserTier.ENTERPRISE:
        values[model.tier] = change.tier
        if change.tier is UserTier.PRO and row.tier is UserTier.FREE:
            if not _lapsed_pro(row):  # else the counter already holds this month's PRO usage
                values[model.keyword_searches_this_month] = 0
                values[model.monthly_reset_at] = now
        elif change.tier is UserTier.FREE and isinstance(row, User):
            trial_end = row.trial_ends_at
            values[User.trial_ends_at] = now if trial_end is None else min(trial_end, now)
    return values


def _lapsed_pro(row: User | Organization) -> bool:
    """Whether the FREE row's monthly counter holds PRO usage: its subscription lapsed (a
    status only a live subscription reaches) at or after the counter's last reset. Going back
    to PRO then keeps the counter, so one month never allows more than its limit (the
    original's `usage:{id}:{YYYY-MM}` key was found again); the lazy reset still zeroes it when
    the reset was in an earlier month. A lapse that stamps no time (`customer.deleted`, not
    ordered) is dated by the subscription's last ordered event: older than the reset, the
    counter starts fresh."""
    event_at = row.subscription_event_at
    return (
        row.subscription_status in LAPSED_STATUSES
        and event_at is not None
        and event_at >= row.monthly_reset_at
    )


@database_operation("forgetStripeCustomer")
def forget_customer(conn: Conn, user_id: str, customer_id: str, *, now: datetime) -> bool:
    """`forget_locked` on the user's row, locked here."""
    user = users.locked_row(conn, user_id)
    return forget_locked(user, customer_id, partial(users.update_columns, conn, user_id), now=now)


def forget_locked(
    row: User | Organization | None,
    customer_id: str,
    write: Callable[[dict[Any, Any]], bool],
    *,
    now: datetime,
) -> bool:
    """Stripe deleted the customer the row holds: unlink it (the next checkout makes a new
    one), and end the row's current subscription as `canceled` when it is on that customer,
    since Stripe cancels a deleted customer's subscriptions at once. A canceled subscription is
    final, so its own `customer.subscription.deleted`, whenever it arrives, changes nothing and
    cannot link the deleted customer again. A subscription on another customer (one another
    account holds) lives on; one whose customer was never recorded (written before
    `subscriptionCustomerId`) is taken to be on the row's. False: the row does not hold the
    customer (nothing written)."""
    if row is None or row.stripe_customer_id != customer_id:
        return False
    model: Any = type(row)
    values: dict[Any, Any] = {model.updated_at: now}
    on_it = row.subscription_customer_id in (None, customer_id)
    if row.stripe_subscription_id and on_it and row.subscription_status not in TERMINAL_STATUSES:
        ended = SubscriptionChange(
            row.stripe_subscription_id, status="canceled", tier=UserTier.FREE, ordered=False
        )
        values = column_values(row, ended, Decision.APPLY, event_at=now, now=now)
    write({**values, model.stripe_customer_id: None})
    return True


@database_operation("unlinkMissingStripeCustomer")
def unlink_missing_customer(conn: Conn, customer_id: str, *, now: datetime) -> list[str]:
    """Stripe answered that it has no such customer (deleted, or made with another account's
    key): no user or organization keeps it, so the next checkout makes a new one. The
    subscription columns are left to the subscriptions' own events. Returns the users changed."""
    changed: list[str] = []
    for model in (User, Organization):
        table = cast(Table, model.__table__)
        rows = conn.session.execute(
            update(table)
            .where(table.c.stripeCustomerId == customer_id)
            .values({table.c.stripeCustomerId: None, table.c.updatedAt: now})
            .returning(table.c.id)
        )
        if model is User:
            changed = [str(row[0]) for row in rows]
    return changed


@database_operation("linkStripeCustomer")
def link_customer(conn: Conn, user_id: str, customer_id: str, *, now: datetime) -> Link:
    """Link the customer to a user who has none yet (a checkout not paid yet, or failed), so
    the subscription's events find the user, unless another user holds it (SHARED: nothing
    changes). One statement."""
    return link_row(conn, cast(Table, User.__table__), user_id, customer_id, now=now)


def link_row(
    conn: Conn,
    table: Table,
    row_id: str,
    customer_id: str,
    *,
    now: datetime,
    where: Sequence[ColumnElement[bool]] = (),
) -> Link:
    """`link_customer` on a row of `table` (users, or organizations with `where`): the customer
    and `updatedAt` set only when no other row holds the customer (`customer_unless_held`),
    on a row that has none."""
    linked = users.customer_unless_held(table, row_id, customer_id)  # NULL: held elsewhere
    updated_at = case(
        (linked.is_(None), table.c.updatedAt), else_=literal(now, table.c.updatedAt.type)
    )
    statement = (
        update(table)
        .where(table.c.id == row_id, table.c.stripeCustomerId.is_(None), *where)
        .values({table.c.stripeCustomerId: linked, table.c.updatedAt: updated_at})
        .returning(table.c.stripeCustomerId)
    )
    row = conn.session.execute(statement).first()
    if row is None:
        return Link.HAS_ONE
    return Link.LINKED if row[0] is not None else Link.SHARED


def customer_hash(customer_id: str) -> str:
    """How an erased customer is remembered: SHA-256 of the Stripe customer id, never the id."""
    return hashlib.sha256(customer_id.encode()).hexdigest()


@database_operation("rememberErasedCustomer")
def remember_erased_customer(conn: Conn, user_id: str, *, now: datetime) -> str | None:
    """Before the user is erased: remember (hashed) their Stripe customer, under the row lock
    the erasure takes anyway. Returns the subscription status they had (None: no customer)."""
    row = conn.session.execute(
        select(User.stripe_customer_id, User.subscription_status)
        .where(User.id == user_id)
        .with_for_update()
    ).first()
    if row is None or not row[0]:
        return None
    _remember(conn, row[0], now)
    status: str | None = row[1]
    return status


@database_operation("rememberErasedCustomerOfEvent")
def remember_customer(conn: Conn, customer_id: str, *, now: datetime) -> None:
    """Remember (hashed) a customer an event links to an account erased before the customer
    was linked to it, so the customer's later events, which may name only the customer, are
    handled as erased too."""
    _remember(conn, customer_id, now)


def _remember(conn: Conn, customer_id: str, now: datetime) -> None:
    conn.session.execute(
        insert(ErasedBillingCustomer)
        .values(customer_hash=customer_hash(customer_id), erased_at=now)
        .on_conflict_do_nothing()
    )


@database_operation("isErasedCustomer")
def is_erased_customer(conn: Conn, customer_id: str) -> bool:
    statement = select(ErasedBillingCustomer.customer_hash).where(
        ErasedBillingCustomer.customer_hash == customer_hash(customer_id)
    )
    return conn.session.execute(statement).first() is not None
