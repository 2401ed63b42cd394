"""Whole Stripe and Clerk event flows, delivered in EVERY order, with duplicates (docs/billing.md).

Each flow's events are built from Stripe's own published example objects (`tests/fixtures/
stripe`, in the shape before API version 2025-03-31 and the current one) and Clerk's documented
`user.created` payload, signed with stripe-python's and svix's own signing code, and POSTed over
HTTP to the functions' apps. For every permutation (`itertools.permutations`) of a flow's events
the database starts from the same state, the events are delivered in that order; those answered
5xx (a user not linked yet) are delivered again afterwards, as Stripe retries them; then the
order's first and last events are delivered once more (so every event is replayed in some
order) and must be answered as duplicates. The end state must be the one written down in the
flow, whatever the order.

The flows run on the direct database lane only: they test the rules, over a few thousand
deliveries; the webhook suites run both lanes.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import stripe
from starlette.testclient import TestClient
from svix.webhooks import Webhook

from functions import webhooks_clerk, webhooks_stripe
from shared import config, db
from shared.clock import utcnow
from shared.models import UserTier
from shared.models.users import User
from shared.repositories import subscriptions, users
from tests.support.http import Keys

FIXTURES = Path(__file__).parents[1] / "fixtures"
STRIPE_SECRET = "whsec_flow_tests_secret"
CLERK_SECRET = "whsec_" + "Zmxvdy10ZXN0cy1zdml4LXNlY3JldC0zMi1ieXRlcyE="
SHAPES = {"2025-02": "2024-06-20", "2026-08": "2025-03-31.basil"}  # fixture → api_version

# Stripe's example ids, and Clerk's example user.
CUSTOMER = "cus_QXg1o8vcGmoR32"
SUB_A = "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"
SUB_B = "sub_1QbB2yB7WZ01zgkWfVqXb7Nn"
PRICE = "price_1PgafmB7WZ01zgkW6dKueIc5"  # the example subscription's; STRIPE_PRICE_PRO here
CLERK_USER = "user_29w83sxmDNGwOuEthce5gg56FcC"
EMAIL = "example@example.org"

T = 1_790_000_000  # 2026-09-21T13:33:20Z
DAY = 86_400


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --- Stripe objects from the published examples ---------------------------------------------


def _example(kind: str, shape: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "stripe" / f"{kind}.{shape}.json").read_text())
    return loaded


@dataclass(frozen=True)
class Stripe:
    """Builds a flow's objects in one API shape from Stripe's example objects."""

    shape: str

    def subscription(
        self,
        status: str,
        *,
        sub_id: str = SUB_A,
        created: int = T,
        period_end: int,
        plan: str = "Pro monthly",
        clerk_user_id: str | None = None,
        ended_at: int | None = None,
        cancel_at_period_end: bool = False,
    ) -> dict[str, Any]:
        obj = _example("subscription", self.shape)
        obj.update(
            id=sub_id,
            customer=CUSTOMER,
            status=status,
            created=created,
            start_date=created,
            ended_at=ended_at,
            canceled_at=ended_at,
            cancel_at=period_end if cancel_at_period_end else None,
            cancel_at_period_end=cancel_at_period_end,
            metadata={"clerkUserId": clerk_user_id} if clerk_user_id else {},
        )
        item = obj["items"]["data"][0]
        item["subscription"] = sub_id
        item["price"]["nickname"] = plan
        if self.shape == "2025-02":
            obj["current_period_end"] = period_end
        else:
            item["current_period_end"] = period_end
        return obj

    def invoice(
        self, *, sub_id: str = SUB_A, amount_paid: int, period_end: int, reason: str
    ) -> dict[str, Any]:
        obj = _example("invoice", self.shape)
        obj.update(
            id=f"in_{sub_id[-6:]}_{period_end}",
            customer=CUSTOMER,
            status="paid",
            amount_paid=amount_paid,
            amount_due=amount_paid,
            billing_reason=reason,
            customer_email=EMAIL,
        )
        line = obj["lines"]["data"][0]
        line["period"] = {"start": period_end - 30 * DAY, "end": period_end}
        if self.shape == "2025-02":
            line["price"]["id"] = PRICE  # the example invoice's is another example's price
            obj["subscription"] = sub_id
        else:
            line["pricing"]["price_details"] = {"price": PRICE, "product": "prod_QXg1hqf4jFNsqG"}
            obj["parent"] = {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"subscription": sub_id, "metadata": {}},
            }
        return obj

    def checkout(
        self, payment_status: str, *, sub_id: str = SUB_A, created: int = T - 60
    ) -> dict[str, Any]:
        obj = _example("checkout.session", self.shape)
        obj.update(
            id=f"cs_test_{sub_id[-6:]}",
            mode="subscription",
            customer=CUSTOMER,
            subscription=sub_id,
            client_reference_id=CLERK_USER,
            created=created,
            payment_status=payment_status,
            status="complete",
            payment_intent=None,
            customer_details={**obj["customer_details"], "email": EMAIL},
        )
        return obj

    def event(self, name: str, kind: str, obj: dict[str, Any], created: int) -> Delivery:
        payload = {
            "id": f"evt_{name}",
            "object": "event",
            "api_version": SHAPES[self.shape],
            "created": created,
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }
        return Delivery(name, "stripe", json.dumps(payload))


# --- Clerk events from the documented example -----------------------------------------------


def clerk_user_event(kind: str, email: str, updated_at_ms: int) -> Delivery:
    payload = json.loads((FIXTURES / "clerk" / "user.created.json").read_text())
    data = payload["data"]
    address = copy.deepcopy(data["email_addresses"][0])
    address.update(id=f"idn_{updated_at_ms}", email_address=email)
    data["email_addresses"].append(address)  # the old address stays, no longer primary
    data.update(primary_email_address_id=address["id"], updated_at=updated_at_ms)
    payload.update(type=kind, timestamp=updated_at_ms)
    return Delivery(f"{kind}@{updated_at_ms}", "clerk", json.dumps(payload))


def clerk_deleted() -> Delivery:
    payload = {
        "data": {"deleted": True, "id": CLERK_USER, "object": "user"},
        "object": "event",
        "type": "user.deleted",
    }
    return Delivery("user.deleted", "clerk", json.dumps(payload))


# --- delivery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    name: str
    provider: str  # "stripe" or "clerk"
    body: str


class Endpoints:
    """The two webhook functions over HTTP (the team's ASGI test client), signed per delivery."""

    def __init__(self, stripe_client: TestClient, clerk_client: TestClient) -> None:
        self.stripe = stripe_client
        self.clerk = clerk_client

    def post(self, delivery: Delivery) -> tuple[int, dict[str, Any]]:
        headers = {"content-type": "application/json"}
        if delivery.provider == "stripe":
            headers["stripe-signature"] = stripe.WebhookSignature.generate_signature_header(
                delivery.body, STRIPE_SECRET
            )
            response = self.stripe.post(
                "/api/webhooks/stripe", content=delivery.body, headers=headers
            )
        else:
            msg_id = f"msg_{delivery.name}"  # Svix keeps the id across retries
            now = datetime.now(UTC)
            headers.update(
                {
                    "svix-id": msg_id,
                    "svix-timestamp": str(int(now.timestamp())),
                    "svix-signature": Webhook(CLERK_SECRET).sign(msg_id, now, delivery.body),
                }
            )
            response = self.clerk.post(
                "/api/webhooks/clerk", content=delivery.body, headers=headers
            )
        body: dict[str, Any] = response.json()
        return response.status_code, body


@pytest.fixture
def endpoints(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[Endpoints]:
    monkeypatch.setenv("BILLING_ENABLED", "true")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)
    monkeypatch.setenv("STRIPE_PRICE_PRO", PRICE)
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", CLERK_SECRET)
    config.get_settings.cache_clear()
    base = "https://api.keyflash.test"
    with (
        TestClient(webhooks_stripe.app, base_url=base) as stripe_client,
        TestClient(webhooks_clerk.app, base_url=base) as clerk_client,
    ):
        yield Endpoints(stripe_client, clerk_client)


# --- flows ----------------------------------------------------------------------------------

State = dict[str, Any]


@dataclass
class Flow:
    """`setup`: delivered first, in order (the state the flow starts from); `events`: delivered
    in every order; `expected`: the end state, field by field (see `state`)."""

    events: list[Delivery]
    expected: State
    setup: list[Delivery] = field(default_factory=list)
    check: Callable[[psycopg.Connection[Any]], None] | None = None


def state() -> State:
    row: User | None = db.run(lambda conn: users.get(conn, CLERK_USER))
    if row is None:
        return {"exists": False}
    return {
        "exists": True,
        "email": row.email,
        "tier": row.tier,
        "status": row.subscription_status,
        "subscription": row.stripe_subscription_id,
        "customer": row.stripe_customer_id,
        "plan": row.subscription_plan,
        "endsAt": row.subscription_ends_at,
        "trialEndsAt": row.trial_ends_at,
    }


def subscribed(s: Stripe, *, clerk_user_id: str | None = None) -> list[Delivery]:
    """A card checkout of subscription A, paid at once (Stripe's order of creation)."""
    sub = s.subscription("active", period_end=T + 30 * DAY, clerk_user_id=clerk_user_id)
    return [
        s.event("a.created", "customer.subscription.created", sub, T),
        s.event(
            "a.invoice",
            "invoice.paid",
            s.invoice(amount_paid=2000, period_end=T + 30 * DAY, reason="subscription_create"),
            T,
        ),
        s.event("a.checkout", "checkout.session.completed", s.checkout("paid"), T + 1),
    ]


PRO_A = {
    "exists": True,
    "email": EMAIL,
    "tier": UserTier.PRO,
    "status": "active",
    "subscription": SUB_A,
    "customer": CUSTOMER,
    "plan": "Pro monthly",
}


def new_subscription(s: Stripe) -> Flow:
    """Without `metadata.clerkUserId` on the subscription: its events wait (5xx, retried)
    until checkout's `client_reference_id` links the customer."""
    return Flow(subscribed(s), {**PRO_A, "endsAt": at(T + 30 * DAY)})


def paid_within_one_second(s: Stripe) -> Flow:
    """Checkout creates the subscription `incomplete` and activates it when the first invoice
    is paid, often within one second: every event has the same `created`. The creation event
    (delivered last, say, after a retry) must not take the status back to `incomplete`."""
    period_end = T + 30 * DAY
    created = s.subscription("incomplete", period_end=period_end, clerk_user_id=CLERK_USER)
    active = s.subscription("active", period_end=period_end, clerk_user_id=CLERK_USER)
    paid = s.invoice(amount_paid=2000, period_end=period_end, reason="subscription_create")
    events = [
        s.event("s.created", "customer.subscription.created", created, T),
        s.event("s.invoice", "invoice.paid", paid, T),
        s.event("s.updated", "customer.subscription.updated", active, T),
        s.event("s.checkout", "checkout.session.completed", s.checkout("paid", created=T), T),
    ]
    return Flow(events, {**PRO_A, "endsAt": at(period_end)})


def trial(s: Stripe) -> Flow:
    """A 7-day trial, nothing charged: Stripe says `trialing`, and so do we."""
    trial_end = T + 7 * DAY
    sub = s.subscription("trialing", period_end=trial_end, clerk_user_id=CLERK_USER)
    events = [
        s.event("t.created", "customer.subscription.created", sub, T),
        s.event("t.checkout", "checkout.session.completed", s.checkout("no_payment_required"), T),
        s.event(
            "t.invoice0",
            "invoice.paid",
            s.invoice(amount_paid=0, period_end=trial_end, reason="subscription_create"),
            T,
        ),
    ]
    return Flow(events, {**PRO_A, "status": "trialing", "endsAt": at(trial_end)})


def trial_to_paid(s: Stripe) -> Flow:
    converted = T + 7 * DAY
    paid_until = converted + 30 * DAY
    flow = trial(s)
    flow.events += [
        s.event(
            "t.active",
            "customer.subscription.updated",
            s.subscription("active", period_end=paid_until, clerk_user_id=CLERK_USER),
            converted,
        ),
        s.event(
            "t.invoice1",
            "invoice.paid",
            s.invoice(amount_paid=2000, period_end=paid_until, reason="subscription_cycle"),
            converted,
        ),
    ]
    flow.expected = {**PRO_A, "endsAt": at(paid_until)}
    return flow


def upgrade(s: Stripe) -> Flow:
    """A → B: a new subscription B (a new checkout), A ends with a paid final invoice."""
    moved = T + 10 * DAY
    b_until = moved + 365 * DAY
    b = s.subscription("active", sub_id=SUB_B, created=moved, period_end=b_until, plan="Pro annual")
    a_end = s.subscription("canceled", period_end=T + 30 * DAY, ended_at=moved)
    events = [
        s.event("b.created", "customer.subscription.created", b, moved),
        s.event(
            "b.checkout",
            "checkout.session.completed",
            s.checkout("paid", sub_id=SUB_B, created=moved - 60),
            moved,
        ),
        s.event(
            "b.invoice",
            "invoice.paid",
            s.invoice(
                sub_id=SUB_B, amount_paid=20000, period_end=b_until, reason="subscription_create"
            ),
            moved,
        ),
        s.event(
            "a.final",
            "invoice.paid",
            s.invoice(amount_paid=533, period_end=moved, reason="subscription_update"),
            moved + 1,
        ),
        s.event("a.deleted", "customer.subscription.deleted", a_end, moved + 1),
    ]
    expected = {**PRO_A, "subscription": SUB_B, "plan": "Pro annual", "endsAt": at(b_until)}
    return Flow(events, expected, setup=subscribed(s))


def cancel_at_period_end(s: Stripe) -> Flow:
    """Cancelled in the portal on day 5: PRO until Stripe deletes it at the period end."""
    period_end = T + 30 * DAY
    flow = Flow(subscribed(s), {})
    flow.events += [
        s.event(
            "a.cancel_scheduled",
            "customer.subscription.updated",
            s.subscription("active", period_end=period_end, cancel_at_period_end=True),
            T + 5 * DAY,
        ),
        s.event(
            "a.deleted",
            "customer.subscription.deleted",
            s.subscription("canceled", period_end=period_end, ended_at=period_end),
            period_end,
        ),
    ]
    flow.expected = {
        **PRO_A,
        "tier": UserTier.FREE,
        "status": "canceled",
        "endsAt": at(period_end),
        "trialEndsAt": "over",
    }
    return flow


def cancel_scheduled(s: Stripe) -> Flow:
    """The same before the period ends: still PRO, `active`, ending at the period end."""
    flow = cancel_at_period_end(s)
    flow.events.pop()
    flow.expected = {**PRO_A, "endsAt": at(T + 30 * DAY)}
    return flow


def payment_failure_recovery(s: Stripe) -> Flow:
    renewal = T + 30 * DAY
    recovered = renewal + 3 * DAY
    paid_until = renewal + 30 * DAY
    events = [
        s.event(
            "r.failed",
            "invoice.payment_failed",
            s.invoice(amount_paid=0, period_end=paid_until, reason="subscription_cycle"),
            renewal,
        ),
        s.event(
            "r.past_due",
            "customer.subscription.updated",
            s.subscription("past_due", period_end=paid_until),
            renewal,
        ),
        s.event(
            "r.paid",
            "invoice.paid",
            s.invoice(amount_paid=2000, period_end=paid_until, reason="subscription_cycle"),
            recovered,
        ),
        s.event(
            "r.active",
            "customer.subscription.updated",
            s.subscription("active", period_end=paid_until),
            recovered,
        ),
    ]
    return Flow(events, {**PRO_A, "endsAt": at(paid_until)}, setup=subscribed(s))


def _delayed(s: Stripe) -> list[Delivery]:
    return [
        s.event("d.checkout", "checkout.session.completed", s.checkout("unpaid"), T),
        s.event(
            "d.created",
            "customer.subscription.created",
            s.subscription("incomplete", period_end=T + 30 * DAY),
            T,
        ),
    ]


def delayed_payment_success(s: Stripe) -> Flow:
    """A bank debit: the checkout completes `unpaid`, the money arrives three days later."""
    cleared = T + 3 * DAY
    events = [
        *_delayed(s),
        s.event(
            "d.succeeded", "checkout.session.async_payment_succeeded", s.checkout("paid"), cleared
        ),
        s.event(
            "d.active",
            "customer.subscription.updated",
            s.subscription("active", period_end=T + 30 * DAY),
            cleared,
        ),
        s.event(
            "d.invoice",
            "invoice.paid",
            s.invoice(amount_paid=2000, period_end=T + 30 * DAY, reason="subscription_create"),
            cleared,
        ),
    ]
    return Flow(events, {**PRO_A, "endsAt": at(T + 30 * DAY)})


def delayed_payment_failure(s: Stripe) -> Flow:
    """The debit bounces: the subscription expires unpaid; the user stays FREE, linked to the
    customer, and (as after any subscription ending) the running trial is over."""
    bounced = T + 3 * DAY
    events = [
        *_delayed(s),
        s.event("d.failed", "checkout.session.async_payment_failed", s.checkout("unpaid"), bounced),
        s.event(
            "d.invoice_failed",
            "invoice.payment_failed",
            s.invoice(amount_paid=0, period_end=T + 30 * DAY, reason="subscription_create"),
            bounced,
        ),
        s.event(
            "d.expired",
            "customer.subscription.updated",
            s.subscription("incomplete_expired", period_end=T + 30 * DAY),
            bounced,
        ),
    ]
    expected = {
        **PRO_A,
        "tier": UserTier.FREE,
        "status": "incomplete_expired",
        "endsAt": at(T + 30 * DAY),
        "trialEndsAt": "over",
    }
    return Flow(events, expected)


def _nothing_personal(conn: psycopg.Connection[Any]) -> None:
    """After erasure: every ledger row is processed and none holds anything about the person."""
    rows = conn.execute("SELECT id, processed, payload::text, error FROM webhook_events").fetchall()
    assert rows and all(processed for _, processed, _, _ in rows)
    for _, _, payload, error in rows:
        text = f"{payload or ''} {error or ''}"
        assert not any(value in text for value in (CUSTOMER, SUB_A, CLERK_USER, EMAIL))
    hashes = conn.execute('SELECT "customerHash" FROM erased_billing_customers').fetchall()
    assert hashes == [(subscriptions.customer_hash(CUSTOMER),)]


def erasure_with_live_subscription(s: Stripe) -> Flow:
    """Clerk deletes a PRO user whose subscription keeps renewing: every event is answered
    200 and recorded, nothing is retried, nothing personal is kept."""
    renewal = T + 30 * DAY
    events = [
        clerk_deleted(),
        s.event(
            "e.renewed",
            "customer.subscription.updated",
            s.subscription("active", period_end=renewal + 30 * DAY),
            renewal,
        ),
        s.event(
            "e.invoice",
            "invoice.paid",
            s.invoice(amount_paid=2000, period_end=renewal + 30 * DAY, reason="subscription_cycle"),
            renewal,
        ),
        s.event(
            "e.failed",
            "invoice.payment_failed",
            s.invoice(amount_paid=0, period_end=renewal + 60 * DAY, reason="subscription_cycle"),
            renewal + 30 * DAY,
        ),
    ]
    return Flow(events, {"exists": False}, setup=subscribed(s), check=_nothing_personal)


STRIPE_FLOWS = [
    new_subscription,
    paid_within_one_second,
    trial,
    trial_to_paid,
    upgrade,
    cancel_scheduled,
    cancel_at_period_end,
    payment_failure_recovery,
    delayed_payment_success,
    delayed_payment_failure,
    erasure_with_live_subscription,
]


# --- running a flow -------------------------------------------------------------------------


pytestmark = pytest.mark.parametrize("database_url", ["direct"], indirect=True)


def reset(conn: psycopg.Connection[Any]) -> datetime:
    """The flow's starting point: only the Clerk user (FREE, in trial); returns its trial end."""
    for table in ("webhook_events", "erased_billing_customers", "legacy_repairs", "users"):
        conn.execute(f"DELETE FROM {table}")
    created = db.run(lambda conn: users.create(conn, CLERK_USER, EMAIL))
    assert created.trial_ends_at is not None
    return created.trial_ends_at


def deliver_all(endpoints: Endpoints, order: tuple[Delivery, ...] | list[Delivery]) -> None:
    """In this order; 5xx answers are delivered again afterwards, as the sender retries."""
    pending = list(order)
    for _ in range(len(order) + 1):
        failed = []
        for delivery in pending:
            status, body = endpoints.post(delivery)
            assert status in (200, 500), (delivery.name, status, body)
            if status == 500:
                failed.append(delivery)
        if not failed:
            return
        pending = failed
    raise AssertionError(f"never processed: {[d.name for d in pending]}")


def run(flow: Flow, endpoints: Endpoints, conn: psycopg.Connection[Any]) -> int:
    """Every order of the flow's events; returns how many orders ran."""
    orders = 0
    for order in itertools.permutations(flow.events):
        trial_end = reset(conn)
        deliver_all(endpoints, flow.setup)
        deliver_all(endpoints, order)
        for delivery in (order[0], order[-1]):  # again: duplicates that change nothing
            status, body = endpoints.post(delivery)
            assert (status, body.get("duplicate")) == (200, True), (delivery.name, body)
        got, expected = state(), dict(flow.expected)
        if got.get("tier") is UserTier.PRO:
            # A paying user's trial end is never read, and the next fall to FREE ends it
            # (least(trialEndsAt, now)) whatever it holds: not part of the state.
            got.pop("trialEndsAt")
        elif expected.get("trialEndsAt") == "over":
            assert got["trialEndsAt"] <= utcnow() < trial_end, [d.name for d in order]
            expected["trialEndsAt"] = got["trialEndsAt"]
        assert got == expected, [d.name for d in order]
        if flow.check is not None:
            flow.check(conn)
        orders += 1
    return orders


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("make_flow", STRIPE_FLOWS, ids=lambda f: f.__name__)
def test_every_order_of_a_stripe_flow_ends_in_stripes_state(
    endpoints: Endpoints,
    admin_conn: psycopg.Connection[Any],
    make_flow: Callable[[Stripe], Flow],
    shape: str,
) -> None:
    flow = make_flow(Stripe(shape))
    assert run(flow, endpoints, admin_conn) == len(list(itertools.permutations(flow.events)))


def test_late_clerk_updates_never_restore_an_older_email(
    endpoints: Endpoints, admin_conn: psycopg.Connection[Any]
) -> None:
    """user.created, then two address changes: whatever the order, the newest address stays."""
    created = Delivery(
        "user.created", "clerk", (FIXTURES / "clerk" / "user.created.json").read_text()
    )
    first = clerk_user_event("user.updated", "first.change@example.org", 1654012824306)
    second = clerk_user_event("user.updated", "Zoë.😀@example.org", 1654013000000)
    for order in itertools.permutations([created, first, second]):
        admin_conn.execute("DELETE FROM webhook_events")
        admin_conn.execute("DELETE FROM users")
        deliver_all(endpoints, order)
        for delivery in order:
            assert endpoints.post(delivery) == (200, {"received": True, "duplicate": True})
        row = db.run(lambda conn: users.get(conn, CLERK_USER))
        assert row is not None, [d.name for d in order]
        assert (row.email, row.clerk_updated_at) == (
            "Zoë.😀@example.org",
            datetime(2022, 5, 31, 16, 3, 20, tzinfo=UTC),
        ), [d.name for d in order]


def test_clerk_events_retried_after_user_deleted_bring_nothing_back(
    endpoints: Endpoints, admin_conn: psycopg.Connection[Any]
) -> None:
    """user.created, then user.deleted, then the two address changes Svix had failed to deliver
    before the deletion, in either order: the user stays erased and the ledger names no one."""
    created = Delivery(
        "user.created", "clerk", (FIXTURES / "clerk" / "user.created.json").read_text()
    )
    first = clerk_user_event("user.updated", "first.change@example.org", 1654012824306)
    second = clerk_user_event("user.updated", "second.change@example.org", 1654013000000)
    for late in itertools.permutations([first, second]):
        for table in ("webhook_events", "account_tombstones", "users"):
            admin_conn.execute(f"DELETE FROM {table}")
        deliver_all(endpoints, [created, clerk_deleted(), *late])
        assert db.run(lambda conn: users.get(conn, CLERK_USER)) is None, [d.name for d in late]
        rows = admin_conn.execute("SELECT processed, payload::text FROM webhook_events").fetchall()
        assert len(rows) == 4 and all(processed for processed, _ in rows)
        assert not any(CLERK_USER in (payload or "") for _, payload in rows)


# --- the same flows, delivered all at once --------------------------------------------------

PARALLEL_ROUNDS = 5


@pytest.fixture
def wide_pool(endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch) -> Iterator[Endpoints]:
    """One connection per concurrent delivery, as that many Lambda containers would have."""
    monkeypatch.setenv("DB_POOL_SIZE", "8")
    config.get_settings.cache_clear()
    db.dispose_engine()
    yield endpoints
    db.dispose_engine()


def at_once(endpoints: Endpoints, deliveries: list[Delivery]) -> list[tuple[Delivery, int]]:
    start = threading.Barrier(len(deliveries))

    def one(delivery: Delivery) -> tuple[Delivery, int]:
        start.wait()
        return delivery, endpoints.post(delivery)[0]

    with ThreadPoolExecutor(max_workers=len(deliveries)) as pool:
        return list(pool.map(one, deliveries))


@pytest.mark.parametrize(
    "make_flow", [upgrade, delayed_payment_success, trial_to_paid], ids=lambda f: f.__name__
)
def test_a_flow_delivered_all_at_once_ends_in_the_same_state(
    wide_pool: Endpoints, admin_conn: psycopg.Connection[Any], make_flow: Callable[[Stripe], Flow]
) -> None:
    """Every event of the flow POSTed at the same moment from its own thread and connection:
    the user's row lock makes each decide against the row the others left."""
    flow = make_flow(Stripe("2026-08"))
    for _ in range(PARALLEL_ROUNDS):
        reset(admin_conn)
        deliver_all(wide_pool, flow.setup)
        answers = at_once(wide_pool, flow.events)
        assert {status for _, status in answers} <= {200, 500}
        deliver_all(wide_pool, [delivery for delivery, status in answers if status == 500])
        got = state()
        got.pop("trialEndsAt")  # PRO in these flows: see `run`
        assert got == flow.expected
