"""POST /api/orgs/{org_id}/checkout and /billing-portal
(docs/organizations.md#billing-per-organization) against the local fake of the Stripe API
(tests/support/fake_stripe.py) on a real Postgres, both lanes: who may start or manage an
organization's subscription (the token's active org or the mirror's membership, with
`org:billing:manage`), what reaches Stripe, and the round trip through the signed webhook to the
organization's row."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import insert, update

from functions import org_checkout
from shared import config, db
from shared.clock import utcnow
from shared.http import stripe_sessions
from shared.models import UserTier
from shared.models.organizations import Organization, OrganizationMember
from shared.rbac import BILLING_MANAGE, SEARCHES_MANAGE
from shared.repositories import organizations
from tests.support.fake_stripe import API_KEY, IN_PROGRESS, PRICE, FakeStripe, serve
from tests.support.http import STYLES, Caller, Keys, Result, logged
from tests.support.stripe_events import SECRET, deliver, make_user, stripe_event, user

ORG = "org_acme"
CHECKOUT = f"/api/orgs/{ORG}/checkout"
PORTAL = f"/api/orgs/{ORG}/billing-portal"
SESSIONS = "/v1/checkout/sessions"
PORTALS = "/v1/billing_portal/sessions"
APP_URL = "https://app.keyflash.test"
NOT_FOUND = "Organization not found"
FORBIDDEN = "You do not have permission to manage this organization's billing"
ALREADY_SUBSCRIBED = org_checkout.ALREADY_SUBSCRIBED


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with serve() as fake:
        yield fake


@pytest.fixture
def billing_env(api_env: Keys, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> Keys:
    for name, value in {
        "BILLING_ENABLED": "true",
        "STRIPE_SECRET_KEY": API_KEY,
        "STRIPE_PRICE_PRO": PRICE,
        "STRIPE_API_BASE": fake_stripe.url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "APP_URL": APP_URL,
    }.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    return api_env


@pytest.fixture(params=STYLES)
def call(request: pytest.FixtureRequest, billing_env: Keys) -> Caller:
    """Every invocation style, billing configured."""
    return Caller(request.param, billing_env)


@pytest.fixture
def lambda_call(billing_env: Keys) -> Caller:
    return Caller("lambda_v2", billing_env)


def token(
    call: Caller,
    user_id: str = "user_a",
    *,
    org: str | None = ORG,
    role: str = "org:admin",
    permissions: tuple[str, ...] = (),
) -> dict[str, str]:
    """A session (Clerk's v1 org claims) with `org` active, or none."""
    claims: dict[str, Any] = {"email": f"{user_id}@example.com"}
    if org is not None:
        claims.update(org_id=org, org_role=role, org_permissions=list(permissions))
    return {"authorization": f"Bearer {call.token(user_id, **claims)}"}


def post(call: Caller, path: str, headers: dict[str, str]) -> Result:
    module = "org_checkout" if path.endswith("/checkout") else "org_billing_portal"
    return call(module, "POST", path, headers=headers)


def make_org(org_id: str = ORG, **columns: Any) -> None:
    db.run(lambda conn: organizations.ensure(conn, org_id, slug="acme"))
    if columns:
        statement = update(Organization).where(Organization.id == org_id).values(**columns)
        db.run(lambda conn: conn.session.execute(statement))


def make_member(user_id: str, role: str, *, org_id: str = ORG, **columns: Any) -> None:
    """The mirror's membership row (what Clerk's organizationMembership events write)."""
    make_org(org_id)
    values = {"organization_id": org_id, "user_id": user_id, "role": role, **columns}
    statement = insert(OrganizationMember).values(updated_at=utcnow(), **values)
    db.run(lambda conn: conn.session.execute(statement))


def org(org_id: str = ORG) -> Organization:
    found = db.run(lambda conn: conn.session.get(Organization, org_id))
    assert found is not None
    return found


def without_time(result: Result) -> dict[str, Any]:
    return {k: v for k, v in result.json.items() if k != "timestamp"}


# --- checkout: who may -----------------------------------------------------------------------


def test_an_admin_of_the_active_org_gets_a_session_naming_the_organization_only(
    call: Caller, fake_stripe: FakeStripe
) -> None:
    """The first request of an org the mirror has not seen makes its row from the token."""
    result = post(call, CHECKOUT, token(call))
    assert result.status == 200, result.text
    [sent] = fake_stripe.created(SESSIONS)
    [session] = fake_stripe.sessions.values()
    assert result.json == {"url": session["url"]}
    assert sent.params == {
        "mode": "subscription",
        "line_items[0][price]": PRICE,
        "line_items[0][quantity]": "1",
        "success_url": f"{APP_URL}/search?upgraded=true",
        "cancel_url": f"{APP_URL}/search?canceled=true",
        "allow_promotion_codes": "true",
        "client_reference_id": ORG,
        "metadata[organizationId]": ORG,
        "subscription_data[metadata][product]": "keyflash-pro",
        "subscription_data[metadata][organizationId]": ORG,
        "customer_email": "user_a@example.com",
        "expires_at": sent.params["expires_at"],  # tests/functions/test_checkout.py checks it
    }
    assert sent.headers["idempotency-key"].startswith("kf-org-checkout-")
    assert (org().name, org().slug, org().tier) == (ORG, None, UserTier.FREE)


def test_a_member_holding_the_billing_permission_may_subscribe(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    headers = token(lambda_call, role="org:member", permissions=(BILLING_MANAGE,))
    assert post(lambda_call, CHECKOUT, headers).status == 200
    assert len(fake_stripe.created(SESSIONS)) == 1


@pytest.mark.parametrize(
    ("role", "permissions"),
    [("org:member", ()), ("org:member", (SEARCHES_MANAGE,)), ("org:viewer", ())],
)
def test_a_member_without_the_billing_permission_gets_403(
    call: Caller, fake_stripe: FakeStripe, role: str, permissions: tuple[str, ...]
) -> None:
    for path in (CHECKOUT, PORTAL):
        result = post(call, path, token(call, role=role, permissions=permissions))
        assert (result.status, result.json["message"]) == (403, FORBIDDEN), path
    assert fake_stripe.requests == []


def test_a_non_member_gets_the_same_404_as_for_no_such_organization(
    call: Caller, fake_stripe: FakeStripe
) -> None:
    """user_b's token names another org and the mirror has no membership: nothing tells them
    that org_acme exists (it does, with a paying customer)."""
    make_member("user_a", "org:admin")
    make_org(stripe_customer_id="cus_org")
    outsider = token(call, "user_b", org="org_other")
    answers = [
        post(call, CHECKOUT, outsider),
        post(call, "/api/orgs/org_nothere/checkout", outsider),
        post(call, PORTAL, outsider),
        post(call, "/api/orgs/org_nothere/billing-portal", outsider),
        post(call, CHECKOUT, token(call, "user_b", org=None)),
    ]
    assert {a.status for a in answers} == {404}
    bodies = [without_time(a) for a in answers]
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["message"] == NOT_FOUND
    assert fake_stripe.requests == []


def test_an_id_no_organization_can_have_is_400_before_any_lookup(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    for path in ("/api/orgs/not-an-org-id/checkout", "/api/orgs/org_%27x/billing-portal"):
        result = post(lambda_call, path, token(lambda_call))
        assert (result.status, result.json["message"]) == (400, "Invalid organization ID format")
    assert fake_stripe.requests == []


def test_the_mirrors_membership_counts_when_the_token_names_another_org(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_member("user_a", "org:admin")
    make_member("user_b", "org:member")
    assert post(lambda_call, CHECKOUT, token(lambda_call, org="org_other")).status == 200
    refused = post(lambda_call, CHECKOUT, token(lambda_call, "user_b", org="org_other"))
    assert (refused.status, refused.json["message"]) == (403, FORBIDDEN)
    assert len(fake_stripe.created(SESSIONS)) == 1


def test_a_removed_membership_or_a_deleted_organization_is_404(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_member("user_a", "org:admin", deleted_at=utcnow())
    assert post(lambda_call, CHECKOUT, token(lambda_call, org=None)).status == 404
    make_member("user_c", "org:admin", org_id="org_gone")
    make_org("org_gone", deleted_at=utcnow())
    for headers in (token(lambda_call, "user_c", org="org_gone"), token(lambda_call, "user_c")):
        result = post(lambda_call, "/api/orgs/org_gone/checkout", headers)
        assert (result.status, result.json["message"]) == (404, NOT_FOUND)
    assert fake_stripe.requests == []


def test_billing_off_is_503_and_no_session_is_401(
    call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsigned = call("org_checkout", "POST", CHECKOUT)
    assert (unsigned.status, unsigned.json["message"]) == (401, "Authentication required")
    monkeypatch.setenv("BILLING_ENABLED", "false")
    config.get_settings.cache_clear()
    assert post(call, CHECKOUT, token(call)).status == 503
    assert fake_stripe.requests == []


# --- checkout: what reaches Stripe ---------------------------------------------------------


def test_the_organizations_customer_is_reused_never_the_payers_own(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user("user_a", "user_a@example.com", stripe_customer_id="cus_personal")
    make_org(stripe_customer_id="cus_org", subscription_status="canceled")
    assert post(lambda_call, CHECKOUT, token(lambda_call)).status == 200
    [sent] = fake_stripe.created(SESSIONS)
    assert sent.params["customer"] == "cus_org"
    assert "customer_email" not in sent.params
    assert "cus_personal" not in str(sent.params)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"tier": UserTier.ENTERPRISE}, org_checkout.ENTERPRISE_PLAN),
        ({"tier": UserTier.PRO, "subscription_status": "active"}, ALREADY_SUBSCRIBED),
        ({"tier": UserTier.PRO, "subscription_status": "past_due"}, ALREADY_SUBSCRIBED),
    ],
)
def test_an_organization_that_pays_gets_409_not_a_second_subscription(
    lambda_call: Caller, fake_stripe: FakeStripe, columns: dict[str, Any], message: str
) -> None:
    make_org(**columns)
    result = post(lambda_call, CHECKOUT, token(lambda_call))
    assert (result.status, result.json["message"]) == (409, message)
    assert fake_stripe.requests == []


def test_a_double_click_makes_one_session(lambda_call: Caller, fake_stripe: FakeStripe) -> None:
    first = post(lambda_call, CHECKOUT, token(lambda_call))
    second = post(lambda_call, CHECKOUT, token(lambda_call))
    assert first.json == second.json
    assert len(fake_stripe.created(SESSIONS)) == 1
    assert len(fake_stripe.requests) == 2


def test_stripe_down_is_503(lambda_call: Caller, fake_stripe: FakeStripe) -> None:
    fake_stripe.fail_next(500, "api_error", times=2)
    assert post(lambda_call, CHECKOUT, token(lambda_call)).status == 503


def test_a_double_click_while_stripe_still_creates_the_session_waits_for_it(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    """The second click's key is in progress at Stripe (409 to the SDK's try and its retry):
    the route asks again after a pause and answers the first session, not a 500."""
    hold = fake_stripe.hold_next_create(release_after=2)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(post, lambda_call, CHECKOUT, token(lambda_call))
        assert hold.arrived.wait(30)
        second = post(lambda_call, CHECKOUT, token(lambda_call))
        clicked = first.result(timeout=60)
    assert (clicked.status, second.status) == (200, 200), second.text
    assert clicked.json == second.json
    assert len(fake_stripe.created(SESSIONS)) == 1


@pytest.mark.parametrize("path", [CHECKOUT, PORTAL])
def test_stripe_busy_with_the_key_past_the_time_budget_is_503(
    lambda_call: Caller,
    fake_stripe: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    monkeypatch.setattr(stripe_sessions, "CONFLICT_WAIT_S", 60.0)  # no time to wait it out
    make_org(stripe_customer_id="cus_org")
    fake_stripe.fail_next(409, "idempotency_error", times=2, message=IN_PROGRESS.format(key="k"))
    with caplog.at_level(logging.INFO):
        result = post(lambda_call, path, token(lambda_call))
    assert (result.status, result.headers["retry-after"]) == (503, "60"), result.text
    [line] = logged(caplog, "stripe_request_failed")
    assert (line["error"], line["httpStatus"]) == ("APIError", 409)
    assert all("in-progress" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("path", [CHECKOUT, PORTAL])
def test_a_session_with_a_null_url_is_503_not_200(
    lambda_call: Caller, fake_stripe: FakeStripe, path: str
) -> None:
    make_org(stripe_customer_id="cus_org")
    fake_stripe.reply_next(200, {"id": "cs_bad", "url": None})
    result = post(lambda_call, path, token(lambda_call))
    assert result.status == 503, result.text


def test_checkout_to_webhook_makes_the_organization_pro_and_not_the_payer(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    assert post(lambda_call, CHECKOUT, token(lambda_call)).status == 200
    [session_id] = fake_stripe.sessions
    paid = fake_stripe.complete(session_id, customer="cus_new", subscription="sub_new")
    result = deliver(lambda_call, stripe_event("checkout.session.completed", paid))
    assert (result.status, result.json) == (200, {"received": True})
    row = org()
    assert (row.tier, row.stripe_customer_id, row.stripe_subscription_id) == (
        UserTier.PRO,
        "cus_new",
        "sub_new",
    )
    payer = user("user_a")
    assert (payer.tier, payer.stripe_customer_id) == (UserTier.FREE, None)
    again = post(lambda_call, CHECKOUT, token(lambda_call))
    assert (again.status, again.json["message"]) == (409, ALREADY_SUBSCRIBED)


# --- the billing portal ---------------------------------------------------------------------


def test_the_portal_opens_on_the_organizations_customer(
    call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user("user_a", "user_a@example.com", stripe_customer_id="cus_personal")
    make_org(stripe_customer_id="cus_org")
    result = post(call, PORTAL, token(call))
    assert result.status == 200, result.text
    [sent] = fake_stripe.created(PORTALS)
    assert sent.params == {"customer": "cus_org", "return_url": f"{APP_URL}/search"}
    assert result.json["url"].startswith("https://billing.stripe.com/")


def test_the_portal_for_an_organization_that_never_paid_is_404(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user("user_a", "user_a@example.com", stripe_customer_id="cus_personal")
    result = post(lambda_call, PORTAL, token(lambda_call))
    assert (result.status, result.json["message"]) == (404, stripe_sessions.NO_CUSTOMER)
    assert fake_stripe.requests == []
