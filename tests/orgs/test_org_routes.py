"""The org routes through the Lambda handler on both lanes: every route by every kind of caller
(active-org token as admin, member, member with Clerk's custom `org:searches:manage`; mirror-only
member and admin; a removed member; a member of another org; no token) answers as the access rule
says (docs/organizations.md#routes-and-access), a deleted org is 404 to everyone, and the
contracts (summary + createdBy, members without emails, usage, the team cap) hold."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from functions import org_searches, org_usage
from shared import config, db
from shared.auth import Identity
from shared.contracts.saved_searches import CreateSavedSearch
from shared.errors import OrganizationNotFoundError, SavedSearchLimitError, UserNotFoundError
from shared.http.errors import ORG_NOT_FOUND, ApiError
from shared.http.orgs import FORBIDDEN, INVALID_ORG_ID, OrgAccess, permitted
from shared.repositories import team_searches, users
from shared.repositories.saved_searches import NewSavedSearch
from tests.core.test_concurrency import WORKERS, race
from tests.support.http import Caller, Keys, Result

ORG = "org_2TeamAlpha"
OTHER = "org_2TeamBravo"
BODY = {
    "name": "Coffee gear",
    "description": "Espresso at home",
    "searchParams": {"keywords": ["espresso machine", "grinder"], "matchType": "phrase",
                     "location": "US"},
}  # fmt: skip

# caller → (user id, token claims or None for no token, mirror role or None, removed in mirror)
CALLERS: dict[str, tuple[str, dict[str, Any] | None, str | None, bool]] = {
    "token_admin": ("user_tadmin", {"v": 2, "o": {"id": ORG, "rol": "admin", "slg": "alpha"}},
                    None, False),
    "token_member": ("user_tmember", {"v": 2, "o": {"id": ORG, "rol": "member"}}, None, False),
    "token_manager": ("user_tmanager", {"org_id": ORG, "org_role": "org:member",
                      "org_permissions": ["org:searches:manage"]}, None, False),
    "mirror_member": ("user_mmember", {}, "org:member", False),
    "mirror_admin": ("user_madmin", {"v": 2, "o": {"id": OTHER, "rol": "admin"}}, "org:admin",
                     False),
    "removed_member": ("user_removed", {}, "org:admin", True),
    "outsider": ("user_outsider", {"v": 2, "o": {"id": OTHER, "rol": "admin"}}, None, False),
    "no_token": ("user_anon", None, None, False),
}  # fmt: skip

# route → (function, method, permission group)
ROUTES = {
    "list": ("org_searches", "GET", "read"),
    "create": ("org_searches", "POST", "manage"),
    "get": ("org_search_item", "GET", "read"),
    "update": ("org_search_item", "PUT", "manage"),
    "delete": ("org_search_item", "DELETE", "manage"),
    "members": ("org_members", "GET", "read"),
    "usage": ("org_usage", "GET", "read"),
}
MANAGERS = {"token_admin", "token_manager", "mirror_admin"}
READERS = MANAGERS | {"token_member", "mirror_member"}


def expected(caller: str, group: str) -> int:
    if caller == "no_token":
        return 401
    if caller not in READERS:
        return 404
    if group == "manage" and caller not in MANAGERS:
        return 403
    return 200


@pytest.fixture
def lambda_call(api_env: Keys) -> Caller:
    return Caller("lambda_v2", api_env)


def send(
    call: Caller, caller: str, route: str, org: str = ORG, search_id: str | None = None
) -> Result:
    user, claims, _, _ = CALLERS[caller]
    function, method, _ = ROUTES[route]
    path = f"/api/orgs/{org}/" + {"org_members": "members", "org_usage": "usage"}.get(
        function, "searches"
    )
    if function == "org_search_item":
        path += f"/{search_id or uuid.uuid4()}"
    headers = {} if claims is None else {"authorization": f"Bearer {call.token(user, **claims)}"}
    body = BODY if method == "POST" else {"name": "Renamed"} if method == "PUT" else None
    return call(function, method, path, json_body=body, headers=headers)


def admin_headers(call: Caller) -> dict[str, str]:
    """The organization admin's bearer token."""
    user, claims, _, _ = CALLERS["token_admin"]
    assert claims is not None
    return {"authorization": f"Bearer {call.token(user, **claims)}"}


def seed(admin: psycopg.Connection[Any]) -> None:
    """Both orgs and the mirror's memberships (as Clerk's webhooks would have left them)."""
    for org in (ORG, OTHER):
        admin.execute(
            'INSERT INTO organizations (id, name, "updatedAt") VALUES (%s, %s, now())', (org, org)
        )
    for user, _, role, removed in CALLERS.values():
        if role is not None:
            admin.execute(
                """INSERT INTO organization_members ("organizationId", "userId", role,
                       "createdAt", "updatedAt", "deletedAt")
                   VALUES (%s, %s, %s, now(), now(), CASE WHEN %s THEN now() END)""",
                (ORG, user, role, removed),
            )


def team_search(call: Caller, org: str = ORG) -> dict[str, Any]:
    """A search created through the API by an admin of `org` (by token)."""
    token = call.token("user_creator", v=2, o={"id": org, "rol": "admin"})
    made = call(
        "org_searches",
        "POST",
        f"/api/orgs/{org}/searches",
        json_body={**BODY, "name": f"Made in {org}"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert made.status == 201, made.text
    search: dict[str, Any] = made.json["search"]
    return search


def assert_envelope(result: Result, status: int) -> None:
    assert result.status == status, result.text
    assert result.json["statusCode"] == status and "error" in result.json
    if status == 404:
        assert result.json["message"] in (ORG_NOT_FOUND, "Saved search not found")
    if status == 403:
        assert result.json["message"] == FORBIDDEN


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("caller", list(CALLERS))
def test_every_route_answers_each_caller_by_the_access_rule(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any], caller: str, route: str
) -> None:
    seed(admin_conn)
    search = team_search(lambda_call)
    answer = send(lambda_call, caller, route, search_id=search["id"])
    status = expected(caller, ROUTES[route][2])
    if status != 200:
        assert_envelope(answer, status)
        assert answer.json["message"] != "Saved search not found"  # refused before the search
        return
    assert answer.status == (201 if route == "create" else 200), answer.text
    remaining = admin_conn.execute(
        'SELECT count(*) FROM saved_searches WHERE "organizationId" = %s', (ORG,)
    ).fetchone()
    assert remaining is not None
    assert remaining[0] == {"create": 2, "delete": 0}.get(route, 1)


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_deleted_org_is_missing_even_to_its_admins_token(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any], route: str
) -> None:
    seed(admin_conn)
    search = team_search(lambda_call)
    admin_conn.execute('UPDATE organizations SET "deletedAt" = now() WHERE id = %s', (ORG,))
    for caller in ("token_admin", "mirror_admin"):
        answer = send(lambda_call, caller, route, search_id=search["id"])
        assert_envelope(answer, 404)
        assert answer.json["message"] == ORG_NOT_FOUND
    left = admin_conn.execute("SELECT name FROM saved_searches").fetchall()
    assert left == [(f"Made in {ORG}",)]


def test_a_missing_org_and_a_foreign_org_answer_the_same_bytes(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    seed(admin_conn)
    foreign = send(lambda_call, "outsider", "list")
    missing = send(lambda_call, "outsider", "list", org="org_2NeverExisted")
    for answer in (foreign, missing):
        assert_envelope(answer, 404)
    bodies = [{k: v for k, v in a.json.items() if k != "timestamp"} for a in (foreign, missing)]
    assert bodies[0] == bodies[1]
    assert foreign.headers.keys() == missing.headers.keys()
    count = admin_conn.execute("SELECT count(*) FROM organizations").fetchone()
    assert count == (2,)  # nothing created for a path the caller cannot act in


@pytest.mark.parametrize("org", ["not-an-org", "org_", "org_a.b", "ORG_abc", "org_" + "a" * 65])
def test_a_malformed_org_id_is_a_400_before_any_lookup(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any], org: str
) -> None:
    seed(admin_conn)
    for caller in ("token_admin", "outsider"):
        answer = send(lambda_call, caller, "list", org=org)
        assert answer.status == 400, answer.text
        assert answer.json["message"] == INVALID_ORG_ID
    assert send(lambda_call, "no_token", "list", org=org).status == 401  # the session first


def test_another_orgs_search_and_a_personal_one_are_not_found(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    seed(admin_conn)
    theirs = team_search(lambda_call, OTHER)
    personal = lambda_call("searches", "POST", "/api/searches", json_body=BODY, user="user_tadmin")
    assert personal.status == 201, personal.text
    for search_id in (theirs["id"], personal.json["search"]["id"]):
        for route in ("get", "update", "delete"):
            answer = send(lambda_call, "token_admin", route, search_id=search_id)
            assert_envelope(answer, 404)
            assert answer.json["message"] == "Saved search not found"
    listed = send(lambda_call, "token_admin", "list")
    assert listed.json["searches"] == []
    names = admin_conn.execute("SELECT name FROM saved_searches ORDER BY name").fetchall()
    assert names == [("Coffee gear",), (f"Made in {OTHER}",)]


def test_the_team_list_and_record_contract(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    seed(admin_conn)
    first = team_search(lambda_call)
    second = send(lambda_call, "token_manager", "create")
    assert second.status == 201, second.text
    created = second.json["search"]
    assert created["createdBy"] == "user_tmanager"
    assert created["searchParams"]["keywords"] == ["espresso machine", "grinder"]
    assert created["metadata"]["createdAt"].endswith("Z")
    listed = send(lambda_call, "mirror_member", "list").json["searches"]
    assert [s["id"] for s in listed] == [created["id"], first["id"]]  # newest updated first
    assert listed[0]["createdBy"] == "user_tmanager" and listed[0]["keywordCount"] == 2
    assert "results" not in listed[0]
    renamed = send(lambda_call, "mirror_admin", "update", search_id=first["id"])
    assert renamed.json["search"]["name"] == "Renamed"
    assert renamed.json["search"]["createdBy"] == "user_creator"
    listed = send(lambda_call, "token_member", "list").json["searches"]
    assert [s["id"] for s in listed] == [first["id"], created["id"]]
    admin_conn.execute(
        'UPDATE saved_searches SET "userId" = NULL WHERE id = %s', (first["id"],)
    )  # its creator erased: the search stays with the team
    got = send(lambda_call, "token_member", "get", search_id=first["id"])
    assert got.status == 200 and got.json["search"]["createdBy"] is None


def test_a_team_search_keeps_the_rows_a_keyword_search_answers(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """The team routes share the personal contract: rows with missing data are saved and read
    back as answered (docs/keyword-search.md#missing-data-stays-missing)."""
    seed(admin_conn)
    rows = [
        {"keyword": "espresso machine", "searchVolume": 2**63 - 1, "cpc": None,
         "competition": "high", "intent": None, "trends": [{"month": 3, "year": 2026,
                                                             "volume": None}]},
        {"keyword": "grinder", "searchVolume": None, "cpc": None, "competition": None,
         "intent": None, "noData": True},
    ]  # fmt: skip
    headers = admin_headers(lambda_call)
    made = lambda_call(
        "org_searches", "POST", f"/api/orgs/{ORG}/searches",
        json_body={**BODY, "results": rows}, headers=headers,
    )  # fmt: skip
    assert made.status == 201, made.text
    got = send(lambda_call, "token_member", "get", search_id=made.json["search"]["id"])
    assert (got.status, got.json["search"]["results"]) == (200, rows)


def test_bad_input_is_a_4xx_not_a_500(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    seed(admin_conn)
    headers = admin_headers(lambda_call)
    bad_id = lambda_call(
        "org_search_item", "GET", f"/api/orgs/{ORG}/searches/not.an.id", headers=headers
    )
    assert_envelope(bad_id, 400)
    no_name = lambda_call(
        "org_searches", "POST", f"/api/orgs/{ORG}/searches",
        json_body={**BODY, "name": ""}, headers=headers,
    )  # fmt: skip
    assert_envelope(no_name, 400)
    not_json = lambda_call(
        "org_searches", "POST", f"/api/orgs/{ORG}/searches", body="{", headers=headers
    )
    assert not_json.status == 400, not_json.text
    count = admin_conn.execute("SELECT count(*) FROM saved_searches").fetchone()
    assert count == (0,)


def test_team_location_and_language_lengths_count_utf16_units(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """The personal contract's unit: an emoji counts 2, as JS `length` counts it."""
    seed(admin_conn)
    headers = admin_headers(lambda_call)
    emoji = "\U0001f600"

    def post(location: str, language: str) -> Result:
        params = {"keywords": ["grinder"], "matchType": "exact", "location": location,
                  "language": language}  # fmt: skip
        return lambda_call(
            "org_searches", "POST", f"/api/orgs/{ORG}/searches",
            json_body={**BODY, "searchParams": params}, headers=headers,
        )  # fmt: skip

    made = post(emoji, "a" + emoji * 17)  # 2 and 35 units
    assert made.status == 201, made.text
    assert made.json["search"]["searchParams"]["location"] == emoji
    too_long = post(emoji * 3, emoji * 18)  # 6 and 36 units
    assert_envelope(too_long, 400)
    assert too_long.json["message"] == (
        "searchParams.location: String should have at most 5 characters, "
        "searchParams.language: String should have at most 35 characters"
    )


def test_members_lists_the_live_mirror_without_emails(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    seed(admin_conn)
    answer = send(lambda_call, "token_member", "members")
    assert answer.status == 200, answer.text
    members = answer.json["members"]
    assert {(m["userId"], m["role"]) for m in members} == {
        ("user_mmember", "org:member"),
        ("user_madmin", "org:admin"),
    }
    assert all(set(m) == {"userId", "role", "joinedAt"} for m in members)
    assert all(m["joinedAt"].endswith("Z") for m in members)


def test_usage_shows_the_pooled_counter_and_the_tiers_limit(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(admin_conn)
    admin_conn.execute(
        """UPDATE organizations SET tier = 'PRO', "keywordSearchesThisMonth" = 42,
               "keywordSearchesTotal" = 99, "monthlyResetAt" = now() WHERE id = %s""",
        (ORG,),
    )
    monkeypatch.setenv("BILLING_ENABLED", "true")
    monkeypatch.setenv("ORG_PRO_MONTHLY_LIMIT", "500")
    config.get_settings.cache_clear()
    answer = send(lambda_call, "mirror_member", "usage")
    assert answer.status == 200, answer.text
    usage = answer.json["usage"]
    assert answer.json["tier"] == "PRO"
    assert (usage["thisMonth"], usage["total"], usage["limit"], usage["remaining"]) == (
        42, 99, 500, 458,
    )  # fmt: skip
    assert usage["resetsAt"].endswith("-01T00:00:00.000Z")
    admin_conn.execute(
        """UPDATE organizations SET "monthlyResetAt" = now() - interval '40 days'
           WHERE id = %s""",
        (ORG,),
    )
    stale = send(lambda_call, "mirror_member", "usage").json["usage"]
    assert (stale["thisMonth"], stale["remaining"]) == (0, 500)  # the lazy monthly reset


def test_a_new_active_org_is_created_from_the_token(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    token = lambda_call.token("user_first", v=2, o={"id": "org_2Brandnew", "rol": "member",
                                                     "slg": "brand-new"})  # fmt: skip
    answer = lambda_call(
        "org_searches",
        "GET",
        "/api/orgs/org_2Brandnew/searches",
        headers={"authorization": f"Bearer {token}"},
    )
    assert answer.status == 200 and answer.json["searches"] == []
    row = admin_conn.execute("SELECT name, slug FROM organizations").fetchall()
    assert row == [("brand-new", "brand-new")]


def test_the_team_cap_holds(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(admin_conn)
    monkeypatch.setattr(team_searches, "MAX_PER_ORG", 2)
    assert send(lambda_call, "token_admin", "create").status == 201
    assert send(lambda_call, "mirror_admin", "create").status == 201
    refused = send(lambda_call, "token_manager", "create")
    assert_envelope(refused, 400)
    counts = admin_conn.execute(
        'SELECT "organizationId", count(*) FROM saved_searches GROUP BY 1'
    ).fetchall()
    assert counts == [(ORG, 2)]
    other = team_search(lambda_call, OTHER)  # another org's cap is its own
    assert other["name"] == f"Made in {OTHER}"


def test_a_route_cannot_declare_an_unknown_permission() -> None:
    with pytest.raises(ValueError, match="unknown permission"):
        permitted("org:searches:destroy")


@pytest.fixture
def wide_pool(db_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A connection per racing thread, so the races happen in Postgres."""
    monkeypatch.setenv("DB_POOL_SIZE", str(WORKERS))
    config.get_settings.cache_clear()
    db.dispose_engine()
    yield
    db.dispose_engine()


@pytest.mark.usefixtures("wide_pool")
def test_team_searches_repository_under_concurrency(
    admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creates racing on real connections (both lanes) never exceed the team's cap."""
    seed(admin_conn)
    monkeypatch.setattr(team_searches, "MAX_PER_ORG", 3)
    db.run(lambda conn: users.get_or_create(conn, "user_racer", "racer@example.com"))
    new = NewSavedSearch(
        name="Race", keywords=["a"], location="US", language="en", match_type="phrase"
    )

    def attempt(_: int) -> bool:
        try:
            db.transaction(lambda conn: team_searches.create(conn, ORG, "user_racer", new))
        except SavedSearchLimitError:
            return False
        return True

    outcomes = race(attempt, WORKERS)
    assert sorted(outcomes, key=str) == [False] * (WORKERS - 3) + [True] * 3
    count = admin_conn.execute("SELECT count(*) FROM saved_searches").fetchone()
    assert count == (3,)


def test_warm_org_requests_take_two_round_trips_and_a_create_five(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Statements sent per warm request (user provisioned, connection open): the access check,
    then the route's one statement; a create is a transaction (BEGIN, the lock of the org and its
    creator, the insert under the cap, COMMIT)."""
    seed(admin_conn)
    search = team_search(lambda_call)
    statements: list[str] = []
    engine = db.get_engine()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    for caller in ("token_admin", "mirror_admin"):
        send(lambda_call, caller, "list")  # warm: the caller provisioned
        counts = {}
        for route in ROUTES:
            event.listen(engine, "before_cursor_execute", listener)
            try:
                sid = search["id"] if route != "delete" else team_search(lambda_call)["id"]
                statements.clear()
                answer = send(lambda_call, caller, route, search_id=sid)
            finally:
                event.remove(engine, "before_cursor_execute", listener)
            assert answer.status in (200, 201), answer.text
            counts[route] = len(statements)
        assert counts == {route: 5 if route == "create" else 2 for route in ROUTES}, counts


def test_a_creator_erased_since_provisioning_is_provisioned_again(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Another container erased the user after this one provisioned them: the create provisions
    them again (a fresh account, as POST /api/searches does) instead of failing."""
    seed(admin_conn)
    assert send(lambda_call, "token_admin", "list").status == 200  # provisioned, remembered
    admin_conn.execute("DELETE FROM users WHERE id = 'user_tadmin'")
    made = send(lambda_call, "token_admin", "create")
    assert made.status == 201, made.text
    assert made.json["search"]["createdBy"] == "user_tadmin"
    assert admin_conn.execute("SELECT id FROM users").fetchall() == [("user_tadmin",)]


def test_the_repository_refuses_a_deleted_org_and_a_missing_creator(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    seed(admin_conn)
    db.run(lambda conn: users.get_or_create(conn, "user_real", "real@example.com"))
    new = NewSavedSearch(
        name="Gone", keywords=["a"], location="US", language="en", match_type="phrase"
    )
    with pytest.raises(UserNotFoundError):
        db.transaction(lambda conn: team_searches.create(conn, ORG, "user_ghost", new))
    admin_conn.execute('UPDATE organizations SET "deletedAt" = now() WHERE id = %s', (ORG,))
    with pytest.raises(OrganizationNotFoundError):
        db.transaction(lambda conn: team_searches.create(conn, ORG, "user_real", new))
    with pytest.raises(OrganizationNotFoundError):
        db.transaction(lambda conn: team_searches.create(conn, "org_2Nowhere", "user_real", new))
    assert admin_conn.execute("SELECT count(*) FROM saved_searches").fetchone() == (0,)


def test_an_org_deleted_after_the_access_check_is_a_404_not_a_500(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """Clerk's deletion can land between the access check and the route's statement: the
    handlers, called with the access already granted, answer the org's 404."""
    seed(admin_conn)
    db.run(lambda conn: users.get_or_create(conn, "user_tadmin", "t@example.com"))
    admin_conn.execute('UPDATE organizations SET "deletedAt" = now() WHERE id = %s', (ORG,))
    access = OrgAccess(ORG, "user_tadmin", "org:admin", frozenset())
    body = CreateSavedSearch.model_validate(BODY)
    identity = Identity("user_tadmin", "t@example.com", is_admin=False)
    for attempt in (
        lambda: org_usage.get_usage(access),
        lambda: org_searches.create_team_search(access, identity, body),
    ):
        with pytest.raises(ApiError) as refused:
            attempt()
        assert (refused.value.status, refused.value.message) == (404, ORG_NOT_FOUND)
