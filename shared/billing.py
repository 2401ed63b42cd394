"""Stripe billing: what each webhook event does to a user or an organization, applied exactly
once.

Two entry points share one code path: the webhook (`process`, with the verified event) and
the retry cron (`process_recorded`, with an event id from the ledger). Either way ONE transaction
claims the event in `webhook_events`, applies its effect and marks it processed; a concurrent
delivery of the same event waits on the user's row (locked before the claim, `_subject`) or the
claimed row and then sees it processed. On any failure
the transaction rolls back (no partial change) and the attempt and error are recorded in a
statement of their own, so Stripe's retry, or the cron, runs the event again
(docs/original-app.md#d4).

What each event does to the tier and status is docs/billing.md#tier-and-status; which event
applies to which subscription, and in which order, is decided in
`shared.repositories.subscriptions` (docs/billing.md#which-subscription-in-which-order).

A subscription of another product on the same Stripe customer (not marked `keyflash-pro`, none
of its prices STRIPE_PRICE_PRO) changes nothing
(docs/billing.md#other-products-on-the-same-customer).

Whom an event is about is decided by its metadata first: `organizationId` names an
organization, else `clerkUserId` (or a checkout's `client_reference_id`) a user; only an event
naming neither is found by its customer, an organization's first
(docs/billing.md#finding-the-user). So a member's personal subscription on the organization's
customer stays the member's, and the organization's stays its own. An event about an
organization changes its row by the same rules, never a user's
(`shared.repositories.org_subscriptions`); a deleted organization's events are recorded and
change nothing (docs/organizations.md#billing-per-organization). An `organizationId` no Clerk
organization can have is a mistyped field (`InvalidEventError`), not one that does not exist yet.

`customer.deleted` forgets the customer wherever it is held (a user and an organization may
both hold one), so the next checkout makes a new customer, and ends each holder's subscription
when it is on that customer (Stripe cancels a deleted customer's subscriptions, and no other).

A user who cannot be found is a failure, not a success: subscription and invoice events can
arrive before checkout links the customer (docs/original-app.md#d5), so the event is retried until
the link exists, unless the customer or the account it names was erased: then it is recorded as
processed, without its payload. Stored payloads keep only the fields read here (ids, statuses,
times, the plan, and checkout's email for the fallback lookup), never whole Stripe objects.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from shared import db
from shared.clock import utcnow
from shared.config import get_settings
from shared.db import Conn, DatabaseUnavailableError, violated_constraint
from shared.models import UserTier
from shared.org_ids import is_org_id
from shared.repositories import org_subscriptions, subscriptions, tombstones, webhook_events
from shared.repositories.subscriptions import Decision, Link, LookupKey, SubscriptionChange
from shared.stripe_objects import (
    CHECKOUT_EVENTS,
    CHECKOUT_PAYMENT_FAILED,
    CUSTOMER_DELETED,
    INVOICE_PAID,
    INVOICE_PAYMENT_FAILED,
    PRODUCT,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_EVENTS,
    CheckoutSession,
    Customer,
    InvalidEventError,
    Invoice,
    StripeEvent,
    Subscription,
    organization_id,
    timestamp,
)
from shared.telemetry import log_event

PROVIDER = "stripe"

PRO_STATUSES = frozenset({"active", "trialing", "past_due"})
FREE_STATUSES = frozenset({"unpaid", "canceled", "incomplete_expired", "paused"})
NO_TIER_STATUSES = frozenset({"incomplete"})  # stored, the tier unchanged
# A failed payment moves a live subscription into grace; it never revives an unpaid one.
PAYMENT_FAILURE_APPLIES_TO: frozenset[str | None] = frozenset(subscriptions.LIVE_STATUSES)
# Checkout's provisional status replaces only no status or `incomplete` (a delayed payment).
CHECKOUT_APPLIES_TO: frozenset[str | None] = frozenset({None, "incomplete"})


class Outcome(enum.StrEnum):
    """What processing one event did."""

    APPLIED = "applied"  # the user's subscription columns changed
    FILLED = "filled"  # older than what is applied: only fields the row lacked were filled
    LINKED = "linked"  # a pending or failed checkout: only the customer was linked
    STALE = "stale"  # older than, or superseded by, what is already applied: nothing changed
    ERASED = "erased"  # about an erased customer: recorded without its payload, nothing done
    DELETED = "deleted"  # about a deleted organization: recorded, nothing done
    IGNORED = "ignored"  # nothing to do for this type or shape (recorded as processed)
    DUPLICATE = "duplicate"  # processed before: nothing done


class BillingUserNotFoundError(LookupError):
    """No user matches the event yet; the event is retried (its checkout may still come)."""


class BillingOrganizationNotFoundError(LookupError):
    """The event names an organization that does not exist yet; the event is retried."""


class BillingNotConfiguredError(RuntimeError):
    """STRIPE_PRICE_PRO is unset, so an event's product cannot be told; the event is retried."""


def _user_id(metadata: Mapping[str, Any]) -> str | None:
    value = metadata.get("clerkUserId")
    return value if isinstance(value, str) and value.strip() else None


class _MistypedField(ValueError):
    """A field billing reads holds what Stripe never sends; `plan_for` names the field."""


def _organization(metadata: Mapping[str, Any]) -> str | None:
    """The organization the metadata names. An id no Clerk organization can have (Clerk's
    webhook refuses it too) is mistyped, not an organization that does not exist yet: retrying
    cannot create it."""
    org_id = organization_id(metadata)
    if org_id is not None and not is_org_id(org_id):
        raise _MistypedField("metadata.organizationId")
    return org_id


def _clean(value: str | None) -> str | None:
    return value if value and value.strip() else None


def _other_product(
    subscription_id: str, metadata: Mapping[str, Any], prices: frozenset[str]
) -> bool:
    """True (and logged) for a subscription of another product on the merchant's account, which
    one Stripe customer may hold beside ours: not marked by our checkout (`metadata.product`),
    and listing prices, none of them STRIPE_PRICE_PRO. Its events must touch no user's or
    organization's row (docs/billing.md#other-products-on-the-same-customer). An event listing
    no price has nothing to judge by and is ours, as before."""
    if metadata.get("product") == PRODUCT or not prices:
        return False
    ours = get_settings().stripe_price_pro
    if not ours:
        raise BillingNotConfiguredError("STRIPE_PRICE_PRO unset: cannot tell the product")
    if ours in prices:
        return False
    log_event("stripe_other_product", subscription=subscription_id, prices=sorted(prices))
    return True


def tier_for_status(status: str) -> UserTier | None:
    """docs/billing.md's mapping; None: this status does not change the tier."""
    if status in PRO_STATUSES:
        return UserTier.PRO
    if status in FREE_STATUSES:
        return UserTier.FREE
    return None


# --- what an event asks for -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """Who the event is about (lookup candidates, in order; `org_id`: the organization its
    metadata names) and what it changes: the subscription columns (`change`), or, for a
    checkout not paid (yet), only the customer link, or, for a customer Stripe deleted, that
    customer forgotten (`forget_customer`)."""

    candidates: tuple[tuple[LookupKey, str], ...]
    change: SubscriptionChange | None
    link_customer: str | None = None
    org_id: str | None = None
    forget_customer: str | None = None


def _candidates(*pairs: tuple[LookupKey, str | None]) -> tuple[tuple[LookupKey, str], ...]:
    return tuple((key, value) for key, value in pairs if value)


def plan_for(event: StripeEvent) -> Plan | None:
    """The event's effect, or None when it has none (unknown type, nothing to change)."""
    try:
        if event.type in CHECKOUT_EVENTS:
            session = CheckoutSession.model_validate(event.object)
            return _checkout_plan(session, paid=event.type != CHECKOUT_PAYMENT_FAILED)
        if event.type in SUBSCRIPTION_EVENTS:
            subscription = Subscription.model_validate(event.object)
            return _subscription_plan(subscription, deleted=event.type.endswith(".deleted"))
        if event.type in (INVOICE_PAID, INVOICE_PAYMENT_FAILED):
            return _invoice_plan(
                Invoice.model_validate(event.object), paid=event.type == INVOICE_PAID
            )
        if event.type == CUSTOMER_DELETED:
            customer = Customer.model_validate(event.object).id
            return Plan(_candidates(("customer", customer)), None, forget_customer=customer)
    except ValidationError as error:
        fields = sorted({".".join(str(p) for p in issue["loc"]) for issue in error.errors()})
        raise InvalidEventError(f"{event.type} lacks or mistypes: {', '.join(fields)}") from None
    except _MistypedField as error:
        raise InvalidEventError(f"{event.type} lacks or mistypes: {error}") from None
    return None


def _checkout_plan(session: CheckoutSession, *, paid: bool) -> Plan | None:
    """`paid` False: async_payment_failed. A completed session whose payment is still pending
    (`unpaid`: a bank debit) or failed links the customer only, so the subscription's own events
    find the user; its status comes from those events."""
    if session.mode not in (None, "subscription") or not session.customer:
        return None
    if not session.subscription:
        return None
    email = session.customer_email or (
        session.customer_details.email if session.customer_details else None
    )
    candidates = _candidates(
        ("id", _user_id(session.metadata)),
        ("id", _clean(session.client_reference_id)),
        ("email", email),
        ("customer", session.customer),
    )
    org_id = _organization(session.metadata)
    if not paid or session.payment_status == "unpaid":
        return Plan(candidates, None, link_customer=session.customer, org_id=org_id)
    provisional = "trialing" if session.payment_status == "no_payment_required" else "active"
    return Plan(
        candidates,
        SubscriptionChange(
            subscription_id=session.subscription,
            customer_id=session.customer,
            status=provisional,
            tier=UserTier.PRO,
            created_at=timestamp(session.created),
            created_exact=False,  # the session's time: the subscription's own events correct it
            ordered=False,  # it says nothing about the subscription's state at a moment
            status_from=CHECKOUT_APPLIES_TO,
        ),
        org_id=org_id,
    )


def _subscription_plan(subscription: Subscription, *, deleted: bool) -> Plan | None:
    if _other_product(subscription.id, subscription.metadata, subscription.prices()):
        return None
    status = "canceled" if deleted else subscription.status
    tier = tier_for_status(status)
    if tier is None and status not in NO_TIER_STATUSES:
        log_event("stripe_subscription_status_ignored", level=logging.WARNING, status=status)
        return None
    # The account the metadata names first: a customer may be shared by two accounts
    # (docs/billing.md#finding-the-user); events without metadata are found by the customer.
    return Plan(
        _candidates(("id", _user_id(subscription.metadata)), ("customer", subscription.customer)),
        SubscriptionChange(
            subscription_id=subscription.id,
            customer_id=subscription.customer,
            status=status,
            tier=tier,
            plan=subscription.plan(get_settings().stripe_price_pro),
            ends_at=subscription.ends_at(get_settings().stripe_price_pro),
            created_at=timestamp(subscription.created),
        ),
        org_id=_organization(subscription.metadata),
    )


def _invoice_plan(invoice: Invoice, *, paid: bool) -> Plan | None:
    subscription_id = invoice.subscription_id()
    if not subscription_id:
        return None  # a one-off invoice: nothing to do with the subscription
    metadata = invoice.details().metadata
    if _other_product(subscription_id, metadata, invoice.prices()):
        return None
    candidates = _candidates(("id", _user_id(metadata)), ("customer", invoice.customer))  # as above
    if paid:
        charged = invoice.amount_paid is None or invoice.amount_paid > 0
        change = SubscriptionChange(
            subscription_id=subscription_id,
            customer_id=invoice.customer,
            status="active" if charged else None,  # a $0 (trial) invoice keeps `trialing`
            tier=UserTier.PRO if charged else None,
            ends_at=invoice.period_end(get_settings().stripe_price_pro),
            may_take_over=False,
        )
    else:
        change = SubscriptionChange(
            subscription_id=subscription_id,
            status="past_due",
            tier=UserTier.PRO,
            may_take_over=False,
            status_from=PAYMENT_FAILURE_APPLIES_TO,
        )
    return Plan(candidates, change, org_id=_organization(metadata))


# --- applying it ----------------------------------------------------------------------------


def apply_event(conn: Conn, event: StripeEvent, *, now: datetime | None = None) -> Outcome:
    """Apply the event's effect in the caller's transaction, with no ledger claim: the rules
    alone, for a caller that owns the transaction (the ordering tests); events go through `process`.

    Raises `BillingUserNotFoundError` (or `BillingOrganizationNotFoundError`) when no user (no
    organization) matches and `InvalidEventError` when the event lacks what its type needs; the
    caller's transaction must then roll back.
    """
    return _apply(conn, event, _subject(conn, event), now or utcnow()).outcome


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom an event is about (`_subject`): nobody (`plan` None: no effect), an organization
    (`for_org`; `org` None: none yet), or the user `user_id`, whose row is locked; for
    `customer.deleted`, every holder of the customer (an organization and a user)."""

    plan: Plan | None
    for_org: bool = False
    org: org_subscriptions.Found | None = None
    user_id: str | None = None


def _customers(plan: Plan) -> tuple[str, ...]:
    return tuple(value for key, value in plan.candidates if key == "customer")


def _named_users(plan: Plan) -> tuple[str, ...]:
    return tuple(value for key, value in plan.candidates if key == "id")


def _lookup(plan: Plan) -> tuple[tuple[LookupKey, str], ...]:
    """The keys the account is looked up by: only the user ids the event names, if it names
    any. Such an event is about that account: when it does not exist (erased, or not signed
    in yet), falling back to the customer's holder or the email's owner would apply another
    account's payment to them (docs/billing.md#finding-the-user)."""
    named: tuple[tuple[LookupKey, str], ...] = tuple(("id", id_) for id_ in _named_users(plan))
    return named or plan.candidates


def _subject(conn: Conn, event: StripeEvent) -> Subject:
    """Find whom the event is about, before its ledger row is claimed: the user's row is locked
    here, ahead of the ledger row whose payload may name them, the order an erasure takes the
    two in (it clears that payload under the same row lock). So either the erasure commits first
    and the event finds no user (recorded without its payload), or the event commits first and
    the erasure clears what it recorded; and the two never deadlock. (An organization's events
    lock the organization's row in its own statement, not the payer's.)

    The metadata decides first: the organization it names, else the user it names, whoever
    holds the customer (a member's personal subscription may be paid through the
    organization's customer). Only an event naming neither is found by its customer, an
    organization's first (docs/billing.md#finding-the-user)."""
    plan = plan_for(event)
    if plan is None:
        return Subject(None)
    if plan.org_id is not None:
        return Subject(plan, for_org=True, org=org_subscriptions.find(conn, plan.org_id))
    org = None if _named_users(plan) else org_subscriptions.find_by_customer(conn, _customers(plan))
    if org is not None and not plan.forget_customer:
        return Subject(plan, for_org=True, org=org)
    user_id = subscriptions.lock_user(conn, _lookup(plan))
    return Subject(plan, for_org=org is not None, org=org, user_id=user_id)


@dataclass(frozen=True, slots=True)
class Done:
    """What `_apply` did: the `outcome`, the id of the user whose row changed (`changed`; None:
    none, or an organization's), and the customer the event would have linked had another row
    not held it (`shared_customer`: linked nowhere, logged as `stripe_customer_shared`)."""

    outcome: Outcome
    changed: str | None = None
    shared_customer: str | None = None


def _shared(plan: Plan, shared: bool) -> str | None:
    """The customer the plan would have linked, when another row holds it (`shared`)."""
    if not shared:
        return None
    return plan.change.customer_id if plan.change is not None else plan.link_customer


def _apply(conn: Conn, event: StripeEvent, subject: Subject, moment: datetime) -> Done:
    """`apply_event` on the event's `subject`. In the migration's dual/fallback storage modes a
    change to a user also owes the legacy `user:{id}` record a copy, in this transaction
    (`shared.storage.mark_user`).

    A customer another row holds is never linked to a second row (the unique index): the event
    applies everything else to the row it names (docs/billing.md#finding-the-user)."""
    plan = subject.plan
    if plan is None:
        return Done(Outcome.IGNORED)
    if not subject.for_org:
        return _apply_to_user(conn, event, plan, subject.user_id, moment)
    done = _apply_to_org(conn, event, plan, subject.org, moment)
    if subject.user_id is None:
        return done
    # customer.deleted, and a user holds the customer too: they forget it as well.
    forgot = _apply_to_user(conn, event, plan, subject.user_id, moment)
    return done if forgot.outcome is Outcome.STALE else forgot


def _apply_to_user(
    conn: Conn, event: StripeEvent, plan: Plan, user_id: str | None, moment: datetime
) -> Done:
    """The plan applied to the user's row (`user_id`, locked; None: no user matched)."""
    if user_id is None:
        return Done(_no_user(conn, event, plan, moment))
    if plan.forget_customer:
        forgot = subscriptions.forget_customer(conn, user_id, plan.forget_customer, now=moment)
        outcome = Outcome.APPLIED if forgot else Outcome.STALE
        shared = None
    elif plan.change is None:
        link = (
            subscriptions.link_customer(conn, user_id, plan.link_customer, now=moment)
            if plan.link_customer
            else None
        )
        outcome = Outcome.LINKED if link is Link.LINKED else Outcome.STALE
        shared = _shared(plan, link is Link.SHARED)
    else:
        applied = subscriptions.apply_change(
            conn, user_id, plan.change, event_at=_ordering_time(event), now=moment
        )
        outcome = _OUTCOMES[applied.decision]
        shared = _shared(plan, applied.customer_shared)
    if outcome is Outcome.STALE:
        return Done(outcome, shared_customer=shared)
    if _legacy_mode():
        from shared import storage  # only the migration's modes need the switch here

        storage.mark_user(conn, user_id)
    return Done(outcome, user_id, shared)


def _no_user(conn: Conn, event: StripeEvent, plan: Plan, moment: datetime) -> Outcome:
    """No user matches: ERASED when the event is about an erased account, else a failure to
    retry (`BillingUserNotFoundError`).

    Erased: its customer was remembered by the erasure, or a user id it names has an account
    tombstone (erased before any customer was linked: a checkout that completed after the
    erasure); that customer is then remembered too, for its events that name only it. A user id
    never seen (a mistake, or a checkout racing the first sign-in) still fails. The error goes
    to the ledger, so it names the kinds of key tried, never their values."""
    customers = _customers(plan)
    if any(subscriptions.is_erased_customer(conn, c) for c in customers):
        return Outcome.ERASED
    if tombstones.any_erased(conn, list(_named_users(plan))):
        for customer in customers:
            subscriptions.remember_customer(conn, customer, now=moment)
        return Outcome.ERASED
    if plan.forget_customer:
        return Outcome.IGNORED  # a customer no account holds (any more): nothing to forget
    tried = ", ".join(dict.fromkeys(key for key, _ in _lookup(plan))) or "no keys"
    raise BillingUserNotFoundError(f"no user for {event.type} (tried: {tried})")


def _apply_to_org(
    conn: Conn,
    event: StripeEvent,
    plan: Plan,
    org: org_subscriptions.Found | None,
    moment: datetime,
) -> Done:
    """The plan applied to an organization's row (organizations have no legacy record), by
    the users' rule for a customer another organization holds."""
    if org is None:
        raise BillingOrganizationNotFoundError(
            f"no organization for {event.type} (tried: organizationId)"
        )
    if org.deleted:
        return Done(Outcome.DELETED)
    if plan.forget_customer:
        forgot = org_subscriptions.forget_customer(conn, org.id, plan.forget_customer, now=moment)
        return Done(Outcome.APPLIED if forgot else Outcome.STALE)
    if plan.change is None:
        link = (
            org_subscriptions.link_customer(conn, org.id, plan.link_customer, now=moment)
            if plan.link_customer
            else None
        )
        outcome = Outcome.LINKED if link is Link.LINKED else Outcome.STALE
        return Done(outcome, None, _shared(plan, link is Link.SHARED))
    applied = org_subscriptions.apply_change(
        conn, org.id, plan.change, event_at=_ordering_time(event), now=moment
    )
    return Done(_OUTCOMES[applied.decision], None, _shared(plan, applied.customer_shared))


# Stripe's `created` has one-second resolution, and Checkout often creates a subscription and
# activates it within one second. A subscription's creation precedes every change to it, so its
# `customer.subscription.created` orders first within its second (stamped this much earlier).
_CREATION_FIRST = timedelta(milliseconds=1)


def _ordering_time(event: StripeEvent) -> datetime:
    """When the event happened, for ordering the events of one subscription (rule 4)."""
    if event.type == SUBSCRIPTION_CREATED:
        return event.created - _CREATION_FIRST
    return event.created


def _legacy_mode() -> bool:
    return get_settings().storage_mode != "postgres"


_OUTCOMES = {
    Decision.TAKE_OVER: Outcome.APPLIED,
    Decision.APPLY: Outcome.APPLIED,
    Decision.FILL: Outcome.FILLED,
    Decision.STALE: Outcome.STALE,
}


def _claim_and_apply(conn: Conn, event: StripeEvent, now: datetime) -> Done:
    subject = _subject(conn, event)  # the user's row locked before the ledger row: see there
    if webhook_events.claim(conn, event.id, event.type, event.payload(), now=now) is None:
        return Done(Outcome.DUPLICATE)
    done = _apply(conn, event, subject, now)
    erased = done.outcome is Outcome.ERASED
    webhook_events.mark_processed(conn, event.id, now=now, forget_payload=erased)
    return done


def process(event: StripeEvent, *, now: datetime | None = None) -> Outcome:
    """Process a verified event exactly once; see the module docstring.

    Raises on failure, after recording it: `DatabaseUnavailableError` (answer 503) or anything
    else (answer 500), so the sender retries. After the commit, in dual/fallback storage modes,
    the changed user is copied to the legacy `user:{id}` record; a Redis failure there leaves
    the copy owed to the repair job and the event still succeeds.
    """
    moment = now or utcnow()
    try:
        done = db.transaction(lambda conn: _claim_and_apply(conn, event, moment))
    except Exception as error:
        _record_failure(event.id, event.type, event.payload(), error, moment)
        raise
    outcome = done.outcome
    if done.changed is not None and _legacy_mode():
        from shared import storage

        storage.sync_user(done.changed)
    if done.shared_customer is not None:
        # Another account (or organization) holds the customer: this one was changed without
        # it and has no billing portal. Support splits the customer in Stripe's dashboard
        # (docs/billing.md#finding-the-user). Stripe's ids only, no person's.
        log_event(
            "stripe_customer_shared",
            level=logging.WARNING,
            eventId=event.id,
            type=event.type,
            customer=done.shared_customer,
            outcome=outcome.value,
        )
    if outcome is Outcome.DELETED:
        # A subscription may outlive its organization: support cancels it in Stripe's dashboard.
        log_event(
            "stripe_event_for_deleted_organization",
            level=logging.WARNING,
            eventId=event.id,
            type=event.type,
        )
    elif outcome is Outcome.ERASED:
        # The event id (not personal data) lets support open it in Stripe's dashboard and
        # cancel a subscription that outlived its account (docs/billing.md, "Erasure").
        log_event(
            "stripe_event_for_erased_customer",
            level=logging.WARNING,
            eventId=event.id,
            type=event.type,
        )
    else:
        log_event("stripe_event", type=event.type, outcome=outcome.value)
    return outcome


def process_recorded(event_id: str, *, now: datetime | None = None) -> Outcome:
    """Run a recorded event again from its stored payload (the retry cron's entry point).

    A Stripe record that cannot be run again (no stored payload, or one that is not a valid
    event) fails like any other attempt: recorded (attempts + 1, error), then raised, so its
    backoff grows and WEBHOOK_RETRY_MAX_ATTEMPTS ends its retries. Another provider's record
    is refused untouched: it is not ours to retry.
    """
    moment = now or utcnow()
    record = db.run(lambda conn: webhook_events.get(conn, event_id), idempotent=True)
    if record is None:
        raise LookupError(f"webhook event {event_id} is not recorded")
    if record.processed:
        return Outcome.DUPLICATE
    if record.provider != PROVIDER:
        raise InvalidEventError(f"webhook event {event_id} is not a Stripe event")
    try:
        if not record.payload:
            raise InvalidEventError(f"webhook event {event_id} has no stored Stripe payload")
        event = StripeEvent.from_payload(record.payload)
    except InvalidEventError as error:
        _record_failure(record.id, record.type, record.payload, error, moment)
        raise
    return process(event, now=moment)


def describe_failure(error: BaseException) -> str:
    """The error as the ledger stores it: our own messages carry no personal ids or emails (a
    missing user: the kinds of key tried); database errors are reduced to their class, SQLSTATE
    and constraint (their text may quote row values)."""
    ours = (
        InvalidEventError
        | BillingUserNotFoundError
        | BillingOrganizationNotFoundError
        | BillingNotConfiguredError
    )
    if isinstance(error, ours | DatabaseUnavailableError):
        return f"{type(error).__name__}: {error}"
    if isinstance(error, DBAPIError) and error.orig is not None:
        original = error.orig
        sqlstate = getattr(original, "sqlstate", None)
        constraint = violated_constraint(error)
        detail = f" on {constraint}" if constraint else ""
        return f"{type(original).__name__} (SQLSTATE {sqlstate}){detail}"
    return type(error).__name__


def _record_failure(
    event_id: str,
    event_type: str,
    payload: dict[str, Any] | None,
    error: BaseException,
    now: datetime,
) -> None:
    reason = describe_failure(error)
    log_event(
        "stripe_event_failed", level=logging.ERROR, eventId=event_id, type=event_type, reason=reason
    )
    try:
        db.run(
            lambda conn: webhook_events.mark_failed(
                conn, event_id, event_type, payload, reason, now=now
            )
        )
    except Exception as failure:  # the database may be what failed; the sender retries anyway
        log_event(
            "stripe_event_failure_not_recorded", level=logging.ERROR, error=type(failure).__name__
        )
