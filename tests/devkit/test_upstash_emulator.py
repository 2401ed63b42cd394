"""The Upstash emulator, driven by the real `upstash-redis` SDK and `upstash-ratelimit`.

Tests taking `emulator` run on both backends: `[fake]` (in-process fakeredis with Lua) and
`[redis]` (a real redis-server: a private one started for the session when the binary exists,
else `REDIS_URL`; without either the lane is skipped locally and fails in CI). Tests isolate
themselves with unique key prefixes: nothing is ever flushed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
import upstash_redis.asyncio
from upstash_ratelimit import FixedWindow, Ratelimit, SlidingWindow
from upstash_ratelimit.asyncio import Ratelimit as AsyncRatelimit
from upstash_redis import Redis
from upstash_redis.errors import UpstashError

from devkit._host import free_port, wait_for
from devkit.upstash_emulator import Command, RedisBackend, UpstashEmulator, create_app
from tests.support.ci import missing_tool
from tests.support.redis import LocalRedis

REPO_ROOT = Path(__file__).resolve().parents[2]
# Read once, before any test's monkeypatching: a Redis the developer asked us to use.
EXTERNAL_REDIS_URL = os.environ.get("REDIS_URL")
UNICODE = "héllo wörld ✓ 日本語 🚀"


@pytest.fixture(scope="session")
def real_redis_url() -> Iterator[str]:
    """A real Redis: a private redis-server when installed, else REDIS_URL, else skip (or fail)."""
    if LocalRedis.binary():
        with (
            tempfile.TemporaryDirectory(prefix="keyflash-redis-") as tmp,
            LocalRedis(Path(tmp)) as server,
        ):
            yield server.url
        return
    if EXTERNAL_REDIS_URL:
        yield EXTERNAL_REDIS_URL
        return
    message = (
        "redis-server is not installed and REDIS_URL is unset, so the real-Redis lane cannot "
        "run: apt-get install redis-server"
    )
    missing_tool(message)


@pytest.fixture(
    scope="module",
    params=[pytest.param("fake", id="fake"), pytest.param("redis", id="redis")],
)
def emulator(request: pytest.FixtureRequest) -> Iterator[UpstashEmulator]:
    """One emulator per backend for this module."""
    url = request.getfixturevalue("real_redis_url") if request.param == "redis" else None
    with UpstashEmulator(backend_url=url) as server:
        yield server


@pytest.fixture
def key() -> str:
    """A key prefix no other test (or earlier run on a shared Redis) uses."""
    return f"kf-test:{uuid.uuid4().hex[:12]}:"


def _sdk(emulator: UpstashEmulator, **options: Any) -> Redis:
    # No retries: a failure must surface now, not after the SDK's 3 s retry sleep.
    return Redis(
        url=emulator.url,
        token=emulator.token,
        rest_retries=0,
        allow_telemetry=False,
        **options,
    )


@pytest.fixture(params=["base64", None], ids=["base64", "plain"])
def sdk(request: pytest.FixtureRequest, emulator: UpstashEmulator) -> Iterator[Redis]:
    """The sync SDK, with the default base64 response encoding and with `rest_encoding=None`."""
    with _sdk(emulator, rest_encoding=request.param) as client:
        yield client


def _actual(value: object) -> object:
    """A reply where the SDK's stubs are wrong: SET returns a bool, not `str | None`."""
    return value


def _post(emulator: UpstashEmulator, path: str, body: Any, **headers: str) -> httpx.Response:
    """A raw request, to see the wire format the SDK hides."""
    sent = {"Authorization": f"Bearer {emulator.token}", **headers}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(emulator.url + path, content=content, headers=sent)
    assert "Traceback" not in response.text
    return response


# --- data commands through the SDK -------------------------------------------------------------


def test_strings(sdk: Redis, key: str) -> None:
    assert _actual(sdk.set(f"{key}s", UNICODE, ex=100)) is True
    assert sdk.get(f"{key}s") == UNICODE
    assert 0 < sdk.ttl(f"{key}s") <= 100
    assert _actual(sdk.set(f"{key}s", "other", nx=True)) is False
    assert sdk.get(f"{key}s") == UNICODE
    assert _actual(sdk.set(f"{key}new", "v", nx=True)) is True
    assert sdk.get(f"{key}missing") is None
    assert sdk.incrby(f"{key}n", 5) == 5
    assert sdk.incrby(f"{key}n", -2) == 3
    assert sdk.get(f"{key}n") == "3"
    assert sdk.mget(f"{key}n", f"{key}missing", f"{key}s") == ["3", None, UNICODE]
    assert _actual(sdk.set(f"{key}ok", "OK")) is True
    assert sdk.get(f"{key}ok") == "OK"


def test_hashes(sdk: Redis, key: str) -> None:
    assert sdk.hset(f"{key}h", values={"name": UNICODE, "n": "1"}) == 2
    assert sdk.hget(f"{key}h", "name") == UNICODE
    assert sdk.hincrby(f"{key}h", "n", 41) == 42
    assert sdk.hgetall(f"{key}h") == {"name": UNICODE, "n": "42"}
    assert sdk.hget(f"{key}h", "absent") is None
    assert sdk.hdel(f"{key}h", "name") == 1


def test_sets(sdk: Redis, key: str) -> None:
    assert sdk.sadd(f"{key}set", "a", "b", UNICODE) == 3
    assert sdk.sadd(f"{key}set", "a") == 0
    assert set(sdk.smembers(f"{key}set")) == {"a", "b", UNICODE}
    assert sdk.sismember(f"{key}set", UNICODE) is True
    assert sdk.srem(f"{key}set", "a") == 1
    assert sdk.scard(f"{key}set") == 2


def test_expire_and_ttl(sdk: Redis, key: str) -> None:
    sdk.set(f"{key}k", "v")
    assert sdk.ttl(f"{key}k") == -1
    assert sdk.expire(f"{key}k", 60) is True
    assert 0 < sdk.ttl(f"{key}k") <= 60
    assert sdk.persist(f"{key}k") is True
    assert sdk.ttl(f"{key}k") == -1
    assert sdk.ttl(f"{key}missing") == -2
    assert sdk.expire(f"{key}missing", 60) is False


def test_scan_with_match_count_and_type(sdk: Redis, key: str) -> None:
    strings = {f"{key}str:{i}" for i in range(12)}
    for name in strings:
        sdk.set(name, "v")
    sdk.hset(f"{key}hash", "f", "v")
    sdk.set(f"other-{key}", "not matched")

    def scan_all(**options: Any) -> set[str]:
        found: set[str] = set()
        cursor = 0
        while True:
            cursor, keys = sdk.scan(cursor, match=f"{key}*", count=5, **options)
            assert isinstance(cursor, int)
            found.update(keys)
            if cursor == 0:
                return found

    assert scan_all() == strings | {f"{key}hash"}
    assert scan_all(type="hash") == {f"{key}hash"}
    assert scan_all(type="string") == strings


def test_eval_evalsha_and_noscript(sdk: Redis, key: str) -> None:
    script = "redis.call('SET', KEYS[1], ARGV[1]); return {redis.call('GET', KEYS[1]), 7, false}"
    assert sdk.eval(script, keys=[f"{key}e"], args=[UNICODE]) == [UNICODE, 7, None]
    sha = sdk.script_load("return ARGV[1] .. '!'")
    assert sha == hashlib.sha1(b"return ARGV[1] .. '!'").hexdigest()
    assert sdk.evalsha(sha, args=["hi"]) == "hi!"
    assert sdk.script_exists(sha, "0" * 40) == [True, False]
    with pytest.raises(UpstashError, match=r"^NOSCRIPT "):
        sdk.evalsha("0" * 40)


def test_scripts_with_upstash_shebang_flags(sdk: Redis, key: str) -> None:
    """upstash-ratelimit's `#!lua flags=allow-key-locking` runs (Redis itself rejects the flag)."""
    script = "#!lua flags=allow-key-locking\nreturn redis.call('INCR', KEYS[1])"
    assert sdk.eval(script, keys=[f"{key}n"]) == 1
    sha = sdk.script_load(script)
    assert sha == hashlib.sha1(script.encode()).hexdigest()
    assert sdk.script_exists(sha) == [True]
    assert sdk.evalsha(sha, keys=[f"{key}n"]) == 2
    failing = "#!lua flags=allow-key-locking\nlocal x = 1\nreturn redis.call('NOPE')"
    with pytest.raises(UpstashError):
        sdk.eval(failing)


def test_pipeline(sdk: Redis, key: str) -> None:
    pipe = sdk.pipeline()
    pipe.set(f"{key}a", UNICODE)
    pipe.incrby(f"{key}n", 2)
    pipe.get(f"{key}a")
    pipe.hset(f"{key}h", "f", "v")
    assert pipe.exec() == [True, 2, UNICODE, 1]


def test_pipeline_with_a_failing_command_runs_the_others(sdk: Redis, key: str) -> None:
    sdk.set(f"{key}text", "not a number")
    pipe = sdk.pipeline()
    pipe.set(f"{key}before", "1")
    pipe.incr(f"{key}text")
    pipe.set(f"{key}after", "2")
    with pytest.raises(UpstashError, match="ERR value is not an integer"):
        pipe.exec()  # the SDK raises on the first error entry...
    assert sdk.mget(f"{key}before", f"{key}after") == ["1", "2"]  # ...but nothing rolled back


def test_pipeline_wire_format(emulator: UpstashEmulator, key: str) -> None:
    commands = [["SET", f"{key}a", "1"], ["INCR", f"{key}a", "extra"], ["INCR", f"{key}a"]]
    response = _post(emulator, "/pipeline", commands)
    assert response.status_code == 200
    assert response.json() == [
        {"result": "OK"},
        {"error": "ERR wrong number of arguments for 'incr' command"},
        {"result": 2},
    ]


def test_multi_exec(sdk: Redis, key: str) -> None:
    tx = sdk.multi()
    tx.set(f"{key}a", "1")
    tx.incr(f"{key}a")
    tx.sadd(f"{key}s", UNICODE)
    tx.get(f"{key}a")
    assert tx.exec() == [True, 2, 1, "2"]


def test_multi_exec_runtime_error_does_not_roll_back(emulator: UpstashEmulator, key: str) -> None:
    commands = [["SET", f"{key}t", "text"], ["INCR", f"{key}t"], ["SET", f"{key}u", "1"]]
    response = _post(emulator, "/multi-exec", commands, **{"Upstash-Encoding": "base64"})
    assert response.status_code == 200
    assert response.json() == [
        {"result": "OK"},
        {"error": "ERR value is not an integer or out of range"},
        {"result": "OK"},
    ]


def test_multi_exec_with_a_refused_command_applies_nothing(
    emulator: UpstashEmulator, sdk: Redis, key: str
) -> None:
    commands = [["SET", f"{key}a", "1"], ["GET"], ["SET", f"{key}b", "2"]]
    response = _post(emulator, "/multi-exec", commands)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("EXECABORT Transaction discarded because of previous errors")
    assert "command 2: ERR wrong number of arguments for 'get' command" in error
    assert sdk.mget(f"{key}a", f"{key}b") == [None, None]


def test_multi_exec_is_atomic_under_concurrency(emulator: UpstashEmulator, key: str) -> None:
    """Concurrent read-modify-write transactions (GET then SET inside one MULTI) never interleave.

    Each transaction INCRs a counter and RPUSHes the value it saw; with atomicity the pushed
    values are exactly 1..N in order.
    """

    async def run() -> list[Any]:
        async with upstash_redis.asyncio.Redis(
            url=emulator.url, token=emulator.token, rest_retries=0, allow_telemetry=False
        ) as client:

            async def one() -> None:
                tx = client.multi()
                tx.incr(f"{key}n")
                tx.eval("return redis.call('RPUSH', KEYS[1], redis.call('GET', KEYS[2]))",
                        keys=[f"{key}seen", f"{key}n"])  # fmt: skip
                await tx.exec()

            await asyncio.gather(*(one() for _ in range(20)))
            return await client.lrange(f"{key}seen", 0, -1)

    assert asyncio.run(run()) == [str(i) for i in range(1, 21)]


# --- encoding -----------------------------------------------------------------------------------


def test_base64_encoding_on_the_wire(emulator: UpstashEmulator, key: str) -> None:
    b64 = {"Upstash-Encoding": "base64"}
    assert _post(emulator, "/", ["SET", f"{key}k", UNICODE], **b64).json() == {"result": "OK"}
    got = _post(emulator, "/", ["GET", f"{key}k"], **b64).json()
    assert got == {"result": "aMOpbGxvIHfDtnJsZCDinJMg5pel5pys6KqeIPCfmoA="}
    assert _post(emulator, "/", ["GET", f"{key}k"]).json() == {"result": UNICODE}
    assert _post(emulator, "/", ["INCR", f"{key}n"], **b64).json() == {"result": 1}
    assert _post(emulator, "/", ["GET", f"{key}missing"], **b64).json() == {"result": None}
    assert _post(emulator, "/", ["PING"], **b64).json() == {"result": "UE9ORw=="}
    assert _post(emulator, "/", ["TYPE", f"{key}k"], **b64).json() == {"result": "c3RyaW5n"}
    nested = _post(emulator, "/", ["EVAL", "return {1, 'ab', {'OK', false}}", "0"], **b64)
    assert nested.json() == {"result": [1, "YWI=", ["OK", None]]}
    error = _post(emulator, "/", ["INCR", f"{key}k"], **b64)
    assert (error.status_code, error.json()) == (
        400,
        {"error": "ERR value is not an integer or out of range"},
    )


def test_binary_values(emulator: UpstashEmulator, key: str) -> None:
    """Bytes that are not UTF-8: exact in base64, U+FFFD-replaced in plain JSON."""
    set_binary = ["EVAL", "return redis.call('SET', KEYS[1], '\\255\\000\\001')", "1", f"{key}b"]
    assert _post(emulator, "/", set_binary).json() == {"result": "OK"}
    b64 = _post(emulator, "/", ["GET", f"{key}b"], **{"Upstash-Encoding": "base64"})
    assert b64.json() == {"result": "/wAB"}
    assert _post(emulator, "/", ["GET", f"{key}b"]).json() == {"result": "\ufffd\x00\x01"}


# --- errors -------------------------------------------------------------------------------------


def test_command_errors_raise_upstash_error_with_the_redis_message(sdk: Redis, key: str) -> None:
    sdk.set(f"{key}s", "text")
    with pytest.raises(UpstashError, match=r"^ERR value is not an integer or out of range$"):
        sdk.incr(f"{key}s")
    with pytest.raises(UpstashError, match=r"^WRONGTYPE Operation against a key holding"):
        sdk.hget(f"{key}s", "f")
    with pytest.raises(UpstashError, match=r"^ERR unknown command"):
        sdk.execute(["NOPE", "x"])


WRONGPASS = {"error": "WRONGPASS invalid or missing auth token"}  # Upstash's text, see below


def test_wrong_or_missing_token(emulator: UpstashEmulator) -> None:
    """Upstash's documented refusal: https://upstash.com/docs/redis/troubleshooting/http_unauthorized."""
    with (
        Redis(url=emulator.url, token="wrong", rest_retries=0) as client,
        pytest.raises(UpstashError, match=r"^WRONGPASS invalid or missing auth token$"),
    ):
        client.get("anything")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": emulator.token}):
        response = httpx.post(emulator.url, json=["PING"], headers=headers)
        assert (response.status_code, response.json()) == (401, WRONGPASS)
        response = httpx.post(emulator.url + "/pipeline", json=[["PING"]], headers=headers)
        assert (response.status_code, response.json()) == (401, WRONGPASS)
    response = httpx.post(emulator.url, json=["PING"], params={"_token": "wrong"})
    assert (response.status_code, response.json()) == (401, WRONGPASS)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/get/foo"), ("GET", "/"), ("DELETE", "/"), ("PUT", "/multi-exec"), ("HEAD", "/x")],
)
def test_auth_comes_before_routing(emulator: UpstashEmulator, method: str, path: str) -> None:
    """No token is 401 whatever the path or method: nothing about the API leaks before auth."""
    response = httpx.request(method, emulator.url + path)
    assert response.status_code == 401
    if method != "HEAD":
        assert response.json() == WRONGPASS


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/", b"[not json", "ERR the request body is not valid JSON"),
        ("/", b"", "ERR the request body is not valid JSON"),
        ("/", {"command": "GET"}, "ERR a command is a non-empty JSON array"),
        ("/", [], "ERR a command is a non-empty JSON array"),
        ("/", ["SET", "k", True], "ERR command arguments must be strings or numbers, got true"),
        ("/", ["SET", "k", None], "ERR command arguments must be strings or numbers, got null"),
        ("/", ["SELECT", "1"], "ERR Command is not available over REST: 'SELECT'"),
        ("/", ["MULTI"], "ERR Command is not available over REST: 'MULTI' (use /multi-exec)"),
        ("/pipeline", ["GET", "k"], "ERR a command is a non-empty JSON array"),
        ("/pipeline", [], "ERR a pipeline is a non-empty JSON array of commands"),
        ("/multi-exec", [["WATCH", "k"]], "ERR Command is not available over REST: 'WATCH'"),
    ],
)
def test_malformed_requests_get_400(
    emulator: UpstashEmulator, path: str, body: Any, message: str
) -> None:
    response = _post(emulator, path, body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


def test_methods_upstash_does_not_allow_get_405(emulator: UpstashEmulator) -> None:
    """Upstash allows HEAD, GET, POST and PUT (https://upstash.com/docs/redis/features/restapi)."""
    auth = {"Authorization": f"Bearer {emulator.token}"}
    for method, path in (("DELETE", "/"), ("PATCH", "/pipeline"), ("DELETE", "/get/k")):
        response = httpx.request(method, emulator.url + path, headers=auth)
        assert response.status_code == 405
        assert response.json() == {"error": f"ERR Method Not Allowed: {method} {path}"}


# --- the rest of Upstash's REST surface (https://upstash.com/docs/redis/features/restapi) -----


def _auth(emulator: UpstashEmulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {emulator.token}"}


def test_put_is_post(emulator: UpstashEmulator, key: str) -> None:
    put = httpx.put(emulator.url, json=["SET", f"{key}p", "v"], headers=_auth(emulator))
    assert put.json() == {"result": "OK"}
    batch = httpx.put(
        emulator.url + "/pipeline", json=[["GET", f"{key}p"]], headers=_auth(emulator)
    )
    assert batch.json() == [{"result": "v"}]


def test_token_as_query_parameter(emulator: UpstashEmulator, key: str) -> None:
    params = {"_token": emulator.token}
    assert httpx.post(emulator.url, json=["PING"], params=params).json() == {"result": "PONG"}
    response = httpx.get(f"{emulator.url}/set/{key}t/v", params=params)
    assert response.json() == {"result": "OK"}
    assert httpx.get(f"{emulator.url}/get/{key}t", params=params).json() == {"result": "v"}


def test_url_path_commands(emulator: UpstashEmulator, key: str) -> None:
    """`REST_URL/COMMAND/arg1/…/argN`; a POST body is the last argument, the query adds more."""
    url, auth = emulator.url, _auth(emulator)
    name = quote(f"{key}a/b c", safe="")  # a slash and a space inside one argument
    assert httpx.get(f"{url}/set/{name}/bar", headers=auth).json() == {"result": "OK"}
    assert httpx.get(f"{url}/GET/{name}", headers=auth).json() == {"result": "bar"}
    assert httpx.head(f"{url}/get/{name}", headers=auth).status_code == 200
    value = b'{"json": ["value", "\xc3\xa9"]}'
    response = httpx.post(f"{url}/set/{name}?EX=100", content=value, headers=auth)
    assert response.json() == {"result": "OK"}
    assert httpx.get(f"{url}/get/{name}", headers=auth).json() == {"result": value.decode()}
    assert 0 < httpx.get(f"{url}/ttl/{name}", headers=auth).json()["result"] <= 100
    response = httpx.post(f"{url}/set/{name}?NX", content=b"other", headers=auth)
    assert response.json() == {"result": None}  # NX alone: a flag without a value
    response = httpx.post(f"{url}/ping", headers=auth)  # no body: no argument added
    assert response.json() == {"result": "PONG"}
    assert httpx.get(f"{url}/mget/{name}/{key}none", headers=auth).json() == {
        "result": [value.decode(), None]
    }
    response = httpx.get(f"{url}/incr/{name}", headers=auth)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "ERR value is not an integer or out of range"},
    )
    response = httpx.get(f"{url}/select/1", headers=auth)
    assert response.status_code == 400
    assert response.json()["error"].startswith("ERR Command is not available over REST: 'SELECT'")


def test_response_format_header(emulator: UpstashEmulator) -> None:
    """`json` is the default; `resp2` is not implemented and anything else is Upstash's 400."""
    for value, status in (("json", 200), ("JSON", 200), ("resp2", 400), ("xml", 400)):
        response = _post(emulator, "/", ["PING"], **{"Upstash-Response-Format": value})
        assert response.status_code == status, value
        if status == 400:
            assert response.json()["error"].startswith("ERR "), value
            assert value in response.json()["error"]


# --- invalid text -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/", b'["SET", "k", "a\\ud800b"]'),
        ("/pipeline", b'[["SET", "k", "a\\udc00"]]'),
        ("/multi-exec", b'[["SET", "k", "ok"], ["SET", "\\udfff", "v"]]'),
        ("/", b'["SET", "k", "\xff\xfe"]'),  # bytes that are not UTF-8
    ],
    ids=["single", "pipeline", "multi-exec", "invalid-utf8"],
)
def test_text_that_is_not_unicode_is_a_400_not_a_crash(
    emulator: UpstashEmulator, path: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone UTF-16 surrogate (`"\\ud800"`) is valid JSON syntax but no text UTF-8 can carry."""
    response = _post(emulator, path, body)
    assert response.status_code == 400
    assert response.json()["error"].startswith("ERR ")
    assert not [r for r in caplog.records if r.name == "devkit.upstash_emulator"]


def test_escaped_surrogate_pairs_are_text(sdk: Redis, emulator: UpstashEmulator, key: str) -> None:
    response = _post(emulator, "/", f'["SET", "{key}e", "\\ud83d\\ude80"]'.encode())
    assert response.json() == {"result": "OK"}
    assert sdk.get(f"{key}e") == "\U0001f680"


# --- Upstash's size limits ----------------------------------------------------------------------

# https://upstash.com/docs/redis/troubleshooting/max_key_size_exceeded ("32Kb", every plan) and
# https://upstash.com/docs/redis/overall/billing (max request size "10 MB" on Free and PAYG).
KEY_LIMIT = 32_000
REQUEST_LIMIT = 10_000_000


def _key_error(actual: int) -> str:
    return f"ERR max key size exceeded. Limit: {KEY_LIMIT} bytes, Actual: {actual} bytes"


def test_a_key_over_upstash_limit_is_refused(sdk: Redis, key: str) -> None:
    at_limit = key + "k" * (KEY_LIMIT - len(key))
    assert _actual(sdk.set(at_limit, "v")) is True
    assert sdk.get(at_limit) == "v"
    over = at_limit + "k"
    with pytest.raises(UpstashError, match=f"^{re.escape(_key_error(KEY_LIMIT + 1))}$"):
        sdk.set(over, "v")
    with pytest.raises(UpstashError, match=re.escape(_key_error(KEY_LIMIT + 1))):
        sdk.get(over)
    wide = key + "é" * ((KEY_LIMIT - len(key)) // 2 + 1)  # counted in UTF-8 bytes
    with pytest.raises(UpstashError, match=r"^ERR max key size exceeded"):
        sdk.set(wide, "v")
    with pytest.raises(UpstashError, match=re.escape(_key_error(KEY_LIMIT + 1))):
        sdk.eval("return 1", keys=[f"{key}small", over], args=["x" * (KEY_LIMIT + 1)])
    assert _actual(sdk.set(f"{key}big-value", "x" * (KEY_LIMIT + 1))) is True  # values may be
    assert sdk.eval("return ARGV[1]", args=["y" * (KEY_LIMIT + 1)]) == "y" * (KEY_LIMIT + 1)


def test_a_key_over_the_limit_in_a_pipeline_fails_that_command(
    emulator: UpstashEmulator, key: str
) -> None:
    over = key + "k" * (KEY_LIMIT + 1 - len(key))
    commands = [["SET", f"{key}a", "1"], ["SET", over, "2"], ["GET", f"{key}a"]]
    response = _post(emulator, "/pipeline", commands)
    assert response.status_code == 200
    assert response.json() == [
        {"result": "OK"},
        {"error": _key_error(KEY_LIMIT + 1)},
        {"result": "1"},
    ]
    commands = [["SET", f"{key}b", "1"], ["GET", over]]
    response = _post(emulator, "/multi-exec", commands)
    assert response.status_code == 400
    assert response.json() == {
        "error": "EXECABORT Transaction discarded because of previous errors "
        f"(command 2: {_key_error(KEY_LIMIT + 1)})"
    }
    assert _post(emulator, "/", ["EXISTS", f"{key}b"]).json() == {"result": 0}


def test_every_key_of_a_variadic_command_is_checked(real_redis_url: str, key: str) -> None:
    """Over a real Redis, whose command table names every key (fakeredis' names the first)."""
    over = key + "k" * (KEY_LIMIT + 1 - len(key))
    with UpstashEmulator(backend_url=real_redis_url) as emulator, _sdk(emulator) as client:
        for call in (
            lambda: client.mget(f"{key}a", over),
            lambda: client.delete(f"{key}a", f"{key}b", over),
            lambda: client.mset({f"{key}a": "1", over: "2"}),
        ):
            with pytest.raises(UpstashError, match=re.escape(_key_error(KEY_LIMIT + 1))):
                call()
        assert client.exists(f"{key}a") == 0


def _set_body(key: str, size: int) -> bytes:
    """A SET request body of exactly `size` bytes."""
    empty = json.dumps(["SET", key, ""]).encode()
    return json.dumps(["SET", key, "x" * (size - len(empty))]).encode()


def test_a_request_over_upstash_max_request_size_is_refused(
    emulator: UpstashEmulator, key: str
) -> None:
    at_limit = _set_body(f"{key}at", REQUEST_LIMIT)
    assert len(at_limit) == REQUEST_LIMIT
    assert _post(emulator, "/", at_limit).json() == {"result": "OK"}
    refused = (400, {"error": "ERR max request size exceeded"})
    over = _post(emulator, "/", _set_body(f"{key}over", REQUEST_LIMIT + 1))
    assert (over.status_code, over.json()) == refused
    half = "x" * (REQUEST_LIMIT // 2)
    for path in ("/pipeline", "/multi-exec"):
        commands = [["SET", f"{key}p1", half], ["SET", f"{key}p2", half]]
        response = _post(emulator, path, commands)
        assert (response.status_code, response.json()) == refused
    response = httpx.post(
        f"{emulator.url}/set/{key}path", content=b"x" * (REQUEST_LIMIT + 1), headers=_auth(emulator)
    )
    assert (response.status_code, response.json()) == refused
    with _sdk(emulator) as client:
        with pytest.raises(UpstashError, match=r"^ERR max request size exceeded$"):
            client.set(f"{key}sdk", "x" * REQUEST_LIMIT)
        assert client.exists(f"{key}over", f"{key}p1", f"{key}p2", f"{key}path", f"{key}sdk") == 0


class _BrokenBackend(RedisBackend):
    """A backend with a bug: what the client sees must not include the traceback."""

    def __init__(self) -> None:
        pass

    def execute(self, command: Command) -> Any:
        raise RuntimeError("internal detail: /secret/path.py line 42")


def _call_app(backend: RedisBackend, command: list[str]) -> httpx.Response:
    """One request straight into the ASGI app, app exceptions turned into responses."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(create_app(backend, "t"), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
            return await client.post("/", json=command, headers={"Authorization": "Bearer t"})

    return asyncio.run(call())


def test_internal_errors_never_expose_a_stack_trace() -> None:
    response = _call_app(_BrokenBackend(), ["PING"])
    assert response.status_code == 500
    assert response.json() == {"error": "ERR internal error in the emulator (see its log)"}
    assert "secret" not in response.text
    assert "Traceback" not in response.text


def test_unreachable_redis_is_a_500_that_says_so() -> None:
    backend = RedisBackend.connect(f"redis://127.0.0.1:{free_port()}/0")
    try:
        response = _call_app(backend, ["PING"])
    finally:
        backend.close()
    assert response.status_code == 500
    assert response.json()["error"].startswith("ERR the emulator cannot reach Redis: ")
    assert "Traceback" not in response.text


def test_real_redis_pool_is_bounded_and_closed(real_redis_url: str) -> None:
    """12 overlapping requests share `max_connections` connections; close() leaves none behind."""
    name = f"kf-test-{uuid.uuid4().hex[:8]}"
    backend = RedisBackend.connect(real_redis_url, max_connections=3, client_name=name)
    app = create_app(backend, "t")

    async def overlapping_requests() -> list[int]:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
            calls = [
                client.post(
                    "/",
                    json=["BLPOP", f"{name}:empty", "0.05"],
                    headers={"Authorization": "Bearer t"},
                )
                for _ in range(12)
            ]
            return [response.status_code for response in await asyncio.gather(*calls)]

    def connections() -> int:
        with redis.Redis.from_url(real_redis_url) as admin:
            listing: list[dict[str, Any]] = admin.client_list()
            return sum(1 for client in listing if client.get("name") == name)

    try:
        assert asyncio.run(overlapping_requests()) == [200] * 12
        assert connections() == 3
    finally:
        backend.close()
    assert connections() == 0


# --- async SDK and ratelimit --------------------------------------------------------------------


def test_async_sdk(emulator: UpstashEmulator, key: str) -> None:
    async def run() -> None:
        async with upstash_redis.asyncio.Redis(
            url=emulator.url, token=emulator.token, rest_retries=0, allow_telemetry=False
        ) as client:
            assert _actual(await client.set(f"{key}a", UNICODE, ex=30)) is True
            assert await client.get(f"{key}a") == UNICODE
            assert await client.incrby(f"{key}n", 3) == 3
            assert await client.eval("return ARGV[1]", args=["x"]) == "x"
            pipe = client.pipeline()
            pipe.incr(f"{key}n")
            pipe.get(f"{key}a")
            assert await pipe.exec() == [4, UNICODE]
            tx = client.multi()
            tx.hset(f"{key}h", "f", "v")
            tx.hgetall(f"{key}h")
            assert await tx.exec() == [1, {"f": "v"}]
            with pytest.raises(UpstashError, match=r"^ERR value is not an integer"):
                await client.incr(f"{key}a")
        async with upstash_redis.asyncio.Redis(
            url=emulator.url, token="wrong", rest_retries=0
        ) as intruder:
            with pytest.raises(UpstashError, match=r"^WRONGPASS invalid or missing auth token$"):
                await intruder.get(f"{key}a")

    asyncio.run(run())


@pytest.mark.parametrize("limiter", [FixedWindow, SlidingWindow])
def test_ratelimit_allows_n_then_refuses(
    emulator: UpstashEmulator, key: str, limiter: type[FixedWindow | SlidingWindow]
) -> None:
    with _sdk(emulator) as client:
        ratelimit = Ratelimit(client, limiter(max_requests=3, window=60), prefix=f"{key}rl")
        responses = [ratelimit.limit("user-1") for _ in range(5)]
        assert [r.allowed for r in responses] == [True, True, True, False, False]
        assert [r.remaining for r in responses] == [2, 1, 0, 0, 0]
        assert ratelimit.limit("user-2").allowed  # another identifier has its own budget
        assert ratelimit.get_remaining("user-1") == 0


@pytest.mark.parametrize("limiter", [FixedWindow, SlidingWindow])
def test_async_ratelimit_allows_n_then_refuses(
    emulator: UpstashEmulator, key: str, limiter: type[FixedWindow | SlidingWindow]
) -> None:
    async def run() -> list[bool]:
        async with upstash_redis.asyncio.Redis(
            url=emulator.url, token=emulator.token, rest_retries=0, allow_telemetry=False
        ) as client:
            ratelimit = AsyncRatelimit(client, limiter(max_requests=2, window=60), prefix=key)
            return [(await ratelimit.limit("user")).allowed for _ in range(4)]

    assert asyncio.run(run()) == [True, True, False, False]


# --- the runner ---------------------------------------------------------------------------------


def test_runner_lifecycle() -> None:
    emulator = UpstashEmulator(token="fixed-token")
    with pytest.raises(RuntimeError, match="not running"):
        _ = emulator.url
    emulator.start()
    try:
        assert emulator.url.startswith("http://127.0.0.1:")
        assert emulator.token == "fixed-token"
        with _sdk(emulator) as client:
            assert client.ping() == "PONG"
    finally:
        emulator.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{emulator._port}/", json=["PING"])
    emulator.stop()  # idempotent


def test_in_process_emulators_do_not_share_data() -> None:
    with UpstashEmulator() as first, UpstashEmulator() as second:
        assert first.token != second.token
        with _sdk(first) as a, _sdk(second) as b:
            a.set("shared?", "no")
            assert b.get("shared?") is None


def test_runner_refuses_an_unreachable_redis() -> None:
    with pytest.raises(RuntimeError, match="cannot reach its Redis"):
        UpstashEmulator(backend_url=f"redis://127.0.0.1:{free_port()}/0").start()


def test_command_line() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.upstash_emulator", "--port", str(port), "--token", "cli"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> bool:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/",
                    json=["PING"],
                    headers={"Authorization": "Bearer cli"},
                )
            except httpx.TransportError:
                return process.poll() is not None
            return response.status_code == 200

        assert wait_for(answers, timeout=30) and process.poll() is None
        with Redis(url=f"http://127.0.0.1:{port}", token="cli", rest_retries=0) as client:
            assert _actual(client.set("k", UNICODE)) is True
            assert client.get("k") == UNICODE
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert f"UPSTASH_REDIS_REST_URL=http://127.0.0.1:{port}" in output.decode()
    assert "UPSTASH_REDIS_REST_TOKEN=cli" in output.decode()


def test_an_idle_connection_outlives_the_clients_keep_alive(emulator: UpstashEmulator) -> None:
    """A server closing idle connections when the client's pool still reuses them fails a call
    sent in that moment ("Server disconnected"): the emulator keeps them longer than httpx's
    pool (the SDK's) keeps them."""
    assert emulator._server is not None
    client_keeps_s = httpx.Limits().keepalive_expiry
    assert client_keeps_s is not None
    assert emulator._server.config.timeout_keep_alive > 2 * client_keeps_s
