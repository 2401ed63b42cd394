"""POST /api/content-brief (docs/original-app.md#post-apicontent-brief,
#serp-and-content-brief; docs/related-and-briefs.md) through the Lambda handler and HTTP,
DataForSEO's results page over respx."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx

from shared import brief, cache, config, providers
from shared.providers.dataforseo import SERP_API_URL
from shared.redis import get_redis
from shared.storable_text import first_unstorable
from tests.support.http import Caller, fresh_ip

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIXTURES = Path(__file__).parents[1] / "fixtures" / "dataforseo"
LANGUAGE_MESSAGE = "Language must be valid language code (e.g., en, en-US)"
BRIEF_KEYS = {
    "keyword", "location", "generatedAt", "serpResults", "totalResults", "recommendedWordCount",
    "topics", "suggestedHeadings", "questionsToAnswer", "relatedKeywords", "mockData", "provider",
}  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATAFORSEO_API_LOGIN", "DATAFORSEO_API_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    config.get_settings.cache_clear()
    providers.reset_providers()


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    providers.reset_providers()


def live(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    settings(monkeypatch, DATAFORSEO_API_LOGIN="login", DATAFORSEO_API_PASSWORD="secret", **env)


@contextmanager
def dataforseo_upstream() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host__regex=r"^(127\.0\.0\.1|localhost)$").pass_through()
        yield mock


def serp_fixture() -> Any:
    return json.loads((FIXTURES / "serp_organic_ok.json").read_text())


def user_id() -> str:
    return f"user_{uuid.uuid4().hex[:12]}"


def keyword() -> str:
    return f"seo tools {uuid.uuid4().hex[:10]}"


def make_brief(call: Caller, user: str | None, body: Any, **kw: Any) -> Any:
    return call("content_brief", "POST", "/api/content-brief", user=user, json_body=body, **kw)


# --- contract ------------------------------------------------------------------------------


def test_mock_brief_outside_production_is_never_cached(call: Caller) -> None:
    who, kw = user_id(), keyword()
    first = make_brief(call, who, {"keyword": kw})
    assert first.status == 200, first.text
    assert set(first.json) == {"brief", "cached", "timestamp"}
    made = first.json["brief"]
    assert set(made) == BRIEF_KEYS
    assert (made["keyword"], made["location"], made["mockData"], made["provider"]) == (
        kw, "US", True, "Mock",
    )  # fmt: skip
    assert TIMESTAMP.match(made["generatedAt"]) and TIMESTAMP.match(first.json["timestamp"])
    assert [r["domain"] for r in made["serpResults"]] == [
        "example.com", "guide.com", "tips.com", "compare.com", "learn.com",
    ]  # fmt: skip
    assert made["totalResults"] == 1_250_000
    assert made["recommendedWordCount"] == {"min": 1760, "max": 2860, "average": 2200}
    assert "x-ratelimit-remaining" in first.headers and "x-ratelimit-reset" in first.headers
    second = make_brief(call, who, {"keyword": kw})
    assert second.json["cached"] is False
    assert get_redis().get(cache.brief_key(kw, "US", "en")) is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"keyword": ""}, "Keyword is required"),
        ({"keyword": "   "}, "Keyword is required"),
        ({"keyword": "x" * 101}, "Keyword must be less than 100 characters"),
        (
            {"keyword": "<script>"},
            "Keyword can only contain letters, numbers, spaces, hyphens, and underscores",
        ),
        (
            {"keyword": "seo", "location": ""},
            "Location must be one of US, GB, CA, AU, DE, FR, IN, or GL for Global",
        ),
        (
            {"keyword": "seo", "location": "GL"},
            "Content briefs need a country: GL has no results page",
        ),
        ({"keyword": "seo", "language": "e"}, LANGUAGE_MESSAGE),
        ({"keyword": "seo", "language": "en-USA"}, LANGUAGE_MESSAGE),
        ({"keyword": "seo", "language": "null"}, LANGUAGE_MESSAGE),
    ],
)
def test_body_rules_answer_the_original_messages(
    call: Caller, body: dict[str, Any], message: str
) -> None:
    result = make_brief(call, user_id(), body)
    assert (result.status, result.json["error"], result.json["message"]) == (
        400, "Validation Error", message,
    )  # fmt: skip


def test_rate_limit_then_auth_then_body(call: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    settings(monkeypatch, RATE_LIMIT_ENABLED="true")
    address = fresh_ip()
    anonymous = make_brief(call, None, {"keyword": ""}, source_ip=address)
    assert anonymous.status == 401
    assert anonymous.headers["x-ratelimit-remaining"] == "19"  # counted: every answer says so
    assert anonymous.json["message"] == (
        "Authentication required. Please sign in to use content brief generation."
    )
    for _ in range(19):
        assert make_brief(call, None, {}, source_ip=address).status == 401
    refused = make_brief(call, None, {}, source_ip=address)
    assert refused.status == 429 and refused.json["error"] == "Rate Limit Exceeded"
    assert re.fullmatch(
        r"Rate limit exceeded\. Content briefs are limited to 20 per hour\. "
        r"Try again in \d+ seconds\.",
        refused.json["message"],
    )
    assert refused.headers["x-ratelimit-limit"] == "20" and "retry-after" in refused.headers
    assert make_brief(call, user_id(), {"keyword": keyword()}, source_ip=address).status == 200


def test_get_is_405(call: Caller) -> None:
    got = call("content_brief", "GET", "/api/content-brief")
    assert (got.status, got.json["message"]) == (405, "Use POST to generate a content brief")


def test_not_metered_but_a_usage_row_per_call(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true", TRIAL_KEYWORD_LIMIT="0")
    who = user_id()
    assert make_brief(call, who, {"keyword": keyword()}).status == 200
    usage = admin_conn.execute(
        'SELECT endpoint, method, "statusCode" FROM api_usage WHERE "userId" = %s', (who,)
    ).fetchall()
    assert usage == [("/api/content-brief", "POST", 200)]


# --- production and live data --------------------------------------------------------------


def test_production_without_credentials_refuses_mock_data(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, APP_ENV="production", RATE_LIMIT_HMAC_SECRET="x" * 40)
    result = make_brief(call, user_id(), {"keyword": keyword()})
    assert (result.status, result.json["reason"]) == (503, "provider_not_configured")


def test_live_brief_from_the_results_page_is_cached_for_a_day(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    live(monkeypatch)
    kw = keyword()
    with dataforseo_upstream() as upstream:
        route = upstream.post(SERP_API_URL).mock(httpx.Response(200, json=serp_fixture()))
        first = make_brief(call, user_id(), {"keyword": kw, "location": "DE", "language": "de"})
        again = make_brief(call, user_id(), {"keyword": kw.upper(), "location": "DE",
                                             "language": "de"})  # fmt: skip
    assert first.status == 200, first.text
    assert route.call_count == 1
    assert json.loads(route.calls[0].request.content) == [
        {"keyword": kw, "language_code": "de", "depth": 10, "calculate_rectangles": False,
         "location_code": 2276},
    ]  # fmt: skip
    made = first.json["brief"]
    assert (made["provider"], made["mockData"], made["location"]) == ("DataForSEO", False, "DE")
    assert [(r["position"], r["domain"]) for r in made["serpResults"]] == [
        (1, "moz.com"), (2, "ahrefs.com"), (3, "semrush.com"), (4, "backlinko.com"),
    ]  # fmt: skip
    assert made["totalResults"] == 2_130_000_000
    assert made["recommendedWordCount"] == {"min": 1200, "max": 1950, "average": 1500}
    paa = [q["question"] for q in made["questionsToAnswer"] if q["source"] == "paa"]
    assert paa == ["What are the best SEO tools?", "Are free SEO tools any good?"]
    assert {"topic": "keyword research", "frequency": 5, "importance": "high"} in made["topics"]
    assert again.json["cached"] is True and again.json["brief"] == made
    stored = get_redis().ttl(cache.brief_key(kw, "DE", "de"))  # type: ignore[union-attr]
    assert 86_000 < stored <= 86_400


def test_live_failures_are_502_then_the_circuit_opens(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    live(monkeypatch, APP_ENV="development", RATE_LIMIT_ENABLED="true")
    who = user_id()
    with dataforseo_upstream() as upstream:
        route = upstream.post(SERP_API_URL).mock(httpx.Response(500, text="boom secret"))
        answers = [make_brief(call, who, {"keyword": keyword()}) for _ in range(6)]
    assert [a.status for a in answers] == [502] * 5 + [503]  # no mock fallback, anywhere
    assert answers[5].json["reason"] == "provider_circuit_open"
    assert all("boom" not in a.text and "secret" not in a.text for a in answers)
    assert route.call_count == 5
    # Each was counted by the rate-limit check before it: each says so (report s55t1).
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["19", "18", "17", "16",
                                                                     "15", "14"]  # fmt: skip
    assert len({a.headers["x-ratelimit-reset"] for a in answers}) == 1


def test_a_keyword_without_results_is_an_empty_brief_and_never_opens_the_circuit(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataForSEO's 40102 "No Search Results." is the user's rare keyword: one user's many such
    briefs answer empty briefs and leave the circuit closed for everyone else."""
    live(monkeypatch)
    nothing = json.loads((FIXTURES / "serp_no_results.json").read_text())
    rare_user = user_id()
    with dataforseo_upstream() as upstream:
        route = upstream.post(SERP_API_URL).mock(httpx.Response(200, json=nothing))
        rare = [make_brief(call, rare_user, {"keyword": f"qzxv {keyword()}"}) for _ in range(6)]
        route.mock(httpx.Response(200, json=serp_fixture()))
        other = make_brief(call, user_id(), {"keyword": keyword()})
    assert [a.status for a in rare] == [200] * 6, rare[0].text
    made = rare[0].json["brief"]
    assert (made["serpResults"], made["totalResults"], made["mockData"]) == ([], 0, False)
    assert other.status == 200 and len(other.json["brief"]["serpResults"]) == 4
    assert route.call_count == 7
    assert providers.serp_provider().breaker.stats()["failures"] == 0


def test_a_success_whose_result_is_malformed_is_502_and_not_cached(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A results page in no documented shape (`result` an object, `items` not an array) is a
    broken answer, not an empty page: nothing is cached (s44t3 F3)."""
    live(monkeypatch)
    kw = keyword()
    page = serp_fixture()
    as_object, items_object = copy.deepcopy(page), copy.deepcopy(page)
    as_object["tasks"][0]["result"] = page["tasks"][0]["result"][0]
    items_object["tasks"][0]["result"][0]["items"] = {"type": "organic"}
    with dataforseo_upstream() as upstream:
        route = upstream.post(SERP_API_URL).mock(httpx.Response(200, json=as_object))
        failed = [make_brief(call, user_id(), {"keyword": kw})]
        route.mock(httpx.Response(200, json=items_object))
        failed.append(make_brief(call, user_id(), {"keyword": kw}))
        route.mock(httpx.Response(200, json=page))
        served = make_brief(call, user_id(), {"keyword": kw})
    assert [(a.status, a.json["error"]) for a in failed] == [(502, "Bad Gateway")] * 2
    assert served.status == 200 and served.json["cached"] is False
    assert len(served.json["brief"]["serpResults"]) == 4 and route.call_count == 3


def test_a_task_error_is_a_provider_failure(call: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    live(monkeypatch)
    body = serp_fixture()
    body["tasks"][0].update(status_code=40501, status_message="Invalid Field: 'language_code'.")
    with dataforseo_upstream() as upstream:
        upstream.post(SERP_API_URL).mock(httpx.Response(200, json=body))
        result = make_brief(call, user_id(), {"keyword": keyword(), "language": "xx-XX"})
    assert result.status == 502


# --- the brief's rules ---------------------------------------------------------------------


def test_headings_and_questions_follow_the_original_rules() -> None:
    serp = brief.parse_serp(serp_fixture()["tasks"][0]["result"][0])
    made = brief.build_brief("seo tools", "US", serp, provider="DataForSEO", mock=False,
                             generated_at="2024-01-01T00:00:00.000Z")  # fmt: skip
    headings = [(h["text"], h["source"]) for h in made["suggestedHeadings"]]
    assert headings[:5] == [
        ("What is seo tools", "Common pattern"), ("How to seo tools", "Common pattern"),
        ("Why seo tools", "Common pattern"), ("Best seo tools", "Common pattern"),
        ("seo tools Benefits", "Common pattern"),
    ]  # fmt: skip
    # Trailing " - Site" / " | Site" cut; the bare keyword ("seo tools") is not a heading.
    assert headings[5:] == [
        ("The 10 Best Free SEO Tools", "moz.com"), ("12 Free SEO Tools", "ahrefs.com"),
        ("SEO Toolkit: Keyword Research, Rank Tracking", "semrush.com"),
    ]  # fmt: skip
    questions = made["questionsToAnswer"]
    assert len(questions) == 7 and questions[2] == {
        "question": "What is seo tools?", "source": "inferred",
    }  # fmt: skip
    assert all("seo tools" not in phrase for phrase in made["relatedKeywords"])
    assert "keyword research" in made["relatedKeywords"]


MARKUP_PAGE: dict[str, Any] = {
    "se_results_count": 40,
    "items": [
        {"type": "organic", "rank_group": 1, "domain": "a.example\x00",
         "url": "https://a.example/espresso?x=1",
         "description": "Espresso &amp; grinder<br>setup\x00 tips.<script>alert(1)</script>",
         "title": "<b>Espresso</b> &amp; Grinder <span class=\"x\">Setup</span> - Shop"},
        {"type": "organic", "rank_group": 2, "title": None, "url": "https://b.example/",
         "domain": "b.example", "description": "espresso grinder"},
        {"type": "organic", "rank_group": 3, "title": "No address at all", "url": None,
         "domain": "c.example", "description": "espresso grinder"},
        {"type": "organic", "rank_group": 4, "title": "Espresso &lt;3 grinder \ud83d",
         "url": "https://d.example/", "domain": "d.example", "description": "<p>espresso grinder"},
        {"type": "people_also_ask", "items": [
            {"title": "Is <i>espresso</i> &quot;strong&quot;?"}, {"title": "<b></b>"},
            {"title": "Is espresso &quot;strong&quot;?"}]},
    ],
}  # fmt: skip


def test_provider_text_is_plain_storable_and_results_without_title_or_url_are_dropped() -> None:
    """Titles, snippets and questions are plain text (tags dropped, entities decoded) before
    anything is built from them; every string is storable; an organic item without a title or
    an address is not a result (s49t4)."""
    serp = brief.parse_serp(MARKUP_PAGE)
    assert serp["results"] == [
        {"position": 1, "title": "Espresso & Grinder Setup - Shop",
         "url": "https://a.example/espresso?x=1", "domain": "a.example",
         "description": "Espresso & grinder setup tips."},
        {"position": 4, "title": "Espresso <3 grinder \ufffd", "url": "https://d.example/",
         "domain": "d.example", "description": "espresso grinder"},
    ]  # fmt: skip
    assert serp["questions"] == ['Is espresso "strong"?']
    made = brief.build_brief("espresso", "US", serp, provider="DataForSEO", mock=False,
                             generated_at="2024-01-01T00:00:00.000Z")  # fmt: skip
    assert first_unstorable(made) is None
    assert {"topic": "espresso grinder", "frequency": 4, "importance": "medium"} in made["topics"]
    words = " ".join([*made["relatedKeywords"], *(h["text"] for h in made["suggestedHeadings"])])
    assert not {"amp", "span", "script", "<b>"} & set(words.split())


def test_a_results_page_is_bounded_where_it_is_read() -> None:
    """A negative count is no count, and a title, description or question is cut to 1,000
    characters, an address past 2,048 is none (the item skipped), a domain past 253 is none:
    answered and cached, such text only bloated every brief (s52t7 D4)."""
    long = "word " * 40_000
    page = {
        "se_results_count": -5,
        "items": [
            {"type": "organic", "title": long, "url": "https://a.example/",
             "domain": "a" * 254, "description": long},
            {"type": "organic", "title": "Kept", "url": "https://b.example/" + "b" * 2_030,
             "domain": "b.example", "description": ""},
            {"type": "organic", "title": "Far", "url": "https://c.example/" + "c" * 2_031,
             "domain": "c.example", "description": ""},
            {"type": "people_also_ask", "items": [{"title": long}]},
        ],
    }  # fmt: skip
    serp = brief.parse_serp(page)
    assert serp["totalResults"] == 0
    first, kept = serp["results"]
    assert len(first["title"]) == len(first["description"]) == 999  # its trailing space cut
    assert first["title"] == long[:999] and first["domain"] == ""
    assert kept["title"] == "Kept" and len(kept["url"]) == 2_048
    assert [len(question) for question in serp["questions"]] == [999]


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("Use ?a=1&section=2&copy=3 &notice", "Use ?a=1&section=2&copy=3 &notice"),
        ("Java<b>Script</b> and C<sub>2</sub>H", "JavaScript and C2H"),
        ("one<br>two<p>three</p>four", "one two three four"),
        ("tips<SCRIPT type=x>var a = 1 < 2;</script >end<style>p{}</style>!", "tips end !"),
        ("tips <script>alert(1)", "tips"),
        ("a<scripts>b &#0; &#xD800; &lt;b&gt;", "a b \ufffd \ufffd <b>"),
        ("&section; &notes; &amp &copy; &#169;", "&section; &notes; &amp © ©"),
        ("İstanbul <script>x</script>tips <style-guide>kept</style-guide>", "İstanbul tips kept"),
        ("a<script>x</scripts>b</script>c", "a c"),
        ("<" + "a" * 100_000, "<" + "a" * 100_000),
        ("<!-- note -->a < b <3", "a < b <3"),
    ],
)
def test_plain_text_is_read_as_html_writes_it(given: str, read: str) -> None:
    """References only when written whole, inline tags joining their words, scripts and styles
    dropped with their content (reviewer A: `&section` read as `§ion`, `Java Script`)."""
    assert brief.plain(given) == read


def test_a_live_brief_is_built_from_plain_storable_text(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    live(monkeypatch)
    kw, page = keyword(), serp_fixture()
    page["tasks"][0]["result"][0] = MARKUP_PAGE
    answer = httpx.Response(200, content=json.dumps(page).encode(),
                            headers={"Content-Type": "application/json"})  # fmt: skip
    with dataforseo_upstream() as upstream:
        upstream.post(SERP_API_URL).mock(answer)
        first = make_brief(call, user_id(), {"keyword": kw})
        again = make_brief(call, user_id(), {"keyword": kw})
    assert first.status == 200, first.text
    made = first.json["brief"]
    assert [r["title"] for r in made["serpResults"]] == [
        "Espresso & Grinder Setup - Shop", "Espresso <3 grinder \ufffd",
    ]  # fmt: skip
    assert first_unstorable(made) is None and "<" not in json.dumps(made["topics"])
    assert again.json["cached"] is True and again.json["brief"] == made


def test_the_cache_key_is_the_originals() -> None:
    """The documented value (docs/original-app.md#key-table): trimmed and lower-cased."""
    assert cache.brief_key(" SEO tools ", "US", "en") == (
        "brief:US:en:fb22f5e1e11bd4688048020b342db80523c5ac0cfbdedb55f5c67627ba752727"
    )
