"""POST /api/keywords in the token's active organization, through the Lambda handler on both
lanes: counted against the team's pooled quota, recorded for the team, the member's permission
checked first; a token without an organization is the personal search it always was."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from threading import Barrier, Event
from typing import Any

import psycopg
import pytest
import respx
from httpx import Response as HttpxResponse
from sqlalchemy import event

from functions.keywords import NO_TEAM_SEARCH
from shared import config, db, providers
from shared.http.errors import ORG_NOT_FOUND
from shared.rbac import KEYWORDS_SEARCH
from tests.support.http import Caller, Keys, Result

ORG = "org_2Z5Tgd3v6U1OeQXQ5Ijn7bqq3pK"
BODY = {"keywords": ["espresso machine", "latte art"], "matchType": "phrase", "location": "US"}
DATAFORSEO_URL = re.compile(r"https://api\.dataforseo\.com/.*")


def v2(role: str = "member", org_id: str = ORG, **extra: Any) -> dict[str, Any]:
    """Clerk's claims version 2 naming `org_id` as the session's active organization."""
    return {"v": 2, "o": {"id": org_id, "rol": role, "slg": "team", **extra}}


def v1(role: str = "org:member", org_id: str = ORG) -> dict[str, Any]:
    return {"org_id": org_id, "org_role": role, "org_slug": "team"}


@pytest.fixture(autouse=True)
def seeded_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    settings(monkeypatch, MOCK_PROVIDER_SEED="7", DATAFORSEO_REQUESTS_PER_MINUTE="0")


@pytest.fixture
def lambda_call(api_env: Keys) -> Caller:
    return Caller("lambda_v2", api_env)


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    providers.reset_providers()


def new_user() -> str:
    return f"user_{uuid.uuid4().hex[:12]}"


def fresh(body: dict[str, Any] = BODY) -> dict[str, Any]:
    """The body with keywords no earlier test cached (the emulator lives for the session)."""
    tag = uuid.uuid4().hex[:10]
    return {**body, "keywords": [f"{keyword} {tag}" for keyword in body["keywords"]]}


def search(call: Caller, user: str, claims: dict[str, Any], body: Any = None) -> Result:
    token = call.token(user, **claims)
    return call(
        "keywords",
        "POST",
        "/api/keywords",
        json_body=body or fresh(),
        headers={"authorization": f"Bearer {token}"},
    )


def org_counters(admin: psycopg.Connection[Any], org_id: str = ORG) -> tuple[int, int] | None:
    row = admin.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM organizations'
        " WHERE id = %s",
        (org_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def user_counters(admin: psycopg.Connection[Any], user: str) -> tuple[int, int] | None:
    row = admin.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s',
        (user,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def history(admin: psycopg.Connection[Any], user: str) -> list[tuple[Any, ...]]:
    return admin.execute(
        'SELECT "organizationId", keywords FROM search_history WHERE "userId" = %s'
        ' ORDER BY "searchedAt"',
        (user,),
    ).fetchall()


def set_org(admin: psycopg.Connection[Any], sql: str) -> None:
    admin.execute(f"UPDATE organizations SET {sql} WHERE id = %s", (ORG,))


def assert_envelope(result: Result, status: int, message: str) -> None:
    assert result.status == status, result.text
    assert result.json["message"] == message
    assert result.json["statusCode"] == status and "error" in result.json


@contextmanager
def dataforseo(status: int = 200) -> Iterator[respx.Route]:
    """DataForSEO (third-party HTTP) answering every keyword; our emulator is reached for real."""

    def answer(request: Any) -> HttpxResponse:
        if status != 200:
            return HttpxResponse(status, text="upstream exploded")
        keywords = json.loads(request.content)[0]["keywords"]
        rows = [{"keyword": k, "search_volume": 10} for k in keywords]
        task = {"status_code": 20000, "result": rows}
        return HttpxResponse(200, json={"status_code": 20000, "tasks": [task]})

    with respx.mock(assert_all_called=False) as mock:
        mock.route(host__regex=r"^(127\.0\.0\.1|localhost)$").pass_through()
        yield mock.post(url__regex=DATAFORSEO_URL).mock(side_effect=answer)


def use_dataforseo(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    settings(
        monkeypatch,
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN="login",
        DATAFORSEO_API_PASSWORD="secret-password",
        **env,
    )


# --- counted and recorded for the team -------------------------------------------------------


@pytest.mark.parametrize("claims", [v2(), v1()], ids=["v2", "v1"])
def test_a_team_search_counts_against_the_org_and_is_recorded_for_it(
    call: Caller, admin_conn: psycopg.Connection[Any], claims: dict[str, Any]
) -> None:
    who = new_user()
    body = fresh()
    result = search(call, who, claims, body)
    assert result.status == 200, result.text
    assert [row["keyword"] for row in result.json["data"]] == body["keywords"]
    assert org_counters(admin_conn) == (2, 2)
    assert user_counters(admin_conn, who) == (0, 0)  # provisioned, its own quota untouched
    assert history(admin_conn, who) == [(ORG, body["keywords"])]
    name = admin_conn.execute("SELECT name, slug FROM organizations WHERE id = %s", (ORG,))
    assert name.fetchone() == ("team", "team")  # created from the token; the mirror renames it
    reservations = admin_conn.execute("SELECT count(*) FROM keyword_reservations").fetchone()
    assert reservations == (0,)  # confirmed by the record


def test_two_members_share_the_pool_and_their_personal_quotas_stay_apart(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    alice, bob = new_user(), new_user()
    assert search(lambda_call, alice, v2("admin")).status == 200
    assert search(lambda_call, bob, v2()).status == 200
    assert search(lambda_call, bob, {}).status == 200  # no active org: Bob's own search
    assert org_counters(admin_conn) == (4, 4)
    assert (user_counters(admin_conn, alice), user_counters(admin_conn, bob)) == ((0, 0), (2, 2))
    assert [row[0] for row in history(admin_conn, bob)] == [ORG, None]


def test_the_team_quota_429_names_the_team_and_leaves_the_personal_quota_usable(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true", ORG_FREE_MONTHLY_LIMIT="3")
    who = new_user()
    assert search(lambda_call, who, v2()).status == 200
    refused = search(lambda_call, who, v2())
    assert_envelope(
        refused,
        429,
        "Your team's monthly keyword limit reached (2/3). It resets at the start of next month.",
    )
    assert refused.json["error"] == "Client Error"
    assert refused.headers["x-quota-remaining"] == "1"
    assert "retry-after" not in refused.headers  # 1 left: a one-keyword search passes now
    assert org_counters(admin_conn) == (2, 2)
    assert len(history(admin_conn, who)) == 1

    personal = search(lambda_call, who, {})
    assert personal.status == 200  # the user's own trial is another quota
    assert user_counters(admin_conn, who) == (2, 2)
    assert org_counters(admin_conn) == (2, 2)


def test_a_personal_quota_used_up_does_not_stop_team_searches(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true", TRIAL_KEYWORD_LIMIT="2")
    who = new_user()
    assert search(lambda_call, who, {}).status == 200
    assert search(lambda_call, who, {}).status == 429
    assert search(lambda_call, who, v2()).status == 200
    assert (user_counters(admin_conn, who), org_counters(admin_conn)) == ((2, 2), (2, 2))


def test_members_racing_never_pass_the_team_limit(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Twenty-four members' searches of 5 keywords at once against a team limit of 37: exactly
    floor(37 / 5) = 7 answer 200, the rest 429, and the counter stops at 35."""
    settings(monkeypatch, BILLING_ENABLED="true", ORG_FREE_MONTHLY_LIMIT="37", DB_POOL_SIZE="12")
    db.dispose_engine()
    call = Caller("lambda_v2", api_env)
    members = [new_user() for _ in range(24)]
    five = {**BODY, "keywords": [f"kw {i}" for i in range(5)]}
    start = Barrier(12)

    def one(index: int) -> int:
        if index < 12:
            start.wait()
        return search(call, members[index], v2(), five).status

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(one, range(24)))
    assert (statuses.count(200), statuses.count(429)) == (7, 17)
    assert org_counters(admin_conn) == (35, 35)
    recorded = admin_conn.execute(
        'SELECT count(*) FROM search_history WHERE "organizationId" = %s', (ORG,)
    ).fetchone()
    assert recorded == (7,)


def test_the_team_counter_resets_lazily_in_a_new_month(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true")
    who = new_user()
    assert search(lambda_call, who, v2()).status == 200
    set_org(admin_conn, "tier = 'PRO', \"keywordSearchesThisMonth\" = 5000")
    assert search(lambda_call, who, v2()).status == 429
    set_org(admin_conn, "\"monthlyResetAt\" = date_trunc('month', now()) - interval '1 day'")
    assert search(lambda_call, who, v2()).status == 200
    assert org_counters(admin_conn) == (2, 4)


def test_a_free_team_gets_mock_data_and_a_paying_one_the_provider(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """With billing on, the tier that decides is the one counted: the organization's."""
    settings(monkeypatch, BILLING_ENABLED="true")
    use_dataforseo(monkeypatch)
    who = new_user()
    with dataforseo() as upstream:
        free = search(lambda_call, who, v2())
        set_org(admin_conn, "tier = 'PRO'")
        paid = search(lambda_call, who, v2())
    assert (free.json["provider"], free.json["mockData"]) == ("Mock", True)
    assert (paid.json["provider"], paid.json["mockData"]) == ("DataForSEO", False)
    assert upstream.call_count == 1


def test_a_provider_failure_gives_the_keywords_back_to_the_team(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    who = new_user()
    assert search(lambda_call, who, v2()).status == 200
    use_dataforseo(monkeypatch)
    with dataforseo(status=500):
        failed = search(lambda_call, who, v2())
    assert failed.status == 502
    assert org_counters(admin_conn) == (2, 2)
    assert user_counters(admin_conn, who) == (0, 0)
    assert admin_conn.execute("SELECT count(*) FROM keyword_reservations").fetchone() == (0,)
    assert len(history(admin_conn, who)) == 1


# --- who may search for the team ---------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        v2("viewer"),
        v1("org:viewer"),
        v2("viewer", per="read", fpm="1") | {"fea": "o:searches"},
    ],
    ids=["v2_custom_role", "v1_custom_role", "other_permission_only"],
)
def test_a_member_without_the_search_permission_is_403_and_nothing_is_counted(
    call: Caller, admin_conn: psycopg.Connection[Any], claims: dict[str, Any]
) -> None:
    who = new_user()
    result = search(call, who, claims)
    assert_envelope(result, 403, NO_TEAM_SEARCH)
    assert org_counters(admin_conn) is None  # not even created
    assert user_counters(admin_conn, who) in {None, (0, 0)}
    assert history(admin_conn, who) == []


def test_a_custom_role_granted_the_search_permission_searches(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    feature, name = KEYWORDS_SEARCH.removeprefix("org:").split(":")
    claims = v2("viewer", per=name, fpm="1") | {"fea": f"o:{feature}"}
    assert search(lambda_call, new_user(), claims).status == 200
    assert org_counters(admin_conn) == (2, 2)


def test_a_deleted_org_is_404_and_nothing_is_counted(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    who = new_user()
    assert search(lambda_call, who, v2()).status == 200
    set_org(admin_conn, '"deletedAt" = now()')
    assert_envelope(search(lambda_call, who, v2("admin")), 404, ORG_NOT_FOUND)
    assert org_counters(admin_conn) == (2, 2)
    assert len(history(admin_conn, who)) == 1


def test_a_malformed_org_claim_is_a_personal_search(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    who = new_user()
    assert search(lambda_call, who, v2(org_id="not-an-org-id")).status == 200
    assert user_counters(admin_conn, who) == (2, 2)
    assert admin_conn.execute("SELECT count(*) FROM organizations").fetchone() == (0,)
    assert history(admin_conn, who)[0][0] is None


def test_a_member_erased_since_this_container_provisioned_them_is_provisioned_again(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    who = new_user()
    assert search(lambda_call, who, v2()).status == 200
    admin_conn.execute("DELETE FROM users WHERE id = %s", (who,))  # the container still remembers
    assert search(lambda_call, who, v2()).status == 200
    assert user_counters(admin_conn, who) == (0, 0)
    assert org_counters(admin_conn) == (4, 4)
    assert [row[0] for row in history(admin_conn, who)] == [ORG]  # the first lost its user


# --- round trips ---------------------------------------------------------------------------------


def test_a_warm_team_search_takes_two_database_round_trips(lambda_call: Caller) -> None:
    who = new_user()
    assert search(lambda_call, who, v2()).status == 200  # warm: user provisioned, connection open
    statements: list[str] = []
    engine = db.get_engine()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    body = fresh()
    try:
        miss = search(lambda_call, who, v2(), body)
        miss_count = len(statements)
        hit = search(lambda_call, who, v2(), body)
        hit_count = len(statements) - miss_count
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert (miss.json["cached"], hit.json["cached"]) == (False, True)
    assert (miss_count, hit_count) == (2, 2)


# --- the member erased while the search is in flight -------------------------------------------


@contextmanager
def held_in_provider() -> Iterator[tuple[Event, Event]]:
    """DataForSEO holding its first call until `release` is set (`entered` says a search waits
    on it: its reservation is written by then), answering the others at once."""
    entered, release = Event(), Event()

    def answer(request: Any) -> HttpxResponse:
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        keywords = json.loads(request.content)[0]["keywords"]
        rows = [{"keyword": k, "search_volume": 10} for k in keywords]
        task = {"status_code": 20000, "result": rows}
        return HttpxResponse(200, json={"status_code": 20000, "tasks": [task]})

    with respx.mock(assert_all_called=False) as mock:
        mock.route(host__regex=r"^(127\.0\.0\.1|localhost)$").pass_through()
        mock.post(url__regex=DATAFORSEO_URL).mock(side_effect=answer)
        yield entered, release


def erased_midway(
    call: Caller, who: str, *, meanwhile: Callable[[], None] = lambda: None
) -> Result:
    """One team search of `who`, whose DELETE /api/me commits between the team reservation and
    the record (the provider waits for it); `meanwhile` runs after the erasure, before the
    search goes on."""
    with held_in_provider() as (entered, release), ThreadPoolExecutor(1) as pool:
        searching = pool.submit(search, call, who, v2("admin"))
        assert entered.wait(30)
        assert call("me", "DELETE", "/api/me", user=who).status == 200
        meanwhile()
        release.set()
        return searching.result()


def team_recorded(admin: psycopg.Connection[Any]) -> int:
    """Keywords of the searches the team's history holds."""
    row = admin.execute(
        "SELECT coalesce(sum(cardinality(keywords)), 0) FROM search_history"
        ' WHERE "organizationId" = %s',
        (ORG,),
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def pooled_call(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[Caller]:
    """The Lambda handler with a connection for each request in flight, DataForSEO configured."""
    use_dataforseo(monkeypatch, DB_POOL_SIZE="4")
    db.dispose_engine()
    yield Caller("lambda_v2", api_env)
    db.dispose_engine()


@pytest.mark.parametrize("signed_in_again_first", [False, True], ids=["search", "sign_in"])
def test_a_team_search_whose_member_erases_midway_is_counted_to_the_team_again(
    pooled_call: Caller, admin_conn: psycopg.Connection[Any], signed_in_again_first: bool
) -> None:
    """The erasure gives the team the search's held keywords back; the search still answers
    200 and is recorded for the team (by the new account the person signs in as, whether the
    search or another request of theirs provisions it first), so its keywords are counted to
    the team again: the team's counter is what its history holds."""
    who = new_user()
    with dataforseo():
        assert search(pooled_call, who, v2("admin")).status == 200

    def sign_in() -> None:
        if signed_in_again_first:
            assert pooled_call("me", "GET", "/api/me", user=who).status == 200

    answered = erased_midway(pooled_call, who, meanwhile=sign_in)
    assert answered.status == 200, answered.text
    assert len(answered.json["data"]) == 2
    assert team_recorded(admin_conn) == 4
    assert org_counters(admin_conn) == (4, 4)
    assert [row[0] for row in history(admin_conn, who)] == [ORG]  # the first was anonymised
    assert user_counters(admin_conn, who) == (0, 0)  # the new account's own quota untouched
    assert admin_conn.execute("SELECT count(*) FROM keyword_reservations").fetchone() == (0,)


def test_a_team_search_whose_member_erases_midway_is_refused_once_the_team_limit_is_spent(
    pooled_call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """As above, but another member spends the keywords the erasure gave back before the
    search records: counting them again would pass the team's limit, so the search is refused
    as one arriving now would be (429, the team's message), recorded nowhere and counted
    nowhere."""
    settings(monkeypatch, BILLING_ENABLED="true", ORG_PRO_MONTHLY_LIMIT="3")
    who, other = new_user(), new_user()
    assert search(pooled_call, other, v2(), {**fresh(), "keywords": ["k"]}).status == 200
    set_org(admin_conn, "tier = 'PRO'")

    def other_searches() -> None:
        assert search(pooled_call, other, v2()).status == 200

    answered = erased_midway(pooled_call, who, meanwhile=other_searches)
    assert_envelope(
        answered,
        429,
        "Your team's monthly keyword limit reached (3/3). It resets at the start of next month.",
    )
    assert org_counters(admin_conn) == (3, 3)
    assert team_recorded(admin_conn) == 3
    assert history(admin_conn, who) == []
    assert admin_conn.execute("SELECT count(*) FROM keyword_reservations").fetchone() == (0,)
