"""Property tests (hypothesis) for the input contracts and the quota arithmetic.

Each validator is checked against an *oracle*: the documented rule written out independently
(docs/original-app.md#post-apikeywords, #saved-searches-apisearches), so "accepted" and "refused
with this message" are both predicted for any input, not only for hand-picked ones. The oracle's
whitespace is ECMAScript's (the original ran on zod/JS), derived from the Unicode database here
rather than copied from the code under test.

The quota rules are pure Python (clock, `shared.quotas`) plus one SQL statement per operation
(`shared.repositories.users`): the pure parts get plain properties, the SQL gets a small
stateful test against the real database that compares the stored counters with a Python model
after every step.

Runs are deterministic (`derandomize=True`, no example database) so CI sees the same examples.
"""

from __future__ import annotations

import re
import string
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from shared import config, db
from shared.clock import month_start, next_month_start, seconds_until
from shared.contracts.keywords import LOCATION_CODES, KeywordSearch
from shared.contracts.paging import bounded_int, decode_cursor, encode_cursor
from shared.contracts.saved_searches import (
    CreateSavedSearch,
    UpdateSavedSearch,
    valid_search_id,
)
from shared.errors import QuotaExceededError, TrialExpiredError
from shared.http.errors import ApiError
from shared.legacy import keys
from shared.legacy.mapping import counter_ttl
from shared.models import UserTier
from shared.models.reservations import KeywordReservation
from shared.models.users import User
from shared.providers import dataforseo
from shared.providers.languages import provider_language
from shared.quotas import Limits, UsageView, this_month, usage_view
from shared.repositories import reservations, users

PURE = settings(max_examples=150, derandomize=True, deadline=None, database=None)
CHEAP = settings(max_examples=60, derandomize=True, deadline=None, database=None)

# --- the oracle: the documented rules, written out ----------------------------------------------

# ECMAScript WhiteSpace (TAB VT FF SP NBSP ZWNBSP + category Zs) and LineTerminator (LF CR LS PS):
# what JS `trim()` strips and what `\s` matches.
JS_SPACE = frozenset(
    "\t\v\f \u00a0\ufeff\n\r\u2028\u2029"
    + "".join(c for c in map(chr, range(0x10000)) if unicodedata.category(c) == "Zs")
)
KEYWORD_CHARS = frozenset(string.ascii_letters + string.digits + "-_") | JS_SPACE
# Python-only whitespace (str.isspace but not JS): the characters where a port most easily drifts.
PYTHON_ONLY_SPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace() and c not in JS_SPACE)
LANGUAGE = re.compile(r"[a-z]{2}(-[A-Z]{2})?")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
LEGACY_ID_RE = re.compile(r"[0-9]{13}-[a-z0-9]{7}")  # JS `\d`: ASCII digits only

KEYWORD_EMPTY = "Keyword cannot be empty"
KEYWORD_LONG = "Keyword too long (max 100 chars)"
KEYWORD_CHARSET = "Keywords must contain only letters, numbers, spaces, hyphens, and underscores"
LOCATION_MESSAGE = "Location must be one of US, GB, CA, AU, DE, FR, IN, or GL for Global"
LANGUAGE_MESSAGE = "Language must be valid language code (e.g., en, en-US)"
GOOGLE_ADS_LANGUAGES = frozenset({"en", "en-US", "en-GB", "es", "fr", "de"})


def js_trim(value: str) -> str:
    start, end = 0, len(value)
    while start < end and value[start] in JS_SPACE:
        start += 1
    while end > start and value[end - 1] in JS_SPACE:
        end -= 1
    return value[start:end]


def search_keyword(raw: str) -> str:
    """What `/api/keywords` keeps of an accepted keyword: every U+FEFF removed, JS-trimmed."""
    return js_trim(raw.replace("\ufeff", ""))


def search_keyword_verdict(raw: str) -> str | None:
    """None when `/api/keywords` must accept the keyword, else the documented message."""
    keyword = search_keyword(raw)
    if not keyword:
        return KEYWORD_EMPTY
    if len(keyword) > 100:
        return KEYWORD_LONG
    if not set(keyword) <= KEYWORD_CHARS:
        return KEYWORD_CHARSET
    return None


def messages(model: type[BaseModel], data: dict[str, Any]) -> list[str] | None:
    """None when `data` validates, else every issue's message (what the 400 shows)."""
    try:
        model.model_validate(data)
    except ValidationError as error:
        return [issue["msg"] for issue in error.errors()]
    return None


def revalidates_to_itself(model: BaseModel) -> bool:
    """Normalisation is idempotent: what was accepted, dumped and read again is unchanged."""
    return type(model).model_validate(model.model_dump()) == model


# --- strategies ---------------------------------------------------------------------------------

js_space = st.sampled_from(sorted(JS_SPACE))
allowed_char = st.one_of(st.sampled_from(string.ascii_letters + string.digits + "-_"), js_space)
# Characters a careless port gets wrong: Python-only whitespace, controls, punctuation, letters
# outside ASCII, and the injection-ish ones the spec lists (%, <, :, NUL, quotes, =).
awkward_char = st.one_of(
    st.sampled_from(PYTHON_ONLY_SPACE + "\x00\x7f%<>:;'\"=*/\\é☃"),
    st.characters(codec="utf-8", exclude_categories=("Cs",)),
)
padding = st.text(alphabet=js_space, max_size=3)


@st.composite
def valid_keywords(draw: st.DrawFn) -> str:
    """A keyword the original accepts: 1..100 allowed characters after trimming, padded."""
    core = draw(st.text(alphabet=allowed_char, min_size=1, max_size=100))
    if not js_trim(core):
        core = draw(st.sampled_from(string.ascii_letters)) + core[1:]
    return draw(padding) + core + draw(padding)


any_keyword = st.one_of(
    valid_keywords(),
    st.text(alphabet=st.one_of(allowed_char, awkward_char), max_size=130),
    st.builds(
        lambda k, c, i: k[:i] + c + k[i:], valid_keywords(), awkward_char, st.integers(0, 99)
    ),
)


# --- POST /api/keywords body (docs/original-app.md#post-apikeywords)
# --------------------------------------------------------


@PURE
@given(keyword=any_keyword)
@example(keyword="seo\u00a0tools")  # NBSP is JS whitespace: allowed
@example(keyword="\ufeffseo\ufeff")  # BOM: JS trims it (Python's strip() does not)
@example(keyword="seo\ufefftools")  # inside too: invisible, so removed (DataForSEO refuses it)
@example(keyword="\ufeff\ufeff")  # nothing but BOMs: empty
@example(keyword="seo\x1ctools")  # ASCII separator: Python calls it a space, JS does not
@example(keyword="seo\x85")  # NEL: likewise
@example(keyword=" " * 3 + "k" * 100 + "\t")  # exactly 100 after trimming
@example(keyword="k" * 101)
def test_a_keyword_is_accepted_exactly_when_the_documented_rule_says(keyword: str) -> None:
    """Accepted ⇔ the JS-trimmed keyword is 1..100 characters of [a-zA-Z0-9\\s\\-_] (JS \\s);
    refused with exactly the documented message otherwise; accepted values come back trimmed."""
    verdict = search_keyword_verdict(keyword)
    found = messages(KeywordSearch, {"keywords": [keyword], "matchType": "exact"})
    if verdict is None:
        assert found is None
        model = KeywordSearch.model_validate({"keywords": [keyword], "matchType": "exact"})
        assert model.keywords == [search_keyword(keyword)]
        assert revalidates_to_itself(model)
    else:
        assert found == [verdict]


@CHEAP
@given(keyword=any_keyword)
@example(keyword="seo\ufefftools")
@example(keyword="rocket \U0001f680")
@example(keyword="a\u2015b")
def test_every_accepted_keyword_holds_only_what_dataforseo_accepts(keyword: str) -> None:
    """The contract never lets through a character DataForSEO refuses (a refused one fails the
    whole batch upstream): accepted ⇒ no refused symbol, no U+FEFF, nothing beyond U+FFFF."""
    if search_keyword_verdict(keyword) is not None:
        return
    model = KeywordSearch.model_validate({"keywords": [keyword], "matchType": "exact"})
    sent = " ".join(model.keywords[0].split())
    assert sent.isascii() and sent.isprintable()
    if len(sent) <= dataforseo.MAX_KEYWORD_CHARS and len(sent.split()) <= 10:
        assert dataforseo.sendable(model.keywords[0])


@CHEAP
@given(count=st.integers(0, 260))
def test_the_keyword_count_limits_have_their_messages(count: int) -> None:
    """1..200 keywords; none and too many each have the original's message."""
    found = messages(KeywordSearch, {"keywords": ["k"] * count, "matchType": "phrase"})
    if count == 0:
        assert found == ["At least one keyword is required"]
    elif count > 200:
        assert found == ["Maximum 200 keywords allowed"]
    else:
        assert found is None


@PURE
@given(
    keywords=st.lists(valid_keywords(), min_size=1, max_size=40),
    match_type=st.sampled_from(["phrase", "exact"]),
    location=st.one_of(st.none(), st.sampled_from(LOCATION_CODES), st.text(max_size=6)),
    language=st.one_of(st.none(), st.from_regex(LANGUAGE, fullmatch=True), st.text(max_size=6)),
    location_pad=padding,
    language_pad=padding,
    provider=st.sampled_from(["mock", "dataforseo", "google-ads"]),
)
def test_location_and_language_follow_the_documented_sets(
    keywords: list[str],
    match_type: str,
    location: str | None,
    language: str | None,
    location_pad: str,
    language_pad: str,
    provider: str,
) -> None:
    """Location: one of the 8 codes (case-sensitive) after trimming, blank means absent.
    Language: `xx` or `xx-XX` after trimming, blank means absent, and one the configured
    provider has keyword data in (DataForSEO's list: the tag or its primary subtag is listed;
    Google Ads: en, en-US, en-GB, es, fr, de). Order and duplicates of the keywords are kept; a
    valid body re-validates to itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", "postgresql://unused@localhost/unused")
        patch.setenv("KEYWORD_API_PROVIDER", provider)
        config.get_settings.cache_clear()
        try:
            check_location_and_language(
                keywords, match_type, location, language, location_pad, language_pad, provider
            )
        finally:
            config.get_settings.cache_clear()


def check_location_and_language(
    keywords: list[str],
    match_type: str,
    location: str | None,
    language: str | None,
    location_pad: str,
    language_pad: str,
    provider: str,
) -> None:
    body: dict[str, Any] = {"keywords": keywords, "matchType": match_type}
    if location is not None:
        body["location"] = location_pad + location + location_pad
    if language is not None:
        body["language"] = language_pad + language + language_pad
    expected_location = js_trim(location) or None if location is not None else None
    expected_language = js_trim(language) or None if language is not None else None
    expected: list[str] = []
    if expected_location is not None and expected_location not in LOCATION_CODES:
        expected.append(LOCATION_MESSAGE)
    if expected_language is not None and not LANGUAGE.fullmatch(expected_language):
        expected.append(LANGUAGE_MESSAGE)
    elif expected_language is not None and not (
        expected_language in GOOGLE_ADS_LANGUAGES
        if provider == "google-ads"
        else provider_language(expected_language)
    ):
        expected.append(f"Language {expected_language} is not available for keyword data")
    found = messages(KeywordSearch, body)
    if expected:
        assert found == expected
        return
    model = KeywordSearch.model_validate(body)
    assert (model.location, model.language) == (expected_location, expected_language)
    assert model.keywords == [search_keyword(k) for k in keywords]
    assert revalidates_to_itself(model)


# --- POST/PUT /api/searches bodies (docs/original-app.md#saved-searches-apisearches)
# ---------------------------------------------------


def js_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2  # JS `length`: an emoji counts 2


def trimmed_length_verdict(raw: str, maximum: int, empty: str | None, too_long: str) -> str | None:
    text = js_trim(raw)
    if empty is not None and not text:
        return empty
    return too_long if js_units(text) > maximum else None


NUL_REFUSAL = "cannot contain NUL (\\u0000) characters"


def refused_for_nul(found: list[str] | None, *texts: str | None) -> bool:
    """PostgreSQL text cannot hold NUL: a saved-search body with one anywhere gets a single
    message naming the field, before any other rule. True when that case applied."""
    if not any(text is not None and "\x00" in text for text in texts):
        return False
    assert found is not None and len(found) == 1 and found[0].endswith(NUL_REFUSAL), found
    return True


def search_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Coffee",
        "searchParams": {"keywords": ["espresso"], "matchType": "exact", "location": "US"},
    }
    body.update(overrides)
    return body


text_near_limits = st.one_of(
    st.text(max_size=20),
    st.builds(lambda pad, n, c: pad + c * n + pad, padding, st.integers(0, 520), allowed_char),
    st.text(alphabet=st.one_of(allowed_char, awkward_char), min_size=90, max_size=110),
)


@PURE
@given(name=text_near_limits, description=st.one_of(st.none(), text_near_limits))
@example(name="\ufeff", description=None)  # only JS whitespace: "Name is required"
@example(name="\x1cA\x1c", description=None)  # separators are content in JS: kept
def test_saved_search_name_and_description_limits(name: str, description: str | None) -> None:
    """Name: trimmed 1..100 ("Name is required" / "Name too long (max 100 chars)"); description:
    trimmed ≤ 500 ("Description too long"). Accepted values are stored trimmed."""
    body = search_body(
        name=name, **({"description": description} if description is not None else {})
    )
    expected = [
        message
        for message in (
            trimmed_length_verdict(name, 100, "Name is required", "Name too long (max 100 chars)"),
            None
            if description is None
            else trimmed_length_verdict(description, 500, None, "Description too long"),
        )
        if message is not None
    ]
    found = messages(CreateSavedSearch, body)
    if refused_for_nul(found, name, description):
        return
    if expected:
        assert found == expected
        return
    model = CreateSavedSearch.model_validate(body)
    assert model.name == js_trim(name)
    assert model.description == (None if description is None else js_trim(description))
    assert revalidates_to_itself(model)


@PURE
@given(name=st.one_of(st.none(), text_near_limits))
def test_update_name_limits_use_the_short_message(name: str | None) -> None:
    """PUT: a name, when given, is trimmed 1..100 with the update schema's own wording."""
    found = messages(UpdateSavedSearch, {} if name is None else {"name": name})
    if refused_for_nul(found, name):
        return
    verdict = (
        None
        if name is None
        else trimmed_length_verdict(name, 100, "Name is required", "Name too long")
    )
    assert found == (None if verdict is None else [verdict])


@PURE
@given(keywords=st.lists(any_keyword, max_size=6), extra=st.integers(0, 210))
def test_saved_search_keywords_have_no_charset_but_the_length_and_count_rules(
    keywords: list[str], extra: int
) -> None:
    """Saved-search keywords: each trimmed 1..100 (any characters), 1..200 of them."""
    keywords = keywords + ["k"] * (extra if extra > 195 else 0)
    params = {"keywords": keywords, "matchType": "phrase", "location": "US"}
    found = messages(CreateSavedSearch, search_body(searchParams=params))
    if refused_for_nul(found, *keywords):
        return
    per_keyword = [
        m
        for m in (trimmed_length_verdict(k, 100, KEYWORD_EMPTY, KEYWORD_LONG) for k in keywords)
        if m is not None
    ]
    if not keywords:
        assert found == ["At least one keyword required"]
    elif per_keyword:  # one issue per bad keyword; the count is checked only once they pass
        assert found is not None and sorted(found) == sorted(per_keyword)
    elif len(keywords) > 200:
        assert found == ["Maximum 200 keywords"]
    else:
        assert found is None
        model = CreateSavedSearch.model_validate(search_body(searchParams=params))
        assert model.searchParams.keywords == [js_trim(k) for k in keywords]
        assert revalidates_to_itself(model)


# Untrimmed text of BMP and astral characters (most emoji, CJK Extension B), so code points and
# UTF-16 code units part ways near the limits.
mixed_width = st.text(
    alphabet=st.sampled_from(["a", " ", "\u6771", "\U0001f600", "\U00020000"]), max_size=40
)


@PURE
@given(location=mixed_width, language=st.one_of(st.none(), mixed_width))
@example(location="\U0001f600", language="a" + "\U0001f600" * 17)  # 2 and 35 units: accepted
@example(location="\U0001f600" * 3, language="\U0001f600" * 18)  # 6 and 36 units: refused
def test_saved_search_location_and_language_lengths_are_js_lengths(
    location: str, language: str | None
) -> None:
    """`searchParams.location` 2..5 and `language` at most 35, in UTF-16 code units like every
    other length of the route; neither is trimmed. Accepted values are stored as sent."""
    params = {"keywords": ["espresso"], "matchType": "exact", "location": location}
    if language is not None:
        params["language"] = language
    expected = []
    if js_units(location) < 2:
        expected.append("String should have at least 2 characters")
    elif js_units(location) > 5:
        expected.append("String should have at most 5 characters")
    if language is not None and js_units(language) > 35:
        expected.append("String should have at most 35 characters")
    found = messages(CreateSavedSearch, search_body(searchParams=params))
    if expected:
        assert found == expected
        return
    model = CreateSavedSearch.model_validate(search_body(searchParams=params))
    assert (model.searchParams.location, model.searchParams.language) == (location, language)
    assert revalidates_to_itself(model)


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e9)


@PURE
@given(
    volume=finite,
    difficulty=finite,
    cpc=finite,
    month=st.integers(-1, 14),
    year=st.integers(1990, 2110),
    trend_volume=finite,
)
def test_saved_results_numbers_follow_the_write_rules(
    volume: float, difficulty: float, cpc: float, month: int, year: int, trend_volume: float
) -> None:
    """searchVolume ≥ 0 (any number), difficulty 0..100, cpc ≥ 0, trend month 1..12 and year
    2000..2100 (integers), trend volume ≥ 0. Accepted results re-validate to themselves."""
    result = {
        "keyword": "espresso", "searchVolume": volume, "difficulty": difficulty, "cpc": cpc,
        "competition": "low", "intent": "commercial",
        "trends": [{"month": month, "year": year, "volume": trend_volume}],
    }  # fmt: skip
    ok = (
        volume >= 0
        and 0 <= difficulty <= 100
        and cpc >= 0
        and 1 <= month <= 12
        and 2000 <= year <= 2100
        and trend_volume >= 0
    )
    body = search_body(results=[result])
    found = messages(CreateSavedSearch, body)
    assert (found is None) == ok, found
    if ok:
        assert revalidates_to_itself(CreateSavedSearch.model_validate(body))


SEARCH_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # ASCII only: no other script's letters


@PURE
@given(
    raw=st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.from_regex(LEGACY_ID_RE, fullmatch=True),
        st.from_regex(r"c[a-z0-9]{24}", fullmatch=True),  # Prisma cuid()
        st.from_regex(r"[a-z][a-z0-9]{23}", fullmatch=True),  # cuid2
        st.text(max_size=70),
    ),
    pad=padding,
)
def test_search_ids_have_a_safe_shape_and_normalise_once(raw: str, pad: str) -> None:
    """An id is accepted ⇔ trimmed it is 1-64 ASCII letters, digits, `-` or `_` (so every
    writer's form: UUID, legacy, cuid, cuid2); the accepted value is the trimmed id, and
    normalising it again changes nothing."""
    candidate = pad + raw + pad
    accepted = valid_search_id(candidate)
    trimmed = js_trim(candidate)
    assert (accepted is not None) == bool(SEARCH_ID_RE.fullmatch(trimmed))
    if UUID_RE.fullmatch(trimmed) or LEGACY_ID_RE.fullmatch(trimmed):
        assert accepted == trimmed
    if accepted is not None:
        assert accepted == trimmed and valid_search_id(accepted) == accepted


# --- /api/history query rules -------------------------------------------------------------------

keyset_times = st.datetimes(  # year 1 too: a legacy writer's zero time (Go's, .NET's)
    min_value=datetime(1, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))
row_ids = st.from_regex(re.compile(r"[A-Za-z0-9_-]{1,64}"), fullmatch=True)


@PURE
@given(searched_at=keyset_times, row_id=row_ids)
def test_a_cursor_round_trips(searched_at: datetime, row_id: str) -> None:
    assert decode_cursor(encode_cursor((searched_at, row_id))) == (searched_at, row_id)


@PURE
@given(
    cursor=st.one_of(
        st.text(max_size=80),
        st.builds(encode_cursor, st.tuples(keyset_times, row_ids)).map(lambda c: c + "="),
        st.builds(
            lambda c, i, ch: c[:i] + ch + c[i + 1 :],
            st.builds(encode_cursor, st.tuples(keyset_times, row_ids)),
            st.integers(0, 40),
            st.sampled_from("AaZz09-_+/="),
        ),
    )
)
def test_only_canonical_cursors_are_accepted(cursor: str) -> None:
    """Whatever decodes is exactly what `encode_cursor` would have produced: one spelling per
    cursor, and anything else is the 400 `Invalid cursor`."""
    try:
        keyset = decode_cursor(cursor)
    except ApiError as error:
        assert (error.status, error.message) == (400, "Invalid cursor")
        return
    assert encode_cursor(keyset) == cursor


@CHEAP
@given(raw=st.one_of(st.none(), st.text(max_size=8), st.integers(-5, 120).map(str)), pad=padding)
def test_bounded_ints_accept_only_plain_digits_in_range(raw: str | None, pad: str) -> None:
    """`limit`/`days`: absent → the default; else 1..6 ASCII digits within the bounds (no sign,
    decimals, exponents or other scripts' digits); anything else is a 400 naming the range."""
    value = None if raw is None else pad + raw + pad
    digits = None if value is None else value.strip()
    ok = digits is None or (
        re.fullmatch(r"[0-9]{1,6}", digits) is not None and 1 <= int(digits) <= 100
    )
    try:
        parsed = bounded_int(value, name="limit", default=20, minimum=1, maximum=100)
    except ApiError as error:
        assert not ok
        assert (error.status, error.message) == (400, "limit must be a whole number from 1 to 100")
        return
    assert ok and parsed == (20 if digits is None else int(digits))


# --- quota arithmetic: pure parts -----------------------------------------------------------

offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31), timezones=offsets
)
LIMITS = Limits(trial=20, pro=30, enterprise=45)
# Small limits for the stateful test, so sequences keep running into them.
TIGHT = Limits(trial=6, pro=8, enterprise=11)


@PURE
@given(moment=moments)
@example(moment=datetime(2026, 11, 30, 23, 30, tzinfo=timezone(timedelta(hours=-2))))  # Dec UTC
@example(moment=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC))
def test_month_boundaries_are_utc_calendar_months(moment: datetime) -> None:
    """The month a counter belongs to is `moment`'s UTC month, whatever its offset: it starts
    at 00:00 UTC on the 1st, contains the moment, and the next one follows 28..31 days later."""
    start, following = month_start(moment), next_month_start(moment)
    assert start <= moment < following
    for boundary in (start, following):
        assert boundary.utcoffset() == timedelta(0)
        assert (boundary.day, boundary.hour, boundary.minute, boundary.second) == (1, 0, 0, 0)
        assert boundary.microsecond == 0
    assert timedelta(days=28) <= following - start <= timedelta(days=31)
    assert month_start(start) == start and month_start(following) == following
    assert (start.year, start.month) == (moment.astimezone(UTC).year, moment.astimezone(UTC).month)
    assert keys.usage("u", moment) == f"usage:u:{start:%Y-%m}"


@PURE
@given(moment=moments)
@example(moment=datetime(2026, 1, 31, 23, 59, 59, 1000, tzinfo=UTC))
def test_a_monthly_quota_retry_after_is_never_early_never_late_never_zero(moment: datetime) -> None:
    """The quota 429's `Retry-After`: the seconds to the next UTC month, rounded up, at least 1
    (a client waiting it out retries in the new month, at most a second after it began)."""
    following = next_month_start(moment)
    wait = timedelta(seconds=seconds_until(following, moment))
    assert wait >= timedelta(seconds=1)
    assert following <= moment + wait < following + timedelta(seconds=1)


@PURE
@given(moment=moments)
def test_legacy_counter_ttls_end_at_the_boundary_with_an_hour_floor(moment: datetime) -> None:
    """The legacy monthly counter lives until the next UTC month, never less than an hour."""
    ttl = counter_ttl(next_month_start(moment), moment)
    left = (next_month_start(moment) - moment).total_seconds()
    assert ttl >= keys.MIN_COUNTER_TTL_S
    assert ttl == max(int(left), keys.MIN_COUNTER_TTL_S)


@st.composite
def stored_users(draw: st.DrawFn) -> User:
    """A user row as the repository would have left it (transient, not in a session)."""
    created = draw(moments).astimezone(UTC)
    return User(
        id="u",
        email="u@example.com",
        tier=draw(st.sampled_from(UserTier)),
        keyword_searches_this_month=draw(st.integers(0, 100)),
        keyword_searches_total=draw(st.integers(0, 200)),
        monthly_reset_at=created + draw(st.timedeltas(timedelta(0), timedelta(days=90))),
        created_at=created,
        trial_started_at=draw(st.one_of(st.none(), st.just(created))),
        trial_ends_at=draw(
            st.one_of(st.none(), st.just(created + users.TRIAL_LENGTH), st.just(created))
        ),
    )


@PURE
@given(user=stored_users(), later=st.timedeltas(timedelta(0), timedelta(days=120)))
def test_usage_view_applies_the_tier_rule(user: User, later: timedelta) -> None:
    """FREE counts the whole trial against the trial limit and ends with the trial; paid tiers
    count the UTC month (0 once a new month began) against their monthly limit and reset at the
    next month. Remaining is never negative and never more than the limit."""
    now = user.monthly_reset_at + later
    created = user.created_at
    view = usage_view(user, LIMITS, now)
    assert 0 <= view.remaining <= view.limit
    assert view.remaining == max(0, view.limit - view.used)
    stale = user.monthly_reset_at < month_start(now)
    assert this_month(user, now) == (0 if stale else user.keyword_searches_this_month)
    if user.tier is UserTier.FREE:
        assert (view.used, view.limit, view.resets_at) == (
            user.keyword_searches_total,
            LIMITS.trial,
            None,
        )
        # A row without trialEndsAt (Prisma's defaults) gets the trial length from its start.
        ends = user.trial_ends_at or (user.trial_started_at or created) + users.TRIAL_LENGTH
        assert view.trial_expired == (ends < now)
    else:
        expected_limit = LIMITS.pro if user.tier is UserTier.PRO else LIMITS.enterprise
        assert (view.used, view.limit) == (this_month(user, now), expected_limit)
        assert view.resets_at == next_month_start(now) and not view.trial_expired


@CHEAP
@given(used=st.integers(-5, 10_000), limit=st.integers(0, 10_000))
def test_remaining_is_never_negative(used: int, limit: int) -> None:
    view = UsageView(used=used, limit=limit, resets_at=None, trial_expired=False)
    assert view.remaining >= 0 and (view.remaining == limit - used or used >= limit)


@CHEAP
@given(trial=st.integers(0, 10**6), pro=st.integers(0, 10**6), enterprise=st.integers(0, 10**6))
def test_each_tier_has_its_own_limit(trial: int, pro: int, enterprise: int) -> None:
    limits = Limits(trial=trial, pro=pro, enterprise=enterprise)
    assert [limits.for_tier(t) for t in UserTier] == [trial, pro, enterprise]


@pytest.fixture
def any_database_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings for code that reads them (the tombstone keys' HMAC key) but no database."""
    from shared.config import get_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://keyflash@127.0.0.1/keyflash")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@settings(CHEAP, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(now=moments, tier=st.sampled_from(UserTier))
def test_the_trial_window_is_seven_days_from_creation_for_free_users_only(
    any_database_url: None, now: datetime, tier: UserTier
) -> None:
    params = users._new_user_params("u", "u@example.com", tier, now)
    at = now.astimezone(UTC).replace(tzinfo=None)  # as the driver takes it
    if tier is UserTier.FREE:
        assert params["p_trial_started_at"] == at
        assert params["p_trial_ends_at"] - params["p_trial_started_at"] == timedelta(days=7)
    else:
        assert params["p_trial_started_at"] is None and params["p_trial_ends_at"] is None
    assert params["p_now"] == at  # the monthly reset, creation and update times


# --- quota arithmetic: the SQL, against a model ------------------------------------------------


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """The quota statements do not depend on the lane: the direct one is enough here."""
    return direct_database_url


@dataclass(frozen=True)
class Counters:
    """What the `users` row should hold, by the documented rules."""

    tier: UserTier
    this_month: int
    total: int
    monthly_reset_at: datetime
    trial_ends_at: datetime


def model_reserve(
    state: Counters | None, count: int, enforce: bool, now: datetime
) -> tuple[Counters, str]:
    """`reserve_keywords` by the rules: get-or-create as a FREE trial, then count `count`
    keywords when the tier allows it (or always, when not enforced); else change nothing."""
    if state is None:
        fits = not enforce or count <= TIGHT.trial
        first = count if fits else 0
        created = Counters(UserTier.FREE, first, first, now, now + timedelta(days=7))
        return created, "ok" if fits else "quota"
    stale = state.monthly_reset_at < month_start(now)
    monthly = 0 if stale else state.this_month
    if state.tier is UserTier.FREE:
        allowed = state.trial_ends_at >= now and state.total + count <= TIGHT.trial
    else:
        allowed = monthly + count <= TIGHT.for_tier(state.tier)
    if enforce and not allowed:
        expired = state.tier is UserTier.FREE and state.trial_ends_at < now
        return state, "trial_expired" if expired else "quota"
    return replace(
        state,
        this_month=monthly + count,
        total=state.total + count,
        monthly_reset_at=now if stale else state.monthly_reset_at,
    ), "ok"


def model_release(state: Counters, count: int, reserved_at: datetime) -> Counters:
    """Give back: the total always (not below 0), the month only while it is still the
    reservation's month."""
    same_month = state.monthly_reset_at < next_month_start(reserved_at)
    return replace(
        state,
        total=max(state.total - count, 0),
        this_month=max(state.this_month - count, 0) if same_month else state.this_month,
    )


RESERVATION_TTL = timedelta(minutes=5)
# Starts a minute before a month ends, so small steps cross the boundary and big ones months.
START = datetime(2026, 1, 31, 23, 59, 0, tzinfo=UTC)
steps = st.one_of(
    st.integers(0, 120_000), st.integers(0, 9 * 86_400_000), st.integers(0, 40 * 86_400_000)
).map(lambda ms: timedelta(milliseconds=ms))


class QuotaMachine(RuleBasedStateMachine):
    """Random sequences of reservations, releases, expiry reconciliation, tier changes, the
    monthly reset cron and the passing of time on one real `users` row; after every step the
    row equals the model and the reservation rows are exactly the outstanding reservations."""

    def __init__(self) -> None:
        super().__init__()
        self.user_id = f"prop_{uuid.uuid4().hex[:16]}"
        self.now = START
        self.state: Counters | None = None
        self.reservations: list[tuple[str, int, datetime]] = []  # (id, keywords, reserved at)

    def _reserve(self, count: int, enforce: bool) -> tuple[str, users.Usage | None, str]:
        hold = reservations.Hold(uuid.uuid4().hex, self.now + RESERVATION_TTL)
        try:
            usage = db.run(
                lambda conn: users.reserve_keywords(
                    conn, self.user_id, f"{self.user_id}@example.com", count,
                    limits=TIGHT, enforce=enforce, now=self.now, hold=hold,
                )
            )  # fmt: skip
        except TrialExpiredError:
            return "trial_expired", None, hold.id
        except QuotaExceededError:
            return "quota", None, hold.id
        return "ok", usage, hold.id

    @rule(count=st.integers(0, 8), enforce=st.booleans())
    def reserve(self, count: int, enforce: bool) -> None:
        self._check_reserve(count, enforce)

    @precondition(lambda self: self.state is not None)
    @rule(delta=st.sampled_from([-1, 0, 1]))
    def reserve_at_the_limit(self, delta: int) -> None:
        """Ask for exactly what is left (or one less, one more), enforced: the boundary."""
        view = usage_view(self._row(), TIGHT, self.now)
        self._check_reserve(max(0, view.limit - view.used + delta), enforce=True)

    def _check_reserve(self, count: int, enforce: bool) -> None:
        expected, outcome = model_reserve(self.state, count, enforce, self.now)
        found, usage, reservation_id = self._reserve(count, enforce)
        assert found == outcome
        self.state = expected
        if usage is not None:
            assert (usage.this_month, usage.total, usage.tier) == (
                expected.this_month,
                expected.total,
                expected.tier,
            )
            self.reservations.append((reservation_id, count, self.now))
            if enforce:  # an enforced reservation never takes the user past the limit
                view = usage_view(self._row(), TIGHT, self.now)
                assert view.used <= view.limit

    @precondition(lambda self: self.state is not None)
    @rule(count=st.integers(0, 8))
    def reserve_then_release_changes_nothing(self, count: int) -> None:
        """A reservation given straight back leaves the usage as the user sees it unchanged."""
        before = usage_view(self._row(), TIGHT, self.now)
        found, _, reservation_id = self._reserve(count, enforce=False)
        assert found == "ok"
        given = db.run(lambda conn: reservations.release(conn, reservation_id, now=self.now))
        assert given == count
        after = usage_view(self._row(), TIGHT, self.now)
        assert (after.used, after.remaining) == (before.used, before.remaining)
        reserved, _ = model_reserve(self.state, count, False, self.now)
        self.state = model_release(reserved, count, self.now)

    @precondition(lambda self: bool(self.reservations))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.reservations) - 1), label="reservation")
        reservation_id, count, reserved_at = self.reservations.pop(index)
        assert (
            db.run(lambda conn: reservations.release(conn, reservation_id, now=self.now)) == count
        )
        assert db.run(lambda conn: reservations.release(conn, reservation_id, now=self.now)) == 0
        assert self.state is not None
        self.state = model_release(self.state, count, reserved_at)

    @precondition(lambda self: bool(self.reservations))
    @rule()
    def reconcile_expired(self) -> None:
        """The cron's statement gives back exactly the reservations past their expiry."""
        db.run(lambda conn: reservations.release_expired(conn, now=self.now, limit=1_000))
        for held in list(self.reservations):
            if held[2] + RESERVATION_TTL < self.now:
                self.reservations.remove(held)
                assert self.state is not None
                self.state = model_release(self.state, held[1], held[2])

    @rule(step=steps)
    def time_passes(self, step: timedelta) -> None:
        self.now += step

    @precondition(lambda self: self.state is not None)
    @rule(tier=st.sampled_from(UserTier))
    def change_tier(self, tier: UserTier) -> None:
        db.run(lambda conn: users.update_user(conn, self.user_id, tier=tier, now=self.now))
        assert self.state is not None
        self.state = replace(self.state, tier=tier)

    @precondition(lambda self: self.state is not None)
    @rule()
    def monthly_reset_cron(self) -> None:
        """The cron's reset agrees with the lazy one: a stale month restarts at 0, now."""
        db.run(
            lambda conn: users.reset_stale_monthly_usage(
                conn, after_id=self.user_id[:-1], limit=1_000, now=self.now
            )
        )
        assert self.state is not None
        if self.state.monthly_reset_at < month_start(self.now):
            self.state = replace(self.state, this_month=0, monthly_reset_at=self.now)

    def _row(self) -> User:
        row = db.run(lambda conn: users.get(conn, self.user_id))
        assert row is not None
        return row

    @invariant()
    def the_row_matches_the_model(self) -> None:
        if self.state is None:
            assert db.run(lambda conn: users.get(conn, self.user_id)) is None
            return
        row = self._row()
        assert row.trial_ends_at is not None  # every row here began as a FREE trial
        stored = Counters(
            row.tier,
            row.keyword_searches_this_month,
            row.keyword_searches_total,
            row.monthly_reset_at,
            row.trial_ends_at,
        )
        assert stored == self.state
        assert row.keyword_searches_this_month >= 0 and row.keyword_searches_total >= 0
        assert usage_view(row, TIGHT, self.now).remaining >= 0
        held = db.run(
            lambda conn: conn.session.execute(
                select(KeywordReservation.id, KeywordReservation.keywords).where(
                    KeywordReservation.user_id == self.user_id
                )
            ).all()
        )
        assert sorted(map(tuple, held)) == sorted((i, n) for i, n, _ in self.reservations)


def test_quota_statements_match_the_model_on_the_real_database(db_env: str) -> None:
    """Reserve (enforced or not), release, expiry reconciliation, tier changes, the reset cron
    and time crossing UTC month boundaries, in random order on a real row: counters always
    equal the model's, and a reservation row exists exactly while its keywords are held."""
    run_state_machine_as_test(
        QuotaMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
