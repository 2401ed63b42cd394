"""Feature flags: rollout hashing, evaluation, the per-container cache, GET /api/flags and the
admin CRUD (/api/admin/flags, /api/admin/flags/{key}) on a real Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mmh3
import psycopg
import pytest
from sqlalchemy import event

from shared import config, db, flags
from shared.clock import iso_ms, utcnow
from shared.flags import FlagCache, FlagRule, Loaded
from shared.repositories import feature_flags
from tests.support.http import Caller, Keys

ROOT = Path(__file__).resolve().parents[2]
USERS = [f"user_{i}" for i in range(10_000)]


@pytest.fixture(autouse=True)
def fresh_flag_cache() -> Iterator[None]:
    """The container's snapshot must not carry flags from one test into the next."""
    flags.invalidate_cache()
    yield
    flags.invalidate_cache()


def rule(
    percent: int, *, key: str = "new-ui", enabled: bool = True, allowed: tuple[str, ...] = ()
) -> FlagRule:
    return FlagRule(key, enabled, percent, frozenset(allowed))


# --- hashing --------------------------------------------------------------------------------


def unleash_normalized(flag_key: str, user_id: str) -> int:
    """UnleashClient's `normalized_hash(identifier, activation_group)`, written out."""
    return int(mmh3.hash(f"{flag_key}:{user_id}", signed=False)) % 100 + 1


def test_buckets_match_unleash_vectors_and_formula() -> None:
    assert unleash_normalized("gr1", "123") == 73  # Unleash client-specification vector
    assert flags.bucket("gr1", "123") == 72
    assert unleash_normalized("groupX", "999") == 25
    assert flags.bucket("groupX", "999") == 24
    for percent in (0, 1, 25, 50, 99, 100):
        for user_id in USERS[:2000]:
            unleash_on = unleash_normalized("new-ui", user_id) <= percent
            assert flags.is_enabled(rule(percent), user_id) is unleash_on


def test_a_user_id_no_string_encoding_takes_is_refused_not_a_crash() -> None:
    """mmh3 5.x dies (SIGSEGV) hashing a str with a lone surrogate; run where a crash shows."""
    script = (
        "from shared.flags import bucket\n"
        "try:\n    bucket('new-ui', 'user_\\ud800')\n"
        "except UnicodeEncodeError:\n    print('refused')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "refused"), done.stderr


def test_buckets_are_stable_across_processes() -> None:
    """No per-process salt (unlike Python's hash()): another interpreter agrees."""
    sample = USERS[:200]
    script = (
        "import json, sys; from shared.flags import bucket; "
        "print(json.dumps([bucket('new-ui', u) for u in json.loads(sys.stdin.read())]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(sample), capture_output=True,
        text=True, cwd=ROOT, env=env, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out) == [flags.bucket("new-ui", u) for u in sample]
    assert [flags.bucket("new-ui", u) for u in sample] == [
        flags.bucket("new-ui", u) for u in sample
    ]


def test_rollout_is_monotonic() -> None:
    """Whoever has the flag at p % keeps it at every higher percentage."""
    previous: set[str] = set()
    for percent in range(0, 101):
        enabled = {u for u in USERS if flags.is_enabled(rule(percent), u)}
        assert previous <= enabled, percent
        previous = enabled
    at_20 = {u for u in USERS if flags.is_enabled(rule(20), u)}
    at_30 = {u for u in USERS if flags.is_enabled(rule(30), u)}
    assert at_20 < at_30


def test_rollout_is_uniform() -> None:
    for percent in (1, 10, 25, 50, 75):
        share = sum(flags.is_enabled(rule(percent), u) for u in USERS) / len(USERS)
        assert abs(share - percent / 100) <= 0.02, (percent, share)
    counts = [0] * 100
    for user_id in USERS:
        counts[flags.bucket("new-ui", user_id)] += 1
    assert min(counts) >= 60 and max(counts) <= 140  # ~100 per bucket


def test_cohorts_are_independent_across_flags() -> None:
    a = {u for u in USERS if flags.is_enabled(rule(50, key="flag-a"), u)}
    b = {u for u in USERS if flags.is_enabled(rule(50, key="flag-b"), u)}
    assert abs(len(a & b) / len(USERS) - 0.25) <= 0.02


# --- evaluation rules -----------------------------------------------------------------------


def test_disabled_is_off_even_for_allowed_users_and_full_rollout() -> None:
    off = rule(100, enabled=False, allowed=("user_1",))
    assert not flags.is_enabled(off, "user_1") and not flags.is_enabled(off, "user_2")


def test_allowed_users_get_the_flag_at_zero_percent() -> None:
    allowed = rule(0, allowed=("user_1",))
    assert flags.is_enabled(allowed, "user_1")
    assert not flags.is_enabled(allowed, "user_2")


def test_edges_and_anonymous_callers() -> None:
    assert all(flags.is_enabled(rule(100), u) for u in USERS[:500])
    assert not any(flags.is_enabled(rule(0), u) for u in USERS[:500])
    assert flags.is_enabled(rule(100), None)  # anonymous: only at 100 %
    assert not flags.is_enabled(rule(99), None)
    assert flags.evaluate([rule(100, key="a"), rule(0, key="b")], None) == {"a": True, "b": False}


# --- the per-container cache ----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_honours_the_ttl_with_an_injected_clock() -> None:
    loads: list[int] = []

    def loader(at_least: int | None) -> Loaded:
        loads.append(1)
        return Loaded((rule(len(loads) * 10),))

    clock = FakeClock()
    cache = FlagCache(loader, ttl=lambda: 30.0, clock=clock)
    assert cache.rules()[0].rollout_percent == 10
    clock.now += 29.9
    assert cache.rules()[0].rollout_percent == 10 and len(loads) == 1
    clock.now += 0.1
    assert cache.rules()[0].rollout_percent == 20 and len(loads) == 2
    cache.invalidate()
    assert cache.rules()[0].rollout_percent == 30
    no_cache = FlagCache(loader, ttl=lambda: 0.0, clock=clock)
    no_cache.rules()
    no_cache.rules()
    assert len(loads) == 5


def test_a_failed_reload_keeps_serving_the_last_snapshot() -> None:
    outcomes: list[Any] = [(rule(10),), RuntimeError("database down"), (rule(20),)]

    def loader(at_least: int | None) -> Loaded:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return Loaded(outcome)

    clock = FakeClock()
    cache = FlagCache(loader, ttl=lambda: 30.0, clock=clock)
    assert cache.rules()[0].rollout_percent == 10
    clock.now += 31
    assert cache.rules()[0].rollout_percent == 10  # stale, served
    clock.now += flags.RELOAD_PAUSE_S - 0.1
    assert cache.rules()[0].rollout_percent == 10  # not retried in the pause
    clock.now += 0.1
    assert cache.rules()[0].rollout_percent == 20  # retried after it
    cold = FlagCache(lambda _: (_ for _ in ()).throw(RuntimeError("down")), clock=clock)
    with pytest.raises(RuntimeError):
        cold.rules()  # nothing to fall back on
    with pytest.raises(db.DatabaseUnavailableError):
        cold.rules()  # in the pause: a 503 at once, no load


def test_a_load_older_than_the_snapshot_does_not_replace_it() -> None:
    """A lagging replica's load (an older position) keeps the newer snapshot, for another TTL:
    it holds all the replica has."""
    outcomes = [Loaded((rule(10),), 200), Loaded((rule(20),), 100), Loaded((rule(30),), 300)]
    clock = FakeClock()
    cache = FlagCache(lambda _: outcomes.pop(0), ttl=lambda: 30.0, clock=clock)
    assert cache.rules()[0].rollout_percent == 10
    clock.now += 30
    assert cache.rules()[0].rollout_percent == 10  # reloaded, older: kept
    clock.now += 29
    assert cache.rules()[0].rollout_percent == 10 and len(outcomes) == 1  # its TTL restarted
    clock.now += 1
    assert cache.rules()[0].rollout_percent == 30


def test_a_primary_load_replaces_the_snapshot_whatever_it_proves() -> None:
    """A primary's load with a transaction in flight proves no position (0), yet is the newest
    data there is: it replaces the snapshot, and a token past 0 reloads."""
    outcomes = [Loaded((rule(10),), 200), Loaded((rule(20),), 0, primary=True)]
    clock = FakeClock()
    cache = FlagCache(lambda _: outcomes.pop(0), ttl=lambda: 30.0, clock=clock)
    assert cache.rules()[0].rollout_percent == 10
    clock.now += 30
    assert cache.rules()[0].rollout_percent == 20


@pytest.mark.usefixtures("db_env")
def test_flags_load_in_one_query() -> None:
    for key in ("a-flag", "b-flag", "c-flag"):
        db.run(lambda s, k=key: feature_flags.upsert(s, k, feature_flags.FlagValues(enabled=True)))
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        loaded = flags.load_rules()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert [r.key for r in loaded.rules] == ["a-flag", "b-flag", "c-flag"]
    assert len(statements) == 1


# --- GET /api/flags -------------------------------------------------------------------------


def put_flag(key: str, **values: Any) -> None:
    db.run(lambda conn: feature_flags.upsert(conn, key, feature_flags.FlagValues(**values)))


def everyone_bucket_below(key: str, percent: int) -> tuple[str, str]:
    """A user inside and one outside a `percent` rollout of `key`."""
    inside = next(u for u in USERS if flags.bucket(key, u) < percent)
    outside = next(u for u in USERS if flags.bucket(key, u) >= percent)
    return inside, outside


def test_get_flags_evaluates_for_the_caller(call: Caller) -> None:
    put_flag("half", enabled=True, rollout_percent=50)
    put_flag("everyone", enabled=True, rollout_percent=100)
    put_flag("off", enabled=False, rollout_percent=100)
    put_flag("vip", enabled=True, rollout_percent=0, allowed_users=("user_vip",))
    inside, outside = everyone_bucket_below("half", 50)
    for user_id, expected in [
        (inside, {"half": True, "everyone": True, "off": False, "vip": False}),
        (outside, {"half": False, "everyone": True, "off": False, "vip": False}),
        ("user_vip", {"half": flags.bucket("half", "user_vip") < 50, "everyone": True,
                      "off": False, "vip": True}),
    ]:  # fmt: skip
        result = call("flags", "GET", "/api/flags", user=user_id)
        assert result.status == 200, result.text
        assert result.json == {"flags": expected}
        assert result.headers["cache-control"] == "private, no-cache, no-store, must-revalidate"
    anonymous = call("flags", "GET", "/api/flags")
    assert anonymous.json == {"flags": {"half": False, "everyone": True, "off": False,
                                        "vip": False}}  # fmt: skip
    bad_token = call("flags", "GET", "/api/flags", headers={"authorization": "Bearer nope"})
    assert bad_token.json == anonymous.json
    unstorable = "Bearer " + call.token("user_\ud800")  # signed; no row could hold its sub
    refused = call("flags", "GET", "/api/flags", headers={"authorization": unstorable})
    assert (refused.status, refused.json) == (200, anonymous.json)


def test_get_flags_uses_the_snapshot_until_the_ttl_passes(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(flags, "_cache", FlagCache(clock=clock))
    call = Caller("lambda_v2", api_env)
    put_flag("beta", enabled=True, rollout_percent=100)
    assert call("flags", "GET", "/api/flags", user="u1").json == {"flags": {"beta": True}}
    admin_conn.execute("UPDATE feature_flags SET enabled = false WHERE key = %s", ("beta",))
    clock.now += 29
    assert call("flags", "GET", "/api/flags", user="u1").json == {"flags": {"beta": True}}
    clock.now += 1  # FLAGS_CACHE_SECONDS (30) have passed
    assert call("flags", "GET", "/api/flags", user="u1").json == {"flags": {"beta": False}}

    monkeypatch.setenv("FLAGS_CACHE_SECONDS", "5")
    config.get_settings.cache_clear()
    admin_conn.execute("UPDATE feature_flags SET enabled = true WHERE key = %s", ("beta",))
    clock.now += 5
    assert call("flags", "GET", "/api/flags", user="u1").json == {"flags": {"beta": True}}


# --- admin CRUD -----------------------------------------------------------------------------

ADMIN = "user_admin"


@pytest.fixture
def admin_env(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Keys:
    monkeypatch.setenv("ADMIN_USER_IDS", f"{ADMIN}, user_other_admin")
    config.get_settings.cache_clear()
    return api_env


@pytest.fixture
def admin(admin_env: Keys) -> Caller:
    return Caller("lambda_v2", admin_env)


def create(admin: Caller, body: dict[str, Any], user: str = ADMIN) -> Any:
    return admin("admin_flags", "POST", "/api/admin/flags", user=user, json_body=body)


def test_admin_creates_lists_reads_updates_and_deletes_a_flag(admin: Caller) -> None:
    before = utcnow()
    body = {"key": "bulk-export", "enabled": True, "rolloutPercent": 25,
            "allowedUsers": [" u1 ", "u2", "u1"], "description": " CSV "}  # fmt: skip
    created = create(admin, body)
    assert created.status == 201, created.text
    flag = created.json["flag"]
    assert flag["key"] == "bulk-export" and flag["createdBy"] == ADMIN
    assert (flag["enabled"], flag["rolloutPercent"]) == (True, 25)
    assert flag["allowedUsers"] == ["u1", "u2"] and flag["description"] == "CSV"
    assert flag["createdAt"] == flag["updatedAt"] >= iso_ms(before)

    listed = admin("admin_flags", "GET", "/api/admin/flags", user=ADMIN)
    assert [f["key"] for f in listed.json["flags"]] == ["bulk-export"]
    got = admin("admin_flag_item", "GET", "/api/admin/flags/bulk-export", user=ADMIN)
    assert got.json["flag"] == flag

    change = {"rolloutPercent": 60, "description": None}
    updated = admin("admin_flag_item", "PUT", "/api/admin/flags/bulk-export",
                    user="user_other_admin", json_body=change)  # fmt: skip
    assert updated.status == 200, updated.text
    after = updated.json["flag"]
    assert after["rolloutPercent"] == 60 and after["enabled"] is True  # untouched
    assert "description" not in after  # cleared, and absent keys are omitted
    assert after["createdBy"] == ADMIN and after["allowedUsers"] == ["u1", "u2"]

    deleted = admin("admin_flag_item", "DELETE", "/api/admin/flags/bulk-export", user=ADMIN)
    assert (deleted.status, deleted.json) == (200, {"success": True})
    for method in ("GET", "PUT", "DELETE"):
        gone = admin("admin_flag_item", method, "/api/admin/flags/bulk-export", user=ADMIN,
                     json_body={"enabled": False} if method == "PUT" else None)  # fmt: skip
        assert (gone.status, gone.json["message"]) == (404, "Feature flag not found"), method


def test_minimal_flag_takes_defaults_and_a_taken_key_is_409(admin: Caller) -> None:
    created = create(admin, {"key": "ab"})
    assert created.status == 201
    assert {k: created.json["flag"][k] for k in ("enabled", "rolloutPercent", "allowedUsers")} == {
        "enabled": False,
        "rolloutPercent": 0,
        "allowedUsers": [],
    }
    assert "description" not in created.json["flag"]
    again = create(admin, {"key": "ab", "enabled": True})
    assert (again.status, again.json["message"]) == (
        409,
        "A feature flag with this key already exists",
    )


def test_admin_writes_refresh_this_containers_flags_at_once(admin: Caller) -> None:
    create(admin, {"key": "launch", "enabled": True, "rolloutPercent": 100})
    assert admin("flags", "GET", "/api/flags", user="u1").json == {"flags": {"launch": True}}
    admin("admin_flag_item", "PUT", "/api/admin/flags/launch", user=ADMIN,
          json_body={"enabled": False})  # fmt: skip
    assert admin("flags", "GET", "/api/flags", user="u1").json == {"flags": {"launch": False}}
    admin("admin_flag_item", "DELETE", "/api/admin/flags/launch", user=ADMIN)
    assert admin("flags", "GET", "/api/flags", user="u1").json == {"flags": {}}


KEY_MESSAGE = (
    "Flag key must be 2-64 characters of a-z, 0-9, '_', '.' or '-', starting with a letter or digit"
)
PERCENT = "rolloutPercent must be an integer from 0 to 100"
USER_ID = "allowedUsers entries must be user ids of 1-255 characters"
NOTHING = "Provide at least one of enabled, rolloutPercent, allowedUsers, description"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "key is required"),
        ({"key": None}, "key is required"),
        ({"key": "a"}, KEY_MESSAGE),
        ({"key": "New-UI"}, KEY_MESSAGE),
        ({"key": "-dash-first"}, KEY_MESSAGE),
        ({"key": "has space"}, KEY_MESSAGE),
        ({"key": "x" * 65}, KEY_MESSAGE),
        ({"key": 12}, KEY_MESSAGE),
        ({"key": "ok", "rolloutPercent": 101}, PERCENT),
        ({"key": "ok", "rolloutPercent": -1}, PERCENT),
        ({"key": "ok", "rolloutPercent": "50"}, PERCENT),
        ({"key": "ok", "rolloutPercent": 12.5}, PERCENT),
        ({"key": "ok", "rolloutPercent": True}, PERCENT),
        ({"key": "ok", "enabled": "true"}, "enabled must be true or false"),
        ({"key": "ok", "description": "d" * 501}, "Description too long (max 500 chars)"),
        ({"key": "ok", "description": 5}, "description must be a string"),
        ({"key": "ok", "allowedUsers": "u1"}, "allowedUsers must be a list of user ids"),
        ({"key": "ok", "allowedUsers": ["u"] * 1001},
         "allowedUsers may list at most 1000 user ids"),
        ({"key": "ok", "allowedUsers": [""]}, USER_ID),
        ({"key": "ok", "allowedUsers": ["x" * 256]}, USER_ID),
        ({"key": "ok", "allowedUsers": [7]}, USER_ID),
        ({"key": "A", "rolloutPercent": 500},
         f"{KEY_MESSAGE}, {PERCENT}"),
    ],
)  # fmt: skip
def test_create_validation_messages(admin: Caller, body: dict[str, Any], message: str) -> None:
    result = create(admin, body)
    assert result.status == 400, result.text
    assert (result.json["error"], result.json["message"]) == ("Validation Error", message)
    assert admin("admin_flags", "GET", "/api/admin/flags", user=ADMIN).json == {"flags": []}


def test_an_integral_float_percent_is_that_integer(admin: Caller) -> None:
    """`50.0` (what `json.dumps(50.0)` sends) is 50 in JSON, as the original's zod `.int()` took
    it; `12.5` stays refused (above)."""
    result = create(admin, {"key": "floaty", "rolloutPercent": 50.0})
    assert result.status == 201, result.text
    percent = result.json["flag"]["rolloutPercent"]
    assert percent == 50 and type(percent) is int  # JSON `50`, not `50.0`


def test_boundaries_are_accepted(admin: Caller) -> None:
    body = {"key": "a" + "b" * 63, "rolloutPercent": 100, "description": "d" * 500,
            "allowedUsers": [f"u{i}" for i in range(1000)]}  # fmt: skip
    result = create(admin, body)
    assert result.status == 201, result.text
    assert len(result.json["flag"]["allowedUsers"]) == 1000
    assert create(admin, {"key": "0.9_beta-x", "rolloutPercent": 0}).status == 201


EMOJI = "\U0001f600"  # one code point, two UTF-16 code units: JS `length` 2


def test_the_description_is_trimmed_and_counted_as_js_does(admin: Caller) -> None:
    """≤ 500 UTF-16 code units after JS `trim()`, as a saved search's description: U+3000 and
    U+FEFF are trimmed, U+0085 and U+001C are kept (Python's `strip()` does the opposite)."""
    body = {"key": "intl", "description": "\u3000" + EMOJI * 250 + "\ufeff"}
    created = create(admin, body)
    assert created.status == 201, created.text
    assert created.json["flag"]["description"] == EMOJI * 250
    for description, expected in (
        ("\x1cnote\x85", "\x1cnote\x85"),
        ("\u3000\ufeff", None),  # only whitespace: cleared
        ("a" * 499 + EMOJI, "Description too long (max 500 chars)"),  # 501 units
    ):
        updated = admin("admin_flag_item", "PUT", "/api/admin/flags/intl", user=ADMIN,
                        json_body={"description": description})  # fmt: skip
        if expected is not None and expected.startswith("Description"):
            assert (updated.status, updated.json["message"]) == (400, expected)
        else:
            assert updated.status == 200, updated.text
            assert updated.json["flag"].get("description") == expected


def test_allowed_users_are_trimmed_and_counted_as_js_does(admin: Caller) -> None:
    """Each id is JS-`trim()`med (U+0085 and U+001C..U+001F are content, as on every other
    trimmed field: `a\x85` is not the user `a`) and 1..255 UTF-16 code units long."""
    users = ["user_1\x85", "user_1", "\u3000user_2\x1c", "\ufeffuser_1\ufeff"]
    created = create(admin, {"key": "intl", "allowedUsers": users})
    assert created.status == 201, created.text
    assert created.json["flag"]["allowedUsers"] == ["user_1\x85", "user_1", "user_2\x1c"]
    for allowed, message in (
        (["\x85"], None),
        (["\ufeff\u3000"], USER_ID),
        ([EMOJI * 127 + "a"], None),  # 255 units
        ([EMOJI * 128], USER_ID),  # 256 units
    ):
        updated = admin("admin_flag_item", "PUT", "/api/admin/flags/intl", user=ADMIN,
                        json_body={"allowedUsers": allowed})  # fmt: skip
        if message is None:
            assert (updated.status, updated.json["flag"]["allowedUsers"]) == (200, allowed)
        else:
            assert (updated.status, updated.json["message"]) == (400, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, NOTHING),
        ({"key": "renamed"}, NOTHING),
        ({"enabled": None}, "enabled cannot be null"),
        ({"rolloutPercent": None, "allowedUsers": None},
         "rolloutPercent, allowedUsers cannot be null"),
        ({"rolloutPercent": 101}, PERCENT),
        ({"enabled": 1}, "enabled must be true or false"),
    ],
)  # fmt: skip
def test_update_validation_messages(admin: Caller, body: dict[str, Any], message: str) -> None:
    create(admin, {"key": "target", "enabled": True})
    result = admin("admin_flag_item", "PUT", "/api/admin/flags/target", user=ADMIN, json_body=body)
    assert (result.status, result.json["message"]) == (400, message)
    assert (
        admin("admin_flag_item", "GET", "/api/admin/flags/target", user=ADMIN).json["flag"][
            "enabled"
        ]
        is True
    )


def insert_like_prisma(conn: psycopg.Connection[Any], key: str) -> None:
    """A flag row as the original app's Prisma client writes it: no rule on the key."""
    conn.execute(
        'INSERT INTO feature_flags (id, key, enabled, "rolloutPercent", "allowedUsers", '
        '"createdAt", "updatedAt") VALUES (%s, %s, true, 100, \'{}\', now(), now())',
        (f"cprisma{abs(hash(key))}", key),
    )


@pytest.mark.parametrize("odd", ["Beta Dashboard", "x", "ÜBER-flag", "y" * 300])
def test_a_key_another_writer_stored_is_read_updated_and_deleted(
    admin: Caller, admin_conn: psycopg.Connection[Any], odd: str
) -> None:
    insert_like_prisma(admin_conn, odd)
    path = f"/api/admin/flags/{quote(odd)}"
    got = admin("admin_flag_item", "GET", path, user=ADMIN)
    assert (got.status, got.json["flag"]["key"]) == (200, odd), got.text
    put = admin("admin_flag_item", "PUT", path, user=ADMIN, json_body={"enabled": False})
    assert (put.status, put.json["flag"]["enabled"]) == (200, False), put.text
    assert admin("admin_flag_item", "DELETE", path, user=ADMIN).json == {"success": True}
    assert admin("admin_flag_item", "GET", path, user=ADMIN).status == 404


@pytest.mark.parametrize("unknown", ["A", "has%20space", "-x", "y" * 65])
def test_an_unknown_key_in_the_path_is_404(admin: Caller, unknown: str) -> None:
    for method in ("GET", "PUT", "DELETE"):
        result = admin("admin_flag_item", method, f"/api/admin/flags/{unknown}", user=ADMIN,
                       json_body={"enabled": True} if method == "PUT" else None)  # fmt: skip
        assert (result.status, result.json["message"]) == (404, "Feature flag not found"), method


def test_a_key_no_row_can_hold_in_the_path_is_400(admin: Caller) -> None:
    for method in ("GET", "PUT", "DELETE"):
        result = admin("admin_flag_item", method, "/api/admin/flags/a%00b", user=ADMIN,
                       json_body={"enabled": True} if method == "PUT" else None)  # fmt: skip
        assert result.status == 400, (method, result.text)
        assert result.json["message"] == "Flag key cannot contain NUL or an unpaired surrogate"


def test_admin_by_role_claim(api_env: Keys) -> None:
    caller = Caller("lambda_v2", api_env)
    token = caller.token("user_role_admin", metadata={"role": "admin"})
    result = caller("admin_flags", "GET", "/api/admin/flags",
                    headers={"authorization": f"Bearer {token}"})  # fmt: skip
    assert (result.status, result.json) == (200, {"flags": []})


FLAG_ROUTES = [
    ("admin_flags", "GET", "/api/admin/flags"),
    ("admin_flags", "POST", "/api/admin/flags"),
    ("admin_flag_item", "GET", "/api/admin/flags/some-flag"),
    ("admin_flag_item", "PUT", "/api/admin/flags/some-flag"),
    ("admin_flag_item", "DELETE", "/api/admin/flags/some-flag"),
]


@pytest.mark.parametrize(("module", "method", "path"), FLAG_ROUTES)
def test_flag_admin_requires_an_admin(
    call: Caller, admin_env: Keys, module: str, method: str, path: str
) -> None:
    put_flag("some-flag", enabled=True)
    body = {"key": "new-flag", "enabled": True} if method in ("POST", "PUT") else None
    anonymous = call(module, method, path, json_body=body, headers={"authorization": "Bearer x"})
    assert (anonymous.status, anonymous.json["message"]) == (401, "Authentication required")
    member = call(module, method, path, user="user_member", json_body=body)
    assert (member.status, member.json["message"]) == (403, "Admin access required")
    garbage = call(module, method, path, user="user_member", json_body={"key": 5})
    assert garbage.status == 403  # authorisation is decided before the body is looked at
    listed = db.run(feature_flags.list_all)
    assert [(f.key, f.enabled) for f in listed] == [("some-flag", True)]


def test_stored_flag_rows_match_the_prisma_shape(
    admin: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    create(admin, {"key": "shape", "enabled": True, "rolloutPercent": 5, "allowedUsers": ["u"]})
    row = admin_conn.execute(
        'SELECT id, "rolloutPercent", "allowedUsers", "createdBy", "createdAt", "updatedAt" '
        "FROM feature_flags WHERE key = 'shape'"
    ).fetchone()
    assert row is not None
    assert row[0].startswith("c") and len(row[0]) == 25  # a cuid, as Prisma would write
    assert row[1:4] == (5, ["u"], ADMIN)
    assert row[4] == row[5] and utcnow().replace(tzinfo=None) - row[4] < timedelta(minutes=1)


def test_the_admin_list_comes_in_pages_by_key(
    admin: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions import admin_flags

    monkeypatch.setattr(admin_flags, "PAGE_FLAGS", 2)
    for key in ("c-flag", "a-flag", "b-flag"):
        assert create(admin, {"key": key}).status == 201
    first = admin("admin_flags", "GET", "/api/admin/flags", user=ADMIN).json
    assert [f["key"] for f in first["flags"]] == ["a-flag", "b-flag"]
    assert first["nextCursor"] == "b-flag"
    rest = admin("admin_flags", "GET", "/api/admin/flags", user=ADMIN,
                 query={"cursor": first["nextCursor"]}).json  # fmt: skip
    assert rest == {"flags": [rest["flags"][0]]} and rest["flags"][0]["key"] == "c-flag"


def test_pages_walk_past_keys_another_writer_stored(
    admin: Caller, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's last key is the cursor, whatever it is: it must be taken back."""
    from functions import admin_flags

    monkeypatch.setattr(admin_flags, "PAGE_FLAGS", 2)
    stored = ["a-flag", "aa Bad", "b", "c-flag", "d flag"]
    for key in stored:
        insert_like_prisma(admin_conn, key)
    seen: list[str] = []
    query: dict[str, str] = {}
    while True:
        page = admin("admin_flags", "GET", "/api/admin/flags", user=ADMIN, query=query)
        assert page.status == 200, page.text
        seen += [f["key"] for f in page.json["flags"]]
        if "nextCursor" not in page.json:
            break
        query = {"cursor": page.json["nextCursor"]}
    assert sorted(seen) == sorted(stored) and len(seen) == len(stored)


def test_a_cursor_no_key_can_be_is_a_400(admin: Caller) -> None:
    """A URL decodes to UTF-8 with replacement, so only NUL is left to refuse."""
    cursor = "a\x00b"
    result = admin("admin_flags", "GET", "/api/admin/flags", user=ADMIN, query={"cursor": cursor})
    assert result.status == 400, result.text
    assert result.json["message"] == "cursor must be the nextCursor of a previous page"


def insert_with_users(conn: psycopg.Connection[Any], key: str, users: int) -> None:
    """A flag naming `users` ids of 250 characters: another writer is held to no limit, so one
    row may be larger than a page (or than either platform answers)."""
    conn.execute(
        'INSERT INTO feature_flags (id, key, enabled, "rolloutPercent", "allowedUsers", '
        '"createdAt", "updatedAt") SELECT %s, %s, true, 50, '
        "array_agg(lpad(g::text, 250, 'u')), now(), now() FROM generate_series(1, %s) g",
        (f"cbig{users}", key, users),
    )


def test_a_flag_larger_than_a_page_is_answered_without_its_users(
    admin: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """3.8 MB is more than a page, 6.4 MB more than Lambda answers: the list, GET and PUT show
    such a flag without `allowedUsers` (counted, and named in `omitted`), so the answer fits
    and a PUT's 200 says its write took effect."""
    insert_with_users(admin_conn, "big-1", 15_000)
    insert_with_users(admin_conn, "big-2", 25_000)
    assert create(admin, {"key": "big-3", "allowedUsers": ["u"]}).status == 201
    page = admin("admin_flags", "GET", "/api/admin/flags", user=ADMIN)
    assert page.status == 200 and len(page.raw) <= 3_000_000, (page.status, len(page.raw))
    listed = {flag["key"]: flag for flag in page.json["flags"]}
    assert list(listed) == ["big-1", "big-2", "big-3"]
    for key, count in (("big-1", 15_000), ("big-2", 25_000)):
        flag = listed[key]
        assert "allowedUsers" not in flag
        assert (flag["omitted"], flag["allowedUsersCount"]) == (["allowedUsers"], count)
    assert listed["big-3"]["allowedUsers"] == ["u"] and "omitted" not in listed["big-3"]
    got = admin("admin_flag_item", "GET", "/api/admin/flags/big-2", user=ADMIN)
    assert (got.status, got.json["flag"]) == (200, listed["big-2"]), got.text
    put = admin("admin_flag_item", "PUT", "/api/admin/flags/big-2", user=ADMIN,
                json_body={"enabled": False})  # fmt: skip
    assert put.status == 200, put.text
    assert (put.json["flag"]["enabled"], put.json["flag"]["omitted"]) == (False, ["allowedUsers"])
    trimmed = admin("admin_flag_item", "PUT", "/api/admin/flags/big-2", user=ADMIN,
                    json_body={"allowedUsers": ["a", "b"]})  # fmt: skip
    assert trimmed.json["flag"]["allowedUsers"] == ["a", "b"], trimmed.text
    assert "omitted" not in trimmed.json["flag"]


def test_a_flag_larger_than_a_page_even_without_its_users_omits_more(
    admin: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """`description` and `createdBy` are of any size too when another writer stored them."""
    insert_with_users(admin_conn, "huge", 1)
    admin_conn.execute(
        "UPDATE feature_flags SET description = repeat('d', 3000000), "
        "\"createdBy\" = repeat('c', 10) WHERE key = %s",
        ("huge",),
    )
    got = admin("admin_flag_item", "GET", "/api/admin/flags/huge", user=ADMIN)
    assert got.status == 200, got.text
    flag = got.json["flag"]
    assert (flag["omitted"], flag["allowedUsersCount"]) == (["allowedUsers", "description"], 1)
    assert flag["createdBy"] == "c" * 10 and "description" not in flag
