"""Stripe's events and objects as billing reads them: the slimmed form the webhook ledger stores,
and typed views of subscriptions, checkout sessions and invoices in both API layouts (before and
after 2025-03-31, "basil"). No rules here: `shared.billing` decides what an event does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeAlias

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from shared.storable_text import first_unstorable

CHECKOUT_COMPLETED = "checkout.session.completed"
CHECKOUT_PAID_LATER = "checkout.session.async_payment_succeeded"
CHECKOUT_PAYMENT_FAILED = "checkout.session.async_payment_failed"
CHECKOUT_EVENTS = frozenset({CHECKOUT_COMPLETED, CHECKOUT_PAID_LATER, CHECKOUT_PAYMENT_FAILED})
SUBSCRIPTION_CREATED = "customer.subscription.created"
SUBSCRIPTION_EVENTS = frozenset(
    {
        SUBSCRIPTION_CREATED,
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
# What our checkout puts in `subscription_data.metadata.product` (the original did too).
PRODUCT = "keyflash-pro"
INVOICE_PAID = "invoice.paid"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
CUSTOMER_DELETED = "customer.deleted"


class InvalidEventError(ValueError):
    """The event lacks what its type needs (a retry will not help; the ledger says why)."""


# Stripe's times are Unix seconds; a datetime (and so a timestamp column) ends with year 9999.
# Strict: a JSON boolean (Python's bool is an int), a float or a numeric string is mistyped,
# as the event's own `created` is, not a date in 1970.
LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z
UnixTime = Annotated[int, Field(strict=True, ge=0, le=LAST_SECOND)]


# --- the stored (and processed) form of an event --------------------------------------------

Spec: TypeAlias = "bool | dict[str, Spec]"
_REF: Spec = {"id": True}  # a Stripe id, or an expanded object of which only the id is kept
# Whom the event is about, and (`product`) whether our checkout made the subscription.
_METADATA: Spec = {"clerkUserId": True, "organizationId": True, "product": True}
_SUBSCRIPTION: Spec = {
    "id": True,
    "customer": _REF,
    "status": True,
    "created": True,
    "metadata": _METADATA,
    "current_period_end": True,  # API versions before 2025-03-31
    "ended_at": True,
    "items": {
        "data": {
            "price": {"id": True, "nickname": True, "lookup_key": True},
            "plan": {"id": True, "nickname": True},  # before the Prices API (2020)
            "current_period_end": True,  # 2025-03-31 (basil) and later
        }
    },
}
_INVOICE: Spec = {
    "id": True,
    "customer": _REF,
    "subscription": _REF,  # before basil
    "subscription_details": {"metadata": _METADATA},
    "parent": {"subscription_details": {"subscription": _REF, "metadata": _METADATA}},
    "amount_paid": True,
    "lines": {
        "data": {
            "period": {"end": True},
            "price": _REF,  # before basil
            "plan": _REF,  # before the Prices API (2020)
            "pricing": {"price_details": {"price": _REF}},  # basil and later
        }
    },
}
_CHECKOUT: Spec = {
    "id": True,
    "created": True,
    "mode": True,
    "customer": _REF,
    "subscription": _REF,
    "metadata": _METADATA,
    "client_reference_id": True,
    "customer_email": True,
    "customer_details": {"email": True},
    "payment_status": True,
}
_KEEP: dict[str, Spec] = {
    **{kind: _CHECKOUT for kind in CHECKOUT_EVENTS},
    **{kind: _SUBSCRIPTION for kind in SUBSCRIPTION_EVENTS},
    INVOICE_PAID: _INVOICE,
    INVOICE_PAYMENT_FAILED: _INVOICE,
    CUSTOMER_DELETED: {"id": True},
}


_EMAILS = ("customer_email", "customer_details")


def organization_id(metadata: Any) -> str | None:
    """The organization a Stripe object's metadata names (billing's rule: a non-blank string)."""
    value = metadata.get("organizationId") if isinstance(metadata, Mapping) else None
    return value if isinstance(value, str) and value.strip() else None


def _pick(value: Any, spec: Spec) -> Any:
    """The parts of `value` that `spec` names (lists: each element); never fails."""
    if spec is True or not isinstance(value, dict | list) or not isinstance(spec, dict):
        return value
    if isinstance(value, list):
        return [_pick(item, spec) for item in value]
    return {key: _pick(value[key], sub) for key, sub in spec.items() if key in value}


@dataclass(frozen=True, slots=True)
class StripeEvent:
    """A Stripe event reduced to what billing reads (`object` is the slimmed data.object)."""

    id: str
    type: str
    created: datetime
    object: dict[str, Any]

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> StripeEvent:
        event_id, kind, created = payload.get("id"), payload.get("type"), payload.get("created")
        if not (isinstance(event_id, str) and 0 < len(event_id) <= 255):
            raise InvalidEventError("event id missing")
        if not (isinstance(kind, str) and 0 < len(kind) <= 255):
            raise InvalidEventError("event type missing")
        if not isinstance(created, int) or isinstance(created, bool) or created < 0:
            raise InvalidEventError("event created time missing")
        if created > LAST_SECOND:
            raise InvalidEventError("event created time out of range")
        moment = datetime.fromtimestamp(created, UTC)
        data = payload.get("data")
        obj = data.get("object") if isinstance(data, Mapping) else None
        spec = _KEEP.get(kind)
        if spec is not None and not isinstance(obj, Mapping):  # Stripe's events always have it
            raise InvalidEventError("event data.object missing")
        slim = _pick(dict(obj), spec) if spec is not None and isinstance(obj, Mapping) else {}
        if kind in CHECKOUT_EVENTS and organization_id(slim.get("metadata")):
            # An organization's checkout is found by the organization, never by email: the
            # payer's address is not kept (the ledger outlives the payer's erasure).
            slim = {key: value for key, value in slim.items() if key not in _EMAILS}
        if first_unstorable((event_id, kind, slim)) is not None:  # the ledger could not hold it
            raise InvalidEventError("event text PostgreSQL cannot store")
        return cls(event_id, kind, moment, slim)

    def payload(self) -> dict[str, Any]:
        """What the ledger stores: enough to process the event again, nothing more."""
        record: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "created": int(self.created.timestamp()),
        }
        if self.type in _KEEP:
            record["data"] = {"object": self.object}
        return record


# --- Stripe objects, as far as billing reads them -------------------------------------------


# Stripe documents its ids as at most 255 characters; they are never blank and hold no
# whitespace or control characters. Anything else is mistyped: refused here, not by
# PostgreSQL's unique index (a btree entry over ~2,700 bytes: `ProgramLimitExceeded`).
StripeId = Annotated[str, StringConstraints(pattern=r"^[^\s\x00-\x1f\x7f-\x9f]{1,255}$")]


def _ref(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


Ref = Annotated[StripeId | None, BeforeValidator(_ref)]
Metadata = Annotated[dict[str, Any], BeforeValidator(lambda value: value or {})]


class StripeModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Price(StripeModel):
    id: StripeId | None = None
    nickname: str | None = None
    lookup_key: str | None = None


class Item(StripeModel):
    price: Price | None = None
    plan: Price | None = None  # before the Prices API (2020): a plan's id is a price id
    current_period_end: UnixTime | None = None

    def priced(self) -> Price | None:
        """The item's price, or the legacy `plan` that stands for it (Stripe reads either id as
        the other), so a plan-only item is judged as a price item is."""
        return self.price or self.plan


class Items(StripeModel):
    data: list[Item] = []


class Subscription(StripeModel):
    id: StripeId
    customer: Ref = None
    status: str
    created: UnixTime | None = None
    metadata: Metadata = {}
    current_period_end: UnixTime | None = None
    ended_at: UnixTime | None = None
    items: Items = Items()

    def prices(self) -> frozenset[str]:
        return frozenset(
            price.id for item in self.items.data if (price := item.priced()) and price.id
        )

    def plan(self, pro_price: str | None) -> str | None:
        """The name (nickname, else lookup_key, else id) of the item on `pro_price`, the one
        whose period counts (`ends_at`), else of the first item that has one: an add-on listed
        first is not the plan."""
        prices = [price for item in self.items.data if (price := item.priced()) is not None]
        pro = [price for price in prices if pro_price and price.id == pro_price]
        for price in pro + prices:
            name = price.nickname or price.lookup_key or price.id
            if name:
                return name
        return None

    def ends_at(self, pro_price: str | None) -> datetime | None:
        """`ended_at` once ended, else the period end: the subscription's (before basil), else
        the items' (`period_end`)."""
        ends = [
            (price.id if (price := item.priced()) else None, item.current_period_end)
            for item in self.items.data
            if item.current_period_end
        ]
        moment = self.ended_at or self.current_period_end
        return timestamp(moment) if moment else period_end(ends, pro_price)


class CustomerDetails(StripeModel):
    email: str | None = None


class CheckoutSession(StripeModel):
    id: StripeId
    created: UnixTime | None = None
    mode: str | None = None
    customer: Ref = None
    subscription: Ref = None
    metadata: Metadata = {}
    client_reference_id: str | None = None
    customer_email: str | None = None
    customer_details: CustomerDetails | None = None
    payment_status: str | None = None


class SubscriptionDetails(StripeModel):
    subscription: Ref = None
    metadata: Metadata = {}


class Parent(StripeModel):
    subscription_details: SubscriptionDetails | None = None


class Period(StripeModel):
    end: UnixTime | None = None


class PriceDetails(StripeModel):
    price: Ref = None


class Pricing(StripeModel):
    price_details: PriceDetails | None = None


class Line(StripeModel):
    period: Period | None = None
    price: Ref = None  # before basil
    plan: Ref = None  # before the Prices API (2020), as an item's
    pricing: Pricing | None = None  # basil and later

    def price_id(self) -> str | None:
        if self.pricing is not None and self.pricing.price_details is not None:
            return self.pricing.price_details.price
        return self.price or self.plan


class Lines(StripeModel):
    data: list[Line] = []


class Customer(StripeModel):
    id: StripeId


class Invoice(StripeModel):
    id: StripeId
    customer: Ref = None
    subscription: Ref = None
    subscription_details: SubscriptionDetails | None = None
    parent: Parent | None = None
    lines: Lines = Lines()
    amount_paid: int | None = None

    def details(self) -> SubscriptionDetails:
        if self.parent is not None and self.parent.subscription_details is not None:
            return self.parent.subscription_details
        return self.subscription_details or SubscriptionDetails()

    def subscription_id(self) -> str | None:
        return self.subscription or self.details().subscription

    def prices(self) -> frozenset[str]:
        return frozenset(price for line in self.lines.data if (price := line.price_id()))

    def period_end(self, pro_price: str | None) -> datetime | None:
        """The latest period end of the lines on `pro_price`; None (the period kept) for an
        invoice without one: Stripe bills an add-on added mid-cycle alone, and its period, a
        year perhaps, is not the PRO plan's."""
        ends = [
            line.period.end
            for line in self.lines.data
            if pro_price and line.price_id() == pro_price and line.period and line.period.end
        ]
        return timestamp(max(ends)) if ends else None


def period_end(ends: list[tuple[str | None, int]], pro_price: str | None) -> datetime | None:
    """The latest end among the (price id, period end) pairs on `pro_price`, else among all:
    since basil a subscription's items may renew on different intervals, and a yearly add-on
    must not stretch the PRO plan's period."""
    pro = [end for price, end in ends if pro_price and price == pro_price]
    latest = pro or [end for _, end in ends]
    return timestamp(max(latest)) if latest else None


def timestamp(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)
