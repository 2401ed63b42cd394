"""Log hygiene: a whole day of traffic, failures included, writes no secret and no PII to logs.

Everything a function or cron can log is captured: every logger at DEBUG through the root
logger (`caplog`; the structured telemetry of `shared.telemetry` is the `keyflash` logger,
JSON in the message), the same records rendered with their tracebacks by a plain handler, and
whatever reaches the process's stdout/stderr file descriptors (`capfd`). The run covers:

- sign-up and profile changes through Clerk's webhook, and a forged delivery;
- every route of every HTTP function (derived from the apps, so a new route is included),
  from an IPv4 and an IPv6 client and from behind Vercel's edge, with a signed-in caller;
- failures: garbage, expired and foreign tokens, a non-admin on admin routes, validation errors
  whose input carries an email and an IP, 404s, an email conflict, a CSRF refusal, a database
  outage (a password-bearing DATABASE_URL to a closed port) and a Redis outage (a
  token-bearing Upstash URL to a closed port);
- Stripe deliveries (an upgrade carrying the customer's email, a forged one);
- every cron, through its Lambda handler and its Vercel entry (right and wrong CRON_SECRET).

Then the captured text must not contain any configured secret, any session token (a JWT:
`eyJ…` header, dot, payload), the users' email addresses, or a full client IP. Values are
distinctive so a match is unambiguous.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
import pytest
import stripe
from svix.webhooks import Webhook

from devkit import events, gateway
from devkit.layout import cron_modules
from devkit.tokens import new_private_pem
from devkit.upstash_emulator import UpstashEmulator
from shared import auth, config, db, flags, redis, telemetry
from tests.support import fake_stripe
from tests.support.cron import asgi_call
from tests.support.http import ISSUER, Caller, Keys, Result
from tests.support.stripe_events import make_user

DB_PASSWORD = "dbpw-K7q2Zx9LmN4vR8tW"
UPSTASH_TOKEN = "upstash-tok-Q3vB8nM2xZ7kP4rT"
UPSTASH_DOWN_TOKEN = "upstash-down-H6jD9sF2wQ5eY1"
CLERK_WEBHOOK_KEY = b"clerk-signing-key-0123456789ABCD"
CLERK_WEBHOOK_SECRET = "whsec_" + base64.b64encode(CLERK_WEBHOOK_KEY).decode()
CLERK_SECRET_KEY = "sk_test_clerkSecretK3yZ9x8c7v6b"
STRIPE_SECRET_KEY = "sk_test_stripeSecret4Ka9Zq2Wx7"
STRIPE_WEBHOOK_SECRET = "whsec_stripeHookSecretP5n8Lm3Q"
CRON_SECRET = "cron-secret-T9vX2bN6mQ4zK8wR"
RATE_LIMIT_HMAC_SECRET = "ratelimit-hmac-J5hG8dS3aF7kL2pZx4cV"
AWS_SECRET = "aws-secret-Y4uI7oP1lK9jH3gF"
AWS_KEY_ID = "ASIALOGHYGIENE7Q2W"
AWS_SESSION_TOKEN = "IQoJb3JpZ2luX2VjSessionTok3nZ8x"
ADA = "ada.lovelace.5521@example.org"
GRACE = "grace.hopper.7734@example.org"
IPV4 = "203.0.113.77"
IPV6 = "2001:db8:85a3::8a2e:370:7334"
FORWARDED_IP = "198.51.100.23"

SECRETS = {
    "database password": DB_PASSWORD,
    "Upstash token": UPSTASH_TOKEN,
    "Upstash token (in the URL)": UPSTASH_DOWN_TOKEN,
    "Clerk webhook secret": CLERK_WEBHOOK_SECRET.removeprefix("whsec_"),
    "Clerk webhook key": CLERK_WEBHOOK_KEY.decode(),
    "Clerk secret key": CLERK_SECRET_KEY,
    "Stripe secret key": STRIPE_SECRET_KEY,
    "Stripe webhook secret": STRIPE_WEBHOOK_SECRET,
    "CRON_SECRET": CRON_SECRET,
    "rate-limit HMAC secret": RATE_LIMIT_HMAC_SECRET,
    "AWS secret key": AWS_SECRET,
    "AWS access key id": AWS_KEY_ID,
    "AWS session token (every Lambda function has one)": AWS_SESSION_TOKEN,
    "a user's email": ADA,
    "another user's email": GRACE,
    "an IPv4 client address": IPV4,
    "an IPv6 client address": IPV6,
    "an IPv6 client address (exploded)": "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "a forwarded client address": FORWARDED_IP,
}
# A JWT by its shape, case-sensitive: a base64url JSON header (`{"` is `eyJ`), a dot, a payload.
# Not the bare `eyJ`: S3's random request ids contain "eyj" in some case now and then.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
ROUTES = gateway.route_table(gateway.load_all())
BUCKET = "keyflash-log-hygiene"
EXTERNAL_DATABASE = bool(os.environ.get("DATABASE_URL"))  # read before any test changes it


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """One lane is enough: the logs are the same through the pooler."""
    return direct_database_url


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


# --- the run --------------------------------------------------------------------------------


@dataclass
class Run:
    """Calls the functions as their platforms do and remembers which routes were hit."""

    keys: Keys
    monkeypatch: pytest.MonkeyPatch
    hit: set[tuple[str, str]] = field(default_factory=set)  # (function, method)

    def token(self, sub: str, email: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": sub, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + 300, **claims}
        if email:
            payload["email"] = email
        return jwt.encode(payload, self.keys.private_pem, algorithm="RS256")

    def call(
        self,
        module: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        ip: str = IPV4,
        style: str = "lambda_v2",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Result:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        self.hit.add((module, method))
        caller = Caller(style, self.keys)
        return caller(module, method, path, headers=all_headers, source_ip=ip, **kwargs)

    def env(self, **values: str | None) -> None:
        for name, value in values.items():
            if value is None:
                self.monkeypatch.delenv(name, raising=False)
            else:
                self.monkeypatch.setenv(name, value)
        config.get_settings.cache_clear()
        db.dispose_engine()
        redis.reset_redis()
        auth._provisioned.clear()
        flags.invalidate_cache()


def clerk(run: Run, kind: str, user_id: str, email: str, *, forged: bool = False) -> Result:
    payload = json.dumps(
        {
            "type": kind,
            "object": "event",
            "data": {
                "id": user_id,
                "email_addresses": [{"id": "idn_1", "email_address": email}],
                "primary_email_address_id": "idn_1",
                "last_sign_in_ip": IPV4,  # Clerk sends such fields; we must not echo them
            },
        }
    )
    msg_id = f"msg_{uuid.uuid4().hex[:12]}"
    secret = "whsec_" + base64.b64encode(b"x" * 32).decode() if forged else CLERK_WEBHOOK_SECRET
    now = datetime.now(UTC)
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, now, payload),
        "content-type": "application/json",
    }
    return run.call("webhooks_clerk", "POST", "/api/webhooks/clerk", body=payload, headers=headers)


def stripe_delivery(run: Run, kind: str, obj: dict[str, Any], *, forged: bool = False) -> Result:
    event = {
        "id": f"evt_{uuid.uuid4().hex[:12]}", "object": "event", "type": kind,
        "created": int(time.time()), "data": {"object": obj},
    }  # fmt: skip
    body = json.dumps(event)
    secret = "whsec_forged" if forged else STRIPE_WEBHOOK_SECRET
    header = stripe.WebhookSignature.generate_signature_header(body, secret)
    return run.call(
        "webhooks_stripe", "POST", "/api/webhooks/stripe", body=body,
        headers={"stripe-signature": header, "content-type": "application/json"},
    )  # fmt: skip


def sign_up_and_use_everything(run: Run) -> None:
    """Sign-up by webhook, then every route, signed in, from three kinds of client address."""
    assert clerk(run, "user.created", "user_ada", ADA).status == 200
    assert clerk(run, "user.created", "user_grace", GRACE).status == 200
    assert clerk(run, "user.updated", "user_ada", ADA).status == 200
    assert clerk(run, "user.created", "user_eve", "eve@example.org", forged=True).status == 400
    ada, grace = run.token("user_ada", ADA), run.token("user_grace", GRACE)
    admin = run.token("user_admin", "admin@example.org")

    assert run.call("health", "GET", "/api/health", ip=IPV6, style="lambda_v1").status == 200
    assert run.call("health", "GET", "/api/health", query={"deep": "true"}).status == 200
    body = {"name": f"for {ADA} at {IPV4}", "searchParams": {
        "keywords": ["espresso"], "matchType": "exact", "location": "US"}}  # fmt: skip
    created = run.call("searches", "POST", "/api/searches", token=ada, json_body=body)
    assert created.status == 201, created.text
    search_id = created.json["search"]["id"]
    assert run.call("searches", "GET", "/api/searches", token=ada, ip=IPV6).status == 200
    item = f"/api/searches/{search_id}"
    assert run.call("search_item", "GET", item, token=ada, style="asgi", ip=IPV6).status == 200
    assert run.call("search_item", "PUT", item, token=ada, json_body={"name": "n"}).status == 200
    search = {"keywords": ["espresso", "latte art"], "matchType": "phrase", "location": "US"}
    for style, ip in (("lambda_v2", IPV4), ("lambda_v1", IPV6)):
        result = run.call("keywords", "POST", "/api/keywords", token=ada, json_body=search,
                          style=style, ip=ip)  # fmt: skip
        assert result.status == 200, result.text
    run.env(VERCEL="1")  # behind Vercel's edge, the forwarding headers are trusted
    forwarded = {"x-forwarded-for": f"{FORWARDED_IP}, 10.0.0.1", "x-real-ip": FORWARDED_IP}
    assert run.call("keywords", "POST", "/api/keywords", token=grace, json_body=search,
                    style="asgi", headers=forwarded).status == 200  # fmt: skip
    assert run.call("history", "GET", "/api/history", token=grace, style="asgi",
                    headers=forwarded).status == 200  # fmt: skip
    run.env(VERCEL=None)
    assert run.call("keywords", "GET", "/api/keywords", token=ada).status == 405
    for module, path, body_ in (
        ("keywords_related", "/api/keywords/related", {"keyword": "espresso", "limit": 3}),
        ("content_brief", "/api/content-brief", {"keyword": "espresso"}),
    ):
        assert run.call(module, "POST", path, token=ada, json_body=body_).status == 200
        assert run.call(module, "GET", path, token=ada).status == 405
        refused = run.call(module, "POST", path, token=ada, json_body={"keyword": ADA})
        assert refused.status == 400  # the email is not a keyword, nor logged
    assert run.call("history", "GET", "/api/history", token=ada, query={"limit": "1"}).status == 200
    assert run.call("history_stats", "GET", "/api/history/stats", token=ada).status == 200
    assert run.call("flags", "GET", "/api/flags", token=ada).status == 200
    assert run.call("me", "GET", "/api/me", token=ada).status == 200
    assert run.call("me_export", "GET", "/api/me/export", token=ada).status == 200
    asked = run.call("me_export", "POST", "/api/me/export", token=ada)  # built by the cron
    assert asked.status == 202, asked.text
    flag = {"key": "beta", "enabled": True, "allowedUsers": ["user_ada"], "description": ADA}
    assert (
        run.call("admin_flags", "POST", "/api/admin/flags", token=admin, json_body=flag).status
        == 201
    )
    assert run.call("admin_flags", "GET", "/api/admin/flags", token=admin).status == 200
    for method, body_ in (("GET", None), ("PUT", {"rolloutPercent": 10}), ("DELETE", None)):
        result = run.call("admin_flag_item", method, "/api/admin/flags/beta", token=admin,
                          json_body=body_)  # fmt: skip
        assert result.status == 200, result.text
    assert run.call("admin_metrics", "GET", "/api/admin/metrics", token=admin,
                    query={"metric": "searches.count"}).status == 200  # fmt: skip
    assert run.call("admin_analytics", "GET", "/api/admin/analytics", token=admin).status == 200
    assert run.call("admin_trends", "GET", "/api/admin/analytics/trends", token=admin,
                    query={"metric": "keyword-trends"}).status == 200  # fmt: skip
    assert run.call("search_item", "DELETE", item, token=ada).status == 200
    use_a_team(run)


def use_a_team(run: Run) -> None:
    """Ada as the admin of her team (her session's active org): every org route."""
    team = run.token("user_ada", ADA, v=2, o={"id": "org_2adateam", "rol": "admin"})
    base = "/api/orgs/org_2adateam"
    body = {"name": f"team of {ADA}", "searchParams": {
        "keywords": ["espresso"], "matchType": "exact", "location": "US"}}  # fmt: skip
    created = run.call("org_searches", "POST", f"{base}/searches", token=team, json_body=body)
    assert created.status == 201, created.text
    item = f"{base}/searches/{created.json['search']['id']}"
    assert run.call("org_searches", "GET", f"{base}/searches", token=team, ip=IPV6).status == 200
    assert run.call("org_search_item", "GET", item, token=team, style="asgi").status == 200
    renamed = run.call("org_search_item", "PUT", item, token=team, json_body={"name": "t"})
    assert renamed.status == 200, renamed.text
    assert run.call("org_members", "GET", f"{base}/members", token=team).status == 200
    assert run.call("org_usage", "GET", f"{base}/usage", token=team).status == 200
    assert run.call("org_search_item", "DELETE", item, token=team).status == 200
    outsider = run.token("user_grace", GRACE)
    assert run.call("org_members", "GET", f"{base}/members", token=outsider).status == 404


def fail_in_every_way(run: Run, other_key: str) -> None:
    """What goes wrong for clients: each failure is logged (or not) without their data."""
    ada = run.token("user_ada", ADA)
    expired = run.token("user_ada", ADA, exp=int(time.time()) - 60, iat=int(time.time()) - 400,
                        nbf=int(time.time()) - 400)  # fmt: skip
    foreign = jwt.encode({"sub": "user_ada", "iss": ISSUER, "exp": int(time.time()) + 60,
                          "email": ADA}, other_key, algorithm="RS256")  # fmt: skip
    for bad in ("not-a-jwt", expired, foreign):
        assert run.call("me", "GET", "/api/me", token=bad).status == 401
    assert run.call("admin_flags", "GET", "/api/admin/flags", token=ada).status == 403
    invalid = {"keywords": [ADA, IPV4, IPV6], "matchType": "phrase"}
    assert run.call("keywords", "POST", "/api/keywords", token=ada, json_body=invalid).status == 400
    bad_search = {"name": "", "description": ADA * 30, "searchParams": {"keywords": [IPV4]}}
    assert (
        run.call("searches", "POST", "/api/searches", token=ada, json_body=bad_search).status == 400
    )
    assert (
        run.call("keywords", "POST", "/api/keywords", token=ada, body=f'{{"x": "{ADA}"').status
        == 400
    )
    assert run.call("search_item", "GET", f"/api/searches/{uuid.uuid4()}", token=ada).status == 404
    assert run.call("search_item", "GET", "/api/searches/not.an.id", token=ada).status == 400
    assert (
        run.call("history", "GET", "/api/history", token=ada, query={"cursor": ADA}).status == 400
    )
    grace_as_ada = run.token("user_mallory", ADA.upper())
    assert run.call("me", "GET", "/api/me", token=grace_as_ada).status == 409
    cookie = {"cookie": f"__session={ada}; csrf-token=abc", "origin": "https://evil.example"}
    assert run.call("searches", "POST", "/api/searches", headers=cookie, json_body={}).status == 403
    assert stripe_delivery(run, "checkout.session.completed", {"customer_email": ADA},
                           forged=True).status == 400  # fmt: skip


def bill(run: Run) -> None:
    """Stripe: Grace opens checkout (her email goes to Stripe), Ada upgrades (the session
    carries her email), opens the billing portal, then cancels; a checkout whose key Stripe
    refuses (a 500 whose log must not show the key); Ada subscribes her team and opens its
    portal. Stripe is a local fake."""
    with fake_stripe.serve(api_key=STRIPE_SECRET_KEY) as stripe_api:
        run.env(STRIPE_API_BASE=stripe_api.url)
        grace = run.token("user_grace", GRACE)
        assert run.call("checkout", "POST", "/api/checkout", token=grace).status == 200
        upgrade_and_cancel(run)
        subscribe_team(run)
        stripe_api.fail_next(400, "invalid_request_error", **email_refused(GRACE))
        assert run.call("checkout", "POST", "/api/checkout", token=grace).status == 500
        stripe_api.api_key = "sk_test_rotated"  # Stripe now refuses the configured key
        assert run.call("checkout", "POST", "/api/checkout", token=grace).status == 500
        run.env(STRIPE_API_BASE=None)


def email_refused(email: str) -> dict[str, str]:
    """Stripe's refusal of an address, whose message quotes it (and here a customer id)."""
    message = f"Invalid email address: {email} for cus_T01e61c91eb"
    return {"code": "email_invalid", "param": "customer_email", "message": message}


def upgrade_and_cancel(run: Run) -> None:
    session = {
        "id": "cs_1", "object": "checkout.session", "mode": "subscription",
        "customer": "cus_ada", "subscription": "sub_ada", "payment_status": "paid",
        "metadata": {"clerkUserId": "user_ada"}, "customer_email": ADA,
        "customer_details": {"email": ADA, "address": {"city": "London"}},
    }  # fmt: skip
    assert stripe_delivery(run, "checkout.session.completed", session).status == 200
    ada = run.token("user_ada", ADA)
    assert run.call("billing_portal", "POST", "/api/billing/portal", token=ada).status == 200
    subscription = {"id": "sub_ada", "object": "subscription", "customer": "cus_ada",
                    "status": "canceled", "metadata": {"clerkUserId": "user_ada"},
                    "items": {"data": [{"price": {"id": "price_pro"}}]}}  # fmt: skip
    assert stripe_delivery(run, "customer.subscription.deleted", subscription).status == 200


def subscribe_team(run: Run) -> None:
    """Ada, admin of her active organization, starts its checkout (her email goes to Stripe),
    the webhook makes the organization PRO, and she opens its portal."""
    team = "org_adateam"
    admin = run.token("user_ada", ADA, org_id=team, org_role="org:admin")
    started = run.call("org_checkout", "POST", f"/api/orgs/{team}/checkout", token=admin)
    assert started.status == 200, started.text
    session = {
        "id": "cs_team", "object": "checkout.session", "mode": "subscription",
        "customer": "cus_adateam", "subscription": "sub_adateam", "payment_status": "paid",
        "metadata": {"organizationId": team}, "customer_email": ADA,
        "customer_details": {"email": ADA, "address": {"city": "London"}},
    }  # fmt: skip
    assert stripe_delivery(run, "checkout.session.completed", session).status == 200
    portal = run.call("org_billing_portal", "POST", f"/api/orgs/{team}/billing-portal", token=admin)
    assert portal.status == 200, portal.text


def vercel_cron(app: Any, secret: str, query: str = "") -> Any:
    """Vercel Cron's GET; `asyncio.run` leaves no event loop behind, and Mangum needs one."""
    try:
        return asgi_call(app, headers={"authorization": f"Bearer {secret}"}, query=query)
    finally:
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_every_cron(run: Run) -> None:
    """Each job through its Lambda handler, and its Vercel entry with the right and a wrong
    CRON_SECRET (moto stands in for S3 for the backup)."""
    from moto import mock_aws

    with mock_aws():
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        for name in cron_modules():
            module = __import__(f"functions.cron.{name}", fromlist=["lambda_handler", "app"])
            summary = module.lambda_handler(events.schedule(), events.lambda_context(name))
            assert summary.get("complete") is not False or summary.get("skipped"), summary
            ok = vercel_cron(module.app, CRON_SECRET, query="force=true")
            assert ok.status == 200, ok.body
            assert vercel_cron(module.app, "wrong").status == 401


def outages(run: Run, direct_url: str) -> None:
    """The database at a closed port (password in the URL), then Redis (token in the URL)."""
    down = f"postgresql://keyflash:{DB_PASSWORD}@127.0.0.1:{closed_port()}/keyflash"
    run.env(DATABASE_URL=down, DIRECT_DATABASE_URL=down, DB_RETRY_BUDGET_S="0.3",
            DB_CONNECT_TIMEOUT_S="1")  # fmt: skip
    ada = run.token("user_ada", ADA)
    assert run.call("me", "GET", "/api/me", token=ada).status == 503
    search = {"keywords": ["espresso"], "matchType": "phrase"}
    assert run.call("keywords", "POST", "/api/keywords", token=ada, json_body=search).status == 503
    assert run.call("health", "GET", "/api/health", query={"deep": "true"}).status == 207
    assert clerk(run, "user.updated", "user_ada", ADA).status == 503
    session = {"id": "cs_2", "object": "checkout.session", "customer_email": ADA,
               "metadata": {"clerkUserId": "user_ada"}}  # fmt: skip
    assert stripe_delivery(run, "checkout.session.completed", session).status == 503
    module = __import__("functions.cron.prune", fromlist=["lambda_handler", "app"])
    with pytest.raises(Exception, match="database"):
        module.lambda_handler(events.schedule(), events.lambda_context("prune"))
    assert vercel_cron(module.app, CRON_SECRET).status == 503
    run.env(DATABASE_URL=with_password(direct_url, DB_PASSWORD),
            DIRECT_DATABASE_URL=with_password(direct_url, DB_PASSWORD),
            DB_RETRY_BUDGET_S=None, DB_CONNECT_TIMEOUT_S=None)  # fmt: skip

    port = closed_port()
    run.env(UPSTASH_REDIS_REST_URL=f"http://default:{UPSTASH_DOWN_TOKEN}@127.0.0.1:{port}",
            UPSTASH_REDIS_REST_TOKEN=UPSTASH_DOWN_TOKEN)  # fmt: skip
    assert run.call("health", "GET", "/api/health").status == 429  # fail-closed limiter
    assert run.call("keywords", "POST", "/api/keywords", token=ada, json_body=search).status == 429
    assert run.call("searches", "GET", "/api/searches", token=ada).status == 200
    metrics = __import__("functions.cron.collect_metrics", fromlist=["lambda_handler"])
    metrics.lambda_handler(events.schedule(), events.lambda_context("collect_metrics"))
    run.env(RATE_LIMIT_FAIL_SAFE="open")
    health = run.call("health", "GET", "/api/health", query={"deep": "true"})
    assert (health.status, health.json["checks"]["redis"]["healthy"]) == (207, False)


# --- the test ---------------------------------------------------------------------------------


@contextmanager
def root_level_at_import(level: int) -> Iterator[None]:
    """The root logger at `level`, as a platform's runtime sets it before our modules are
    imported (Vercel: INFO; Lambda with AWS_LAMBDA_LOG_LEVEL=DEBUG), and the levels our import
    sets from it (`shared.telemetry`), restored afterwards."""
    names = ("", "keyflash", "botocore", "stripe")
    saved = {name: logging.getLogger(name).level for name in names}
    logging.getLogger().setLevel(level)
    telemetry._set_levels()
    try:
        yield
    finally:
        for name, value in saved.items():
            logging.getLogger(name).setLevel(value)


@pytest.fixture
def everything_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[logging.Formatter]:
    """Every logger at DEBUG into caplog, the root at DEBUG before our levels are set (Lambda
    with AWS_LAMBDA_LOG_LEVEL=DEBUG); records are rendered with their tracebacks, as a
    platform's log handler would write them."""
    caplog.set_level(logging.DEBUG)
    with root_level_at_import(logging.DEBUG):
        logging.getLogger("keyflash").setLevel(logging.DEBUG)
        yield logging.Formatter("%(levelname)s %(name)s %(message)s")


@pytest.fixture
def own_upstash() -> Iterator[UpstashEmulator]:
    """An emulator whose token is the distinctive one searched for."""
    with UpstashEmulator(token=UPSTASH_TOKEN) as emulator:
        yield emulator


def test_a_full_run_logs_no_secret_and_no_personal_data(
    api_env: Keys,
    direct_database_url: str,
    own_upstash: UpstashEmulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    everything_at_debug: logging.Formatter,
    tmp_path: Path,
) -> None:
    other_key = new_private_pem().decode()
    run = Run(api_env, monkeypatch)
    database = direct_database_url
    if not EXTERNAL_DATABASE:  # the embedded server trusts local connections: any password works
        database = with_password(direct_database_url, DB_PASSWORD)
    run.env(
        DATABASE_URL=database,
        DIRECT_DATABASE_URL=database,
        UPSTASH_REDIS_REST_URL=own_upstash.url,
        UPSTASH_REDIS_REST_TOKEN=UPSTASH_TOKEN,
        CLERK_WEBHOOK_SECRET=CLERK_WEBHOOK_SECRET,
        CLERK_SECRET_KEY=CLERK_SECRET_KEY,
        STRIPE_SECRET_KEY=STRIPE_SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
        STRIPE_PRICE_PRO="price_pro",
        BILLING_ENABLED="true",
        CRON_SECRET=CRON_SECRET,
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_HMAC_SECRET=RATE_LIMIT_HMAC_SECRET,
        RATE_LIMIT_REQUESTS_PER_HOUR="1000",
        ADMIN_USER_IDS="user_admin",
        SLOW_QUERY_MS="1",  # every statement is "slow": its (truncated) SQL is logged too
        FLAGS_CACHE_SECONDS="0",
        BACKUP_BUCKET=BUCKET,
        AWS_ACCESS_KEY_ID=AWS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=AWS_SECRET,
        AWS_SESSION_TOKEN=AWS_SESSION_TOKEN,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=None,
    )

    sign_up_and_use_everything(run)
    fail_in_every_way(run, other_key)
    bill(run)
    run_every_cron(run)
    outages(run, direct_database_url)
    from moto import mock_aws

    with mock_aws():  # the erasure deletes stored exports: S3 is moto's, never the network
        erased = run.call("me", "DELETE", "/api/me", token=run.token("user_grace", GRACE))
    assert erased.status == 200

    served = {(function, method) for method, _, function in ROUTES}
    assert served <= run.hit, f"routes the run did not call: {served - run.hit}"

    records = "\n".join(everything_at_debug.format(record) for record in caplog.records)
    out, err = capfd.readouterr()
    captured = "\n".join([records, out, err])
    (tmp_path / "captured.log").write_text(captured)
    # The run really logged: structured events from each part of it.
    for marker in ('"event":"clerk_webhook"', '"event":"stripe_event"', '"event":"cron_job"',
                   '"event":"db_unavailable"', '"event":"rate_limit_unavailable"',
                   '"event":"slow_query"', '"event":"account_erased"'):  # fmt: skip
        assert marker in captured, marker
    found = {what: value for what, value in SECRETS.items() if value.lower() in captured.lower()}
    if token := JWT.search(captured):
        found["a session token (JWT)"] = token.group()[:12] + "…"
    assert not found, f"leaked into the logs: {sorted(found)} (see {tmp_path / 'captured.log'})"
    print(
        f"log hygiene: {len(caplog.records)} records, {captured.count(chr(10)) + 1} lines, "
        f"{len(captured.encode())} bytes captured; {len(SECRETS)} secrets searched"
    )


@pytest.mark.parametrize(
    "root", [logging.INFO, logging.DEBUG], ids=["root-INFO-vercel", "root-DEBUG-lambda"]
)
def test_stripes_error_message_reaches_no_log_with_the_root_at_info_or_debug(
    api_env: Keys,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    root: int,
) -> None:
    """stripe-python logs "Stripe v1 API error received" with Stripe's message at INFO (and its
    requests and bodies at INFO and DEBUG); the message may quote an email, a customer id or a
    masked key. With the root at INFO (Vercel) or DEBUG, none of it may be logged, while our
    own `stripe_request_failed` line (class, code, status) is (docs/deploy.md, Credentials)."""
    run = Run(api_env, monkeypatch)
    caplog.set_level(root)
    with root_level_at_import(root), fake_stripe.serve(api_key=STRIPE_SECRET_KEY) as stripe_api:
        run.env(
            BILLING_ENABLED="true",
            STRIPE_SECRET_KEY=STRIPE_SECRET_KEY,
            STRIPE_PRICE_PRO="price_pro",
            STRIPE_API_BASE=stripe_api.url,
        )
        make_user("user_ada", ADA, stripe_customer_id="cus_ada")
        ada = run.token("user_ada", ADA)
        for module, path in (
            ("checkout", "/api/checkout"),
            ("billing_portal", "/api/billing/portal"),
        ):
            stripe_api.fail_next(400, "invalid_request_error", **email_refused(ADA))
            assert run.call(module, "POST", path, token=ada).status == 500
    rendered = "\n".join(f"{r.levelname} {r.name} {r.getMessage()}" for r in caplog.records)
    out, err = capfd.readouterr()
    captured = "\n".join([rendered, out, err])
    assert rendered.count('"event":"stripe_request_failed"') == 2  # the logs were captured
    assert ADA not in captured and "cus_T01e61c91eb" not in captured, captured
    assert "Stripe v1 API error received" not in captured


def test_the_session_token_pattern_finds_tokens_and_not_random_ids() -> None:
    token = jwt.encode({"sub": "user_ada"}, "k" * 32, algorithm="HS256")
    assert JWT.search(f"Authorization: Bearer {token}")
    assert JWT.search(token.rsplit(".", 1)[0])  # header and payload, signature cut off
    request_id = "y1hlJOyeyjhXGlZ2ZVQaTVi9Fmj2LgGMfs5Z25LvWZcdaevTwe7m"  # S3's, seen in a run
    assert not JWT.search(f"'x-amzn-requestid': '{request_id}'")
