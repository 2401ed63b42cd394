"""Tenant isolation: user B can neither see nor change anything of user A, through any route.

The routes come from the function apps themselves (`devkit.gateway`), so a route added later
fails `test_every_route_is_probed_or_explained` until it has a probe here or is listed as not
user-scoped with a reason. Each probe is B's best attempt at A's data through one route; after
it, A's rows in every table with a `userId` column (found in the catalog, so a new table is
included) must be exactly as before, and B's answers must mention nothing of A's.

One lane (direct) and one invocation style (Lambda HTTP API v2): isolation is a property of
the queries, which the other lanes and styles share.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from devkit import gateway
from shared import config, db, flags
from shared.repositories import feature_flags, users
from tests.support import fake_stripe
from tests.support.http import Caller, Keys, Result
from tests.support.s3 import mock_s3

Route = tuple[str, str]  # (method, FastAPI path template)
ROUTES: list[tuple[str, str, str]] = gateway.route_table(gateway.load_all())
FUNCTION_OF: dict[Route, str] = {(method, path): name for method, path, name in ROUTES}

# Routes that read or write no user's data, each with the reason (and where it is tested).
NOT_USER_SCOPED: dict[Route, str] = {
    ("GET", "/api/health"): "liveness of the shared services; no session, no user data",
    ("GET", "/api/keywords"): "a hidden route that only answers 405 (no handler logic)",
    ("GET", "/api/keywords/related"): "a hidden route that only answers 405 (no handler logic)",
    ("GET", "/api/content-brief"): "a hidden route that only answers 405 (no handler logic)",
    ("POST", "/api/webhooks/clerk"): (
        "Svix-signed deliveries from Clerk, no session: test_webhook_forgery, test_clerk_webhook"
    ),
    ("POST", "/api/webhooks/stripe"): (
        "Stripe-signed deliveries, no session: test_webhook_forgery, test_stripe_webhook"
    ),
}
ADMIN_ONLY = "Admin access required"
VOLATILE_HEADERS = {"x-request-id", "set-cookie"}  # per-response values (ids, CSRF tokens)


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """Isolation does not depend on the lane: direct only."""
    return direct_database_url


# --- the two tenants ------------------------------------------------------------------------


@dataclass
class Tenant:
    user_id: str
    email: str
    call: Caller

    def headers(self) -> dict[str, str]:
        token = self.call.token(self.user_id, email=self.email)
        return {"authorization": f"Bearer {token}"}

    def __call__(self, module: str, method: str, path: str, **kwargs: Any) -> Result:
        return self.call(module, method, path, headers=self.headers(), **kwargs)


@dataclass
class World:
    a: Tenant
    b: Tenant
    a_searches: list[str]  # A's saved-search ids
    b_search: str
    a_history: list[str]  # A's search_history ids
    a_cursor: str  # a `nextCursor` from A's history
    a_export: str  # A's open data export
    conn: psycopg.Connection[Any]
    a_org: str  # an organization A administers (in the mirror), with a Stripe customer

    def a_markers(self) -> list[str]:
        """Strings that would only appear in an answer that leaked something of A's."""
        return [
            self.a.user_id, self.a.email, *self.a_searches, *self.a_history, self.a_export,
            self.a_org, "alpha secret list", "alphakeyword", "cus_alpha_",
        ]  # fmt: skip


def save(tenant: Tenant, name: str, keyword: str) -> str:
    body = {
        "name": name,
        "description": f"{name} notes",
        "searchParams": {"keywords": [keyword], "matchType": "exact", "location": "US"},
    }
    result = tenant("searches", "POST", "/api/searches", json_body=body)
    assert result.status == 201, result.text
    search_id: str = result.json["search"]["id"]
    return search_id


def search(tenant: Tenant, keyword: str) -> None:
    body = {"keywords": [keyword, "shared term"], "matchType": "phrase", "location": "GB"}
    result = tenant("keywords", "POST", "/api/keywords", json_body=body)
    assert result.status == 200, result.text


@pytest.fixture
def storage(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3: B's erasure deletes B's stored exports."""
    with mock_s3(monkeypatch) as client:
        yield client


@pytest.fixture
def world(api_env: Keys, admin_conn: psycopg.Connection[Any], storage: Any) -> World:
    """A with two saved searches, two keyword searches, a flag naming them, a Stripe customer,
    an open data export and an organization A administers (as the Clerk mirror and the webhook
    would record it); B with one saved search and one keyword search. Made through the
    API, as the tenants themselves would (the Stripe customer as the webhook would link it)."""
    call = Caller("lambda_v2", api_env)
    suffix = uuid.uuid4().hex[:8]
    a = Tenant(f"tenant_a_{suffix}", f"alice.{suffix}@example.com", call)
    b = Tenant(f"tenant_b_{suffix}", f"bob.{suffix}@example.com", call)
    a_searches = [
        save(a, "alpha secret list", "alphakeyword"),
        save(a, "alpha secret list 2", "alphakeyword two"),
    ]
    b_search = save(b, "bravo list", "bravokeyword")
    search(a, "alphakeyword")
    search(a, "alphakeyword again")
    search(b, "bravokeyword")
    db.run(
        lambda conn: feature_flags.upsert(
            conn, "alpha-only", feature_flags.FlagValues(enabled=True, allowed_users=(a.user_id,))
        )
    )
    flags.invalidate_cache()
    assert a("flags", "GET", "/api/flags").json["flags"]["alpha-only"] is True
    history = a("history", "GET", "/api/history", query={"limit": "1"}).json
    a_history = [
        row[0]
        for row in admin_conn.execute(
            'SELECT id FROM search_history WHERE "userId" = %s', (a.user_id,)
        )
    ]
    db.run(
        lambda conn: users.update_user(conn, a.user_id, stripe_customer_id=f"cus_alpha_{suffix}")
    )
    export = a("me_export", "POST", "/api/me/export")
    assert export.status == 202, export.text
    a_export = export.json["export"]["id"]
    a_org = f"org_alpha{suffix}"
    admin_conn.execute(
        """INSERT INTO organizations (id, name, "stripeCustomerId", "updatedAt")
           VALUES (%s, 'Alpha team', %s, now())""",
        (a_org, f"cus_alpha_org{suffix}"),
    )
    admin_conn.execute(
        """INSERT INTO organization_members ("organizationId", "userId", role, "updatedAt")
           VALUES (%s, %s, 'org:admin', now())""",
        (a_org, a.user_id),
    )
    return World(
        a, b, a_searches, b_search, a_history, history["nextCursor"], a_export, admin_conn, a_org
    )


def user_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Every table with a `userId` column, from the catalog (a new one is included)."""
    return [
        name
        for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND column_name = 'userId' ORDER BY table_name"
        )
    ]


def everything_of(conn: psycopg.Connection[Any], user_id: str) -> dict[str, list[Any]]:
    """Every row about `user_id`, whole (`to_jsonb`), per table, in a stable order."""
    snapshot = {
        "users": conn.execute(
            "SELECT to_jsonb(u) FROM users u WHERE id = %s", (user_id,)
        ).fetchall(),
        "feature_flags": conn.execute(
            'SELECT to_jsonb(f) FROM feature_flags f WHERE %s = ANY("allowedUsers") ORDER BY id',
            (user_id,),
        ).fetchall(),
    }
    for table in user_tables(conn):
        snapshot[table] = conn.execute(
            f'SELECT to_jsonb(t) FROM "{table}" t WHERE "userId" = %s ORDER BY to_jsonb(t)::text',
            (user_id,),
        ).fetchall()
    return snapshot


def assert_nothing_of_a(world: World, result: Result) -> None:
    leaked = [marker for marker in world.a_markers() if marker in result.text]
    assert not leaked, f"B's answer mentions A's {leaked}: {result.text[:500]}"


def assert_same_answer(first: Result, second: Result) -> None:
    """Indistinguishable: status, body apart from the timestamp, and headers apart from the
    per-response ids."""
    assert first.status == second.status, (first.text, second.text)

    def body(result: Result) -> Any:
        data = result.json
        return (
            {k: v for k, v in data.items() if k != "timestamp"} if isinstance(data, dict) else data
        )

    assert body(first) == body(second)
    assert first.headers.keys() == second.headers.keys()
    assert {k: v for k, v in first.headers.items() if k not in VOLATILE_HEADERS} == {
        k: v for k, v in second.headers.items() if k not in VOLATILE_HEADERS
    }


# --- probes: B's attempt on A, one per route ----------------------------------------------------


def probe_list_searches(w: World) -> None:
    result = w.b("searches", "GET", "/api/searches")
    assert result.status == 200
    assert [s["id"] for s in result.json["searches"]] == [w.b_search]
    assert_nothing_of_a(w, result)


def probe_create_search(w: World) -> None:
    """Owner fields in the body are ignored: the session decides whose search it is."""
    body = {
        "name": "planted",
        "clerkUserId": w.a.user_id,
        "userId": w.a.user_id,
        "searchParams": {"keywords": ["k"], "matchType": "exact", "location": "US"},
    }
    result = w.b("searches", "POST", "/api/searches", json_body=body)
    assert result.status == 201, result.text
    assert result.json["search"]["clerkUserId"] == w.b.user_id


def _ids_b_might_try(w: World) -> list[str]:
    """A's ids as given, upper-cased and padded (both are accepted spellings of an id)."""
    own = w.a_searches[0]
    return [own, own.upper(), f"  {own}\t", w.a_searches[1]]


def _item_probe(method: str, body: dict[str, Any] | None) -> Callable[[World], None]:
    def probe(w: World) -> None:
        missing = w.b("search_item", method, f"/api/searches/{uuid.uuid4()}", json_body=body)
        assert missing.status == 404 and missing.json["message"] == "Saved search not found"
        for search_id in _ids_b_might_try(w):
            attempt = w.b("search_item", method, f"/api/searches/{search_id}", json_body=body)
            assert_same_answer(attempt, missing)
            assert_nothing_of_a(w, attempt)

    probe.__doc__ = f"{method} on A's search ids: the same 404 as for an id that does not exist."
    return probe


def probe_history(w: World) -> None:
    """B's list holds B's searches only, also when B replays a cursor from A's pages."""
    for query in (None, {"limit": "100"}, {"cursor": w.a_cursor}):
        result = w.b("history", "GET", "/api/history", query=query)
        assert result.status == 200, result.text
        assert all("bravokeyword" in item["keywords"] for item in result.json["history"])
        assert_nothing_of_a(w, result)


def probe_history_stats(w: World) -> None:
    result = w.b("history_stats", "GET", "/api/history/stats", query={"days": "365"})
    assert result.status == 200
    assert result.json["searches"] == 1  # B's one search, none of A's two
    assert_nothing_of_a(w, result)


def probe_keywords(w: World) -> None:
    """The same keywords as A: served (maybe from the shared provider cache) without any of A's
    data, and counted on B's account only."""
    body = {"keywords": ["alphakeyword", "shared term"], "matchType": "phrase", "location": "GB"}
    result = w.b("keywords", "POST", "/api/keywords", json_body=body)
    assert result.status == 200, result.text
    leaked = [m for m in w.a_markers() if m != "alphakeyword" and m in result.text]
    assert not leaked


def probe_related_keywords(w: World) -> None:
    """A's keyword as the seed: ideas from the cache shared by all users, nothing of A's."""
    result = w.b("keywords_related", "POST", "/api/keywords/related",
                 json_body={"keyword": "alphakeyword"})  # fmt: skip
    assert result.status == 200, result.text
    leaked = [m for m in w.a_markers() if m != "alphakeyword" and m in result.text]
    assert not leaked


def probe_content_brief(w: World) -> None:
    """A's keyword: a brief built from a results page, nothing of A's."""
    result = w.b(
        "content_brief", "POST", "/api/content-brief", json_body={"keyword": "alphakeyword"}
    )
    assert result.status == 200, result.text
    leaked = [m for m in w.a_markers() if m != "alphakeyword" and m in result.text]
    assert not leaked


def probe_me(w: World) -> None:
    result = w.b("me", "GET", "/api/me")
    assert result.status == 200
    assert (result.json["id"], result.json["email"]) == (w.b.user_id, w.b.email)
    assert result.json["usage"]["total"] == 2  # B's own two keywords
    assert_nothing_of_a(w, result)


def probe_erase(w: World) -> None:
    """B erasing their account takes nothing of A's with it."""
    result = w.b("me", "DELETE", "/api/me")
    assert (result.status, result.json) == (200, {"deleted": True})


def probe_export(w: World) -> None:
    result = w.b("me_export", "GET", "/api/me/export")
    assert result.status == 200
    assert result.json["user"]["id"] == w.b.user_id
    assert_nothing_of_a(w, result)


def probe_request_export(w: World) -> None:
    """B's export request opens B's own export, not A's open one."""
    result = w.b("me_export", "POST", "/api/me/export")
    assert result.status == 202, result.text
    assert result.json["export"]["id"] != w.a_export
    assert_nothing_of_a(w, result)


def probe_export_status(w: World) -> None:
    """A's export id answers B the same 404 as an id that does not exist."""
    missing = w.b("me_export", "GET", "/api/me/export/c" + "0" * 24)
    assert missing.status == 404
    attempt = w.b("me_export", "GET", f"/api/me/export/{w.a_export}")
    assert_same_answer(attempt, missing)
    assert_nothing_of_a(w, attempt)


def probe_flags(w: World) -> None:
    """A flag that names A (on for A: see `world`) is off for B, and B's answer does not name A."""
    result = w.b("flags", "GET", "/api/flags")
    assert result.json["flags"]["alpha-only"] is False
    assert_nothing_of_a(w, result)


@contextmanager
def billing() -> Iterator[fake_stripe.FakeStripe]:
    """Billing on, Stripe a local fake, for one probe."""
    with pytest.MonkeyPatch.context() as patch, fake_stripe.serve() as stripe_api:
        for name, value in {
            "BILLING_ENABLED": "true",
            "STRIPE_SECRET_KEY": fake_stripe.API_KEY,
            "STRIPE_PRICE_PRO": fake_stripe.PRICE,
            "STRIPE_API_BASE": stripe_api.url,
        }.items():
            patch.setenv(name, value)
        config.get_settings.cache_clear()
        yield stripe_api
    config.get_settings.cache_clear()


def probe_checkout(w: World) -> None:
    """B's checkout session names B only: never A's id, email or Stripe customer."""
    with billing() as stripe_api:
        result = w.b("checkout", "POST", "/api/checkout")
    assert result.status == 200, result.text
    assert_nothing_of_a(w, result)
    [sent] = stripe_api.requests
    assert sent.params["metadata[clerkUserId]"] == w.b.user_id
    assert "customer" not in sent.params
    assert not [m for m in w.a_markers() if m in json.dumps(sent.params)]


def probe_billing_portal(w: World) -> None:
    """B never paid: 404, whoever else is a Stripe customer; nothing reaches Stripe."""
    with billing() as stripe_api:
        result = w.b("billing_portal", "POST", "/api/billing/portal")
    assert result.status == 404, result.text
    assert_nothing_of_a(w, result)
    assert stripe_api.requests == []


def _org_billing_probe(route: str) -> Callable[[World], None]:
    def probe(w: World) -> None:
        module = FUNCTION_OF["POST", f"/api/orgs/{{org_id}}/{route}"]
        with billing() as stripe_api:
            missing = w.b(module, "POST", f"/api/orgs/org_nothere{uuid.uuid4().hex}/{route}")
            attempt = w.b(module, "POST", f"/api/orgs/{w.a_org}/{route}")
        assert missing.status == 404, missing.text
        assert_same_answer(attempt, missing)
        assert_nothing_of_a(w, attempt)
        assert stripe_api.requests == []

    probe.__doc__ = f"B on A's organization's {route}: the same 404 as for no such organization."
    return probe


B_TEAM = "org_2bravoteam"  # B's own organization (B is its admin by token)
ELSEWHERE = "org_2alphateam"  # an organization B is not in


def _org_probe(method: str, path: str) -> Callable[[World], None]:
    def probe(w: World) -> None:
        token = w.b.call.token(w.b.user_id, email=w.b.email, v=2, o={"id": B_TEAM, "rol": "admin"})
        headers = {"authorization": f"Bearer {token}"}
        body: dict[str, Any] | None = None
        if method == "POST":
            params = {"keywords": ["k"], "matchType": "exact", "location": "US"}
            body = {"name": "bravo team", "userId": w.a.user_id, "organizationId": ELSEWHERE,
                    "searchParams": params}  # fmt: skip
        elif method == "PUT":
            body = {"name": "pwned", "clerkUserId": w.a.user_id}

        def send(org: str, search_id: str) -> Result:
            concrete = path.replace("{org_id}", org).replace("{search_id}", search_id)
            function = FUNCTION_OF[method, path]
            return w.b.call(function, method, concrete, headers=headers, json_body=body)

        outside = send(ELSEWHERE, w.a_searches[0])
        assert (outside.status, outside.json["message"]) == (404, "Organization not found")
        assert_nothing_of_a(w, outside)
        if "{search_id}" not in path:
            inside = send(B_TEAM, "")
            assert inside.status in (200, 201), inside.text
            assert_nothing_of_a(w, inside)
            return
        missing = send(B_TEAM, str(uuid.uuid4()))
        assert missing.status == 404 and missing.json["message"] == "Saved search not found"
        for search_id in _ids_b_might_try(w):
            attempt = send(B_TEAM, search_id)
            assert_same_answer(attempt, missing)
            assert_nothing_of_a(w, attempt)

    probe.__doc__ = (
        "B, admin of B's own org: an org B is not in is a 404, A's personal search ids in B's "
        "org are the 404 of a missing search, and B's team answers show nothing of A's."
    )
    return probe


def _admin_probe(method: str, path: str) -> Callable[[World], None]:
    def probe(w: World) -> None:
        concrete = path.replace("{key}", "alpha-only")
        body = {"enabled": False, "key": "alpha-only"} if method in ("POST", "PUT") else None
        result = w.b(FUNCTION_OF[method, path], method, concrete, json_body=body)
        assert (result.status, result.json["message"]) == (403, ADMIN_ONLY)
        assert_nothing_of_a(w, result)

    probe.__doc__ = "Cross-tenant by design, so admins only: B is refused."
    return probe


PROBES: dict[Route, Callable[[World], None]] = {
    ("GET", "/api/searches"): probe_list_searches,
    ("POST", "/api/searches"): probe_create_search,
    ("GET", "/api/searches/{search_id}"): _item_probe("GET", None),
    ("PUT", "/api/searches/{search_id}"): _item_probe(
        "PUT", {"name": "pwned", "description": "x", "clerkUserId": "attacker"}
    ),
    ("DELETE", "/api/searches/{search_id}"): _item_probe("DELETE", None),
    ("GET", "/api/history"): probe_history,
    ("GET", "/api/history/stats"): probe_history_stats,
    ("POST", "/api/keywords"): probe_keywords,
    ("POST", "/api/keywords/related"): probe_related_keywords,
    ("POST", "/api/content-brief"): probe_content_brief,
    ("GET", "/api/me"): probe_me,
    ("DELETE", "/api/me"): probe_erase,
    ("GET", "/api/me/export"): probe_export,
    ("POST", "/api/me/export"): probe_request_export,
    ("GET", "/api/me/export/{export_id}"): probe_export_status,
    ("GET", "/api/flags"): probe_flags,
    ("POST", "/api/checkout"): probe_checkout,
    ("POST", "/api/billing/portal"): probe_billing_portal,
    **{
        (method, path): _admin_probe(method, path)
        for method, path, _ in ROUTES
        if path.startswith("/api/admin/")
    },
    **{
        (method, path): _org_probe(method, path)
        for method, path, _ in ROUTES
        if path.startswith("/api/orgs/") and not path.endswith(("/checkout", "/billing-portal"))
    },
    ("POST", "/api/orgs/{org_id}/checkout"): _org_billing_probe("checkout"),
    ("POST", "/api/orgs/{org_id}/billing-portal"): _org_billing_probe("billing-portal"),
}


def test_every_route_is_probed_or_explained() -> None:
    """A new route must get a probe here or a reason in NOT_USER_SCOPED; no stale entries."""
    served = {(method, path) for method, path, _ in ROUTES}
    assert served, "no routes found"
    unexplained = served - PROBES.keys() - NOT_USER_SCOPED.keys()
    assert not unexplained, f"routes with neither an isolation probe nor a reason: {unexplained}"
    assert not (PROBES.keys() & NOT_USER_SCOPED.keys())
    assert (PROBES.keys() | NOT_USER_SCOPED.keys()) <= served, "entries for routes that are gone"
    assert all(reason.strip() for reason in NOT_USER_SCOPED.values())


A_VIEWS = (("searches", "/api/searches"), ("history", "/api/history"))


@pytest.mark.parametrize(
    "route", sorted(PROBES), ids=[f"{method} {path}" for method, path in sorted(PROBES)]
)
def test_b_cannot_reach_a_through(route: Route, world: World) -> None:
    """B's attempt through `route`; afterwards every row about A is exactly as before, and so
    is A's own view. (A's own reads write A's usage rows, so the rows are snapshotted after A
    looked, and compared before A looks again.)"""
    seen_before = [world.a(module, "GET", path).json for module, path in A_VIEWS]
    rows_before = everything_of(world.conn, world.a.user_id)
    PROBES[route](world)
    assert everything_of(world.conn, world.a.user_id) == rows_before, "A's rows changed"
    assert [world.a(module, "GET", path).json for module, path in A_VIEWS] == seen_before


def test_the_snapshot_covers_every_table_that_names_a_user(
    world: World, admin_conn: psycopg.Connection[Any]
) -> None:
    """The "A unchanged" check reads every table with a userId column; A has rows in each
    table the API writes for a user, so the check is not vacuous."""
    snapshot = everything_of(admin_conn, world.a.user_id)
    populated = {table for table, rows in snapshot.items() if rows}
    assert {"users", "saved_searches", "search_history", "api_usage", "feature_flags"} <= populated
    assert set(user_tables(admin_conn)) <= set(snapshot)


def test_b_cannot_take_over_a_by_claiming_as_email(world: World) -> None:
    """A session for B that carries A's email (any case) is refused, never merged into A."""
    token = world.b.call.token(world.b.user_id + "_x", email=world.a.email.upper())
    result = world.b.call("me", "GET", "/api/me", headers={"authorization": f"Bearer {token}"})
    assert result.status == 409
    assert_nothing_of_a(world, result)


def test_ids_in_the_query_string_never_select_the_user(world: World) -> None:
    """Only the token's subject selects whose data a route serves, never a parameter."""
    planted = {"userId": world.a.user_id, "id": world.a.user_id, "user": world.a.user_id}
    for module, path in (
        ("me", "/api/me"),
        ("me_export", "/api/me/export"),
        ("searches", "/api/searches"),
        ("history", "/api/history"),
        ("history_stats", "/api/history/stats"),
    ):
        result = world.b(module, "GET", path, query=planted)
        assert result.status == 200, (path, result.text)
        assert_nothing_of_a(world, result)
