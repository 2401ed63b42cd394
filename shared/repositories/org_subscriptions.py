"""Organizations' Stripe subscription columns: the users' rules and flow
(`subscriptions.apply_locked`) applied to an organization's row, under its row lock.

An event is about an organization when its metadata names one (`organizationId`, set by the
org checkout on the session and the subscription) or, naming no user either, its customer is
an organization's (`organizations.stripeCustomerId`; `shared.billing._subject`). A deleted
organization (tombstone `deletedAt`) is found, so the event is recorded as about it, but
nothing is ever written to it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import Table, select, update

from shared.db import Conn
from shared.models.organizations import Organization
from shared.repositories.subscriptions import (
    Applied,
    Link,
    SubscriptionChange,
    apply_locked,
    forget_locked,
    link_row,
)
from shared.repositories.users import customer_unless_held
from shared.telemetry import database_operation


@dataclass(frozen=True, slots=True)
class Found:
    """The organization an event is about (`deleted`: a tombstone, never written)."""

    id: str
    deleted: bool


@database_operation("findBillingOrganization")
def find(conn: Conn, org_id: str) -> Found | None:
    """The organization an event's metadata names, tombstones included; never another one
    holding the event's customer (the named one may not exist yet: the event is retried)."""
    row = conn.session.execute(
        select(Organization.id, Organization.deleted_at).where(Organization.id == org_id)
    ).first()
    return None if row is None else Found(row[0], row[1] is not None)


@database_operation("findBillingOrganizationByCustomer")
def find_by_customer(conn: Conn, customers: tuple[str, ...]) -> Found | None:
    """The organization holding one of the customers (an event naming no organization and no
    user), tombstones included."""
    if not customers:
        return None
    row = conn.session.execute(
        select(Organization.id, Organization.deleted_at).where(
            Organization.stripe_customer_id.in_(customers)
        )
    ).first()
    return None if row is None else Found(row[0], row[1] is not None)


@database_operation("applyOrganizationSubscriptionChange")
def apply_change(
    conn: Conn, org_id: str, change: SubscriptionChange, *, event_at: datetime, now: datetime
) -> Applied:
    """Lock the organization's row and apply as to a user's (`subscriptions.apply_locked`); a
    tombstone is never written (STALE). As for a user, a customer another organization holds
    is not linked (`customer_shared`), the rest is written."""
    return apply_locked(
        _locked_live(conn, org_id),
        change,
        partial(_update_columns, conn, org_id),
        event_at=event_at,
        now=now,
    )


@database_operation("forgetOrganizationStripeCustomer")
def forget_customer(conn: Conn, org_id: str, customer_id: str, *, now: datetime) -> bool:
    """`subscriptions.forget_locked` on a live organization's row, locked here."""
    return forget_locked(
        _locked_live(conn, org_id), customer_id, partial(_update_columns, conn, org_id), now=now
    )


def _locked_live(conn: Conn, org_id: str) -> Organization | None:
    """The organization `FOR UPDATE`; None when there is none or it is a tombstone."""
    org = conn.session.scalars(
        select(Organization).where(Organization.id == org_id).with_for_update()
    ).one_or_none()
    return None if org is None or org.deleted_at is not None else org


def _update_columns(conn: Conn, org_id: str, values: dict[Any, Any]) -> bool:
    """`UPDATE organizations SET <values> WHERE id = org_id`; `values` keyed by attributes. The
    customer is written only when no other organization holds it, in the same statement
    (`users.customer_unless_held`); False: it was not (the row keeps its own)."""
    customer = values.get(Organization.stripe_customer_id)
    if customer is None:
        conn.session.execute(
            update(Organization).where(Organization.id == org_id).values(values),
            execution_options={"synchronize_session": False},
        )
        return True
    table = cast(Table, Organization.__table__)
    guarded = {
        **values,
        Organization.stripe_customer_id: customer_unless_held(table, org_id, customer),
    }
    row = conn.session.execute(
        update(Organization)
        .where(Organization.id == org_id)
        .values(guarded)
        .returning(Organization.stripe_customer_id),
        execution_options={"synchronize_session": False},
    ).first()
    return row is None or row[0] == customer


@database_operation("linkOrganizationStripeCustomer")
def link_customer(conn: Conn, org_id: str, customer_id: str, *, now: datetime) -> Link:
    """Link the customer to a live organization that has none yet (a checkout not paid yet),
    unless another organization holds it (SHARED: nothing changes)."""
    table = cast(Table, Organization.__table__)
    return link_row(conn, table, org_id, customer_id, now=now, where=(table.c.deletedAt.is_(None),))
