"""The `keyflash` CLI, driven as a developer drives it: subprocesses of `.venv/bin/keyflash`.

Every test gets its own state dir (KEYFLASH_STATE_DIR) so the developer's `.keyflash/` is never
touched. One `keyflash dev` serves the tests that only need a running stack; the lifecycle
tests (signals, kill -9, backup/restore) share a second state dir, so its PostgreSQL cluster is
initialised once. Readiness is polled with deadlines; teardown checks that no process (dev,
PostgreSQL, the watchdog) and no lock file is left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pty
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm
from psycopg.conninfo import conninfo_to_dict

from devkit import cli, dev, layout
from devkit._host import free_port
from devkit.console import CliError
from devkit.crons import CronSyntaxError, Schedule
from devkit.descriptors import load_serverless
from devkit.pgbouncer import LocalPgBouncer
from devkit.stack import clerk_webhook_env
from devkit.tokens import (
    DEV_ISSUER,
    KEY_FILE,
    WEBHOOK_SECRET_FILE,
    dev_key,
    dev_webhook_secret,
    issue_token,
    new_private_pem,
)
from shared.auth import ActiveOrg, identity_from_claims, verify_session_token
from shared.config import Settings
from tests.support import fake_stripe, stripe_events
from tests.support.ci import missing_tool
from tests.support.clerk_events import PATH as CLERK_WEBHOOK
from tests.support.clerk_events import SECRET, signed_headers, user_data
from tests.support.dev_stack import (
    KEYFLASH,
    READY_TIMEOUT_S,
    ROOT,
    STOP_TIMEOUT_S,
    Stack,
    alive,
    assert_nothing_left,
    assert_one_line_failure,
    cli_env,
    keyflash,
    make_state_dir,
    remove_state_dir,
    running_dev,
    stack_processes,
    start_dev,
    token_for,
    wait_until,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One running `keyflash dev` (fresh state dir) for every test that only needs one."""
    with running_dev() as running:
        yield running


@pytest.fixture(scope="module")
def spare_state_dir() -> Iterator[Path]:
    """A second state dir for lifecycle tests (its cluster is initialised by the first one)."""
    state_dir = make_state_dir()
    yield state_dir
    remove_state_dir(state_dir)


@pytest.fixture
def empty_state_dir() -> Iterator[Path]:
    state_dir = make_state_dir()
    yield state_dir
    remove_state_dir(state_dir)


# --------------------------------------------------------------------------- the running stack


def test_dev_serves_health_with_every_check_passing(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/api/health", timeout=10)
    # 200 exactly: the stack configures the database, the emulator and the mock provider, so
    # none of the three checks may fail (207 would mean one did, 503 all).
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy"
    assert body["environment"] == "development"
    assert {name: check["healthy"] for name, check in body["checks"].items()} == {
        "database": True,
        "redis": True,
        "provider": True,
    }
    output = stack.output()
    assert "KeyFlash dev is ready at " + stack.url in output
    assert "export TOKEN=" in output and "CLERK_ISSUER=" in output


def test_dev_seeded_demo_data_on_first_run(stack: Stack) -> None:
    response = httpx.get(
        f"{stack.url}/api/searches",
        headers={"Authorization": f"Bearer {token_for(stack, 'demo')}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    names = {search["name"] for search in response.json()["searches"]}
    assert {"Trail running shoes", "Home espresso"} <= names


def test_dev_token_creates_lists_and_deletes_saved_searches(stack: Stack) -> None:
    user = f"cli_{os.getpid()}"
    auth = {"Authorization": f"Bearer {token_for(stack, user)}"}
    body = {
        "name": "CLI test",
        "searchParams": {
            "keywords": ["espresso", "latte art"],
            "matchType": "phrase",
            "location": "US",
        },
    }
    with httpx.Client(base_url=stack.url, headers=auth, timeout=10) as client:
        created = client.post("/api/searches", json=body)
        assert created.status_code == 201, created.text
        search_id = created.json()["search"]["id"]
        listed = client.get("/api/searches").json()["searches"]
        assert [s["id"] for s in listed] == [search_id]
        assert client.delete(f"/api/searches/{search_id}").json() == {"success": True}
        assert client.get("/api/searches").json()["searches"] == []
        assert client.get(f"/api/searches/{search_id}").status_code == 404
    anonymous = httpx.get(f"{stack.url}/api/searches", timeout=10)
    assert anonymous.status_code == 401


def test_dev_runs_a_keyword_search(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.url}/api/keywords",
        json={"keywords": ["espresso machine", "latte art"], "matchType": "phrase"},
        headers={"Authorization": f"Bearer {token_for(stack, 'demo')}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["keyword"] for row in body["data"]] == ["espresso machine", "latte art"]
    assert body["mockData"] is True


def test_dev_serves_related_keywords_and_a_content_brief(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {token_for(stack, 'demo')}"}
    with httpx.Client(base_url=stack.url, headers=auth, timeout=30) as client:
        related = client.post("/api/keywords/related", json={"keyword": "espresso", "limit": 3})
        assert related.status_code == 200, related.text
        assert [row["keyword"] for row in related.json()["relatedKeywords"]] == [
            "espresso guide", "espresso tutorial", "best espresso",
        ]  # fmt: skip
        brief = client.post("/api/content-brief", json={"keyword": "espresso"})
        assert brief.status_code == 200, brief.text
        assert brief.json()["brief"]["provider"] == "Mock"


def test_dev_token_with_admin_claim_reaches_admin_routes(stack: Stack) -> None:
    url = f"{stack.url}/api/admin/flags"
    if "/api/admin/flags" not in httpx.get(f"{stack.url}/openapi.json", timeout=10).json()["paths"]:
        pytest.skip("no admin flags function yet")
    plain = httpx.get(url, headers={"Authorization": f"Bearer {token_for(stack, 'demo')}"})
    admin = httpx.get(
        url, headers={"Authorization": f"Bearer {token_for(stack, 'boss', '--admin')}"}
    )
    assert (plain.status_code, admin.status_code) == (403, 200), admin.text


def test_gateway_answers_unknown_paths_and_methods_with_the_envelope(stack: Stack) -> None:
    """Every method of a path reaches its function, as deployed; an unknown path is a 404."""
    missing = httpx.get(f"{stack.url}/api/nope", timeout=10)
    assert missing.status_code == 404
    assert set(missing.json()) == {"error", "message", "statusCode", "timestamp"}
    assert httpx.head(f"{stack.url}/api/nope", timeout=10).status_code == 404
    wrong = httpx.request("PATCH", f"{stack.url}/api/health", timeout=10)
    assert wrong.status_code == 405  # answered by the health function itself
    assert wrong.json()["supportedMethods"] == ["GET"]
    assert wrong.headers["allow"] == "GET, HEAD, OPTIONS"
    probed = httpx.get(f"{stack.url}/api/health", timeout=10)
    head = httpx.head(f"{stack.url}/api/health", timeout=10)
    # health's own answer (207 when a check was slow, as on a loaded machine), without a body
    assert probed.status_code in (200, 207) and probed.content
    assert head.status_code in (200, 207) and head.content == b""
    assert head.headers["content-type"] == "application/json"


def test_a_browser_on_the_stacks_origin_can_read_refusals_and_documented_headers(
    stack: Stack,
) -> None:
    """Through the gateway, as a frontend's `fetch` sees it: the CSRF 403 carries the CORS
    headers (else the browser reports a network error), and the export's 202 exposes `Location`
    and `Retry-After` to browser code. Another origin gets no CORS headers at all."""
    token = token_for(stack, f"cors_{os.getpid()}")
    cookie = {"Cookie": f"__session={token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        refused = client.post(
            "/api/searches", headers={**cookie, "Origin": stack.url}, content="{}"
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["message"] == "CSRF token validation failed"
        assert refused.headers["access-control-allow-origin"] == stack.url
        assert refused.headers["access-control-allow-credentials"] == "true"
        bearer = {"Authorization": f"Bearer {token}", "Origin": stack.url}
        export = client.post("/api/me/export", headers=bearer)
        assert export.status_code == 202, export.text
        exposed = {
            name.strip().lower()
            for name in export.headers["access-control-expose-headers"].split(",")
        }
        assert {"location", "retry-after", "x-request-id"} <= exposed
        foreign = client.post("/api/searches", headers={**cookie, "Origin": "https://evil.example"})
        assert foreign.status_code == 403
        assert not [name for name in foreign.headers if name.startswith("access-control-")]


def test_openapi_json_lists_every_functions_paths(stack: Stack) -> None:
    import importlib

    document = httpx.get(f"{stack.url}/openapi.json", timeout=10).json()
    assert document["servers"] == [{"url": stack.url}]
    for name in layout.http_functions():
        app = importlib.import_module(f"functions.{name}").app
        for path, operations in app.openapi()["paths"].items():
            assert path in document["paths"], f"{name}: {path} missing"
            for method in operations:
                assert document["paths"][path][method]["tags"] == [name]
    assert httpx.get(f"{stack.url}/docs", timeout=10).text.count("swagger") > 0


def test_invoke_health_borrows_the_running_stack(stack: Stack) -> None:
    result = keyflash("invoke", "health", "--repeat", "3", state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    assert "status 200" in result.stdout
    assert '"status": "healthy"' in result.stdout
    assert "run 1 (cold)" in result.stdout and "run 3 (warm)" in result.stdout
    assert "borrowed from keyflash dev" in result.stderr  # no second PostgreSQL was started


def test_invoke_sends_a_request_with_a_dev_token(stack: Stack) -> None:
    body = json.dumps(
        {
            "name": "Invoked",
            "searchParams": {"keywords": ["x"], "matchType": "exact", "location": "US"},
        }
    )
    result = keyflash(
        "invoke", "searches", "-X", "POST", "--body", body, "--user", "invoker",
        state_dir=stack.state_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "status 201" in result.stdout
    assert '"clerkUserId": "invoker"' in result.stdout


def test_invoke_loads_an_event_file(stack: Stack, tmp_path: Path) -> None:
    from devkit import events

    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(events.http_api_v2("GET", "/api/health")))
    result = keyflash("invoke", "health", "--event", str(event_file), state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    assert "status 200" in result.stdout


def test_invoke_hands_a_body_with_a_lone_surrogate_to_the_handler(
    stack: Stack, tmp_path: Path
) -> None:
    """The tool's own size check counted the body by encoding it strictly and crashed; the
    handler's documented answer to such a body is a 400."""
    from devkit import events

    token = keyflash("token", "--user", "user_surrogate", state_dir=stack.state_dir)
    assert token.returncode == 0, token.stderr
    headers = {
        "authorization": f"Bearer {token.stdout.strip()}",
        "content-type": "application/json",
    }
    event = events.http_api_v2("POST", "/api/searches", headers=headers, body='{"name": "x"}')
    event["body"] = '{"name": "\ud800"}'  # what arrives: a JSON string holding a lone surrogate
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event))  # the surrogate as the escape `\\ud800`
    result = keyflash("invoke", "searches", "--event", str(event_file), state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    assert "status 400" in result.stdout


@pytest.mark.parametrize("variable", ["APP_URL", "app_url"])
def test_dev_keeps_the_developers_app_url_in_any_spelling(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """`keyflash dev` reads APP_URL as the settings do: a lower-case `app_url` was ignored (the
    stack's URL exported beside it, two spellings that disagree)."""
    monkeypatch.delenv("APP_URL", raising=False)
    assert dev.app_url("http://127.0.0.1:3001") == "http://127.0.0.1:3001"
    monkeypatch.setenv(variable, "http://localhost:3000")
    assert dev.app_url("http://127.0.0.1:3001") == "http://localhost:3000"


def test_invoke_allows_the_running_stacks_own_origin(stack: Stack) -> None:
    """docs/local-stack.md: `invoke` gets the stack's settings, so its CORS and CSRF answers are
    the dev server's: the stack's URL is `APP_URL`, and Settings' default `APP_URL` is not."""
    token = token_for(stack, f"origin_{os.getpid()}")
    body = json.dumps(
        {
            "name": "Same origin",
            "searchParams": {"keywords": ["x"], "matchType": "exact", "location": "US"},
        }
    )
    write = keyflash(
        "invoke", "searches", "-X", "POST", "--body", body,
        "-H", f"Cookie: __session={token}; csrf-token=zz", "-H", "X-CSRF-Token: zz",
        "-H", f"Origin: {stack.url}",
        state_dir=stack.state_dir,
    )  # fmt: skip
    assert write.returncode == 0, write.stderr
    assert "status 201" in write.stdout, write.stdout
    assert f"access-control-allow-origin: {stack.url}\n" in write.stdout
    default = keyflash(
        "invoke", "health", "-H", "Origin: http://localhost:3000", state_dir=stack.state_dir
    )
    assert default.returncode == 0, default.stderr
    assert "access-control-allow-origin" not in default.stdout


def test_invoke_sends_the_query_string_as_given(stack: Stack) -> None:
    """A query that is not UTF-8 once decoded reaches the handler as sent (API Gateway's
    `rawQueryString`), so it gets the documented 400, not a U+FFFD stand-in."""
    result = keyflash(
        "invoke", "history", "--path", "/api/history?limit=%ED%A0%80", "--user", "raw_query",
        state_dir=stack.state_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "status 400" in result.stdout
    assert "Invalid query string: not UTF-8" in result.stdout, result.stdout


def test_invoke_sends_the_method_as_given(stack: Stack) -> None:
    """Methods are case-sensitive (RFC 9110 §9.1): `-X get` reaches the handler as `get`, which
    the gateway and API Gateway answer 405, so invoke must too (s53t7 L3: it upper-cased it)."""
    result = keyflash("invoke", "flags", "-X", "get", "--path", "/api/flags",
                      state_dir=stack.state_dir)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(get /api/flags)" in result.stdout and "status 405" in result.stdout, result.stdout


def test_second_dev_on_the_same_state_dir_fails_clearly(stack: Stack) -> None:
    started = time.monotonic()
    result = keyflash("dev", "--port", str(free_port()), state_dir=stack.state_dir, timeout=30)
    assert_one_line_failure(result, "already running", str(stack.process.pid))
    assert time.monotonic() - started < 15  # refused before starting anything
    assert stack.process.poll() is None  # and the first one is unharmed
    assert httpx.get(f"{stack.url}/api/health", timeout=10).status_code == 200


def test_cron_list_and_run(stack: Stack) -> None:
    jobs = layout.cron_modules()
    listed = keyflash("cron", "list", state_dir=stack.state_dir)
    assert listed.returncode == 0, listed.stderr
    if not jobs:
        assert "no cron jobs" in listed.stdout
        result = keyflash("cron", "run", "anything", state_dir=stack.state_dir)
        assert_one_line_failure(result, "no cron jobs")
        return
    for job in jobs:
        assert re.search(rf"^{job}\s", listed.stdout, re.MULTILINE), listed.stdout
    job = "collect_metrics" if "collect_metrics" in jobs else jobs[0]
    result = keyflash("cron", "run", job, state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cron {job}: ok in ")
    invoked = keyflash("invoke", f"cron.{job}", state_dir=stack.state_dir)
    assert invoked.returncode == 0, invoked.stderr
    assert "EventBridge schedule event" in invoked.stdout


def test_cron_run_unknown_job_fails_clearly(stack: Stack) -> None:
    result = keyflash("cron", "run", "no_such_job", state_dir=stack.state_dir)
    assert_one_line_failure(result, "no_such_job")


def test_invoke_shows_the_handlers_refusal_of_an_event_that_is_not_http(
    stack: Stack, tmp_path: Path
) -> None:
    event_file = tmp_path / "event.json"
    event_file.write_text('{"detail-type": "Scheduled Event"}')
    result = keyflash("invoke", "health", "--event", str(event_file), state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    assert "status 400" in result.stdout
    assert "Not an HTTP event" in result.stdout


def test_invoke_answers_an_alb_event_sent_to_an_ipv6_address(stack: Stack, tmp_path: Path) -> None:
    """s55t5 F1: an ALB reached by its IPv6 address passes on `Host: [2001:db8::10]`, which
    made every HTTP handler raise ValueError (`keyflash: ... raised ValueError`); a cron is
    handed the same event as options and never reads the Host."""
    event = {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:"
                                   "123456789012:targetgroup/keyflash/0123456789abcdef"}},
        "httpMethod": "GET", "path": "/api/health", "queryStringParameters": {},
        "headers": {"host": "[2001:db8::10]", "x-forwarded-for": "2001:db8::99",
                    "x-forwarded-port": "443", "x-forwarded-proto": "https"},
        "body": "", "isBase64Encoded": False,
    }  # fmt: skip
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event))
    result = keyflash("invoke", "health", "--event", str(event_file), state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    assert "status 200" in result.stdout, result.stdout
    cron = keyflash("invoke", "cron.collect_metrics", "--event", str(event_file),
                    state_dir=stack.state_dir)  # fmt: skip
    assert cron.returncode == 0, cron.stderr
    assert '"complete": true' in cron.stdout, cron.stdout


def test_env_prints_the_running_stacks_environment(stack: Stack, empty_state_dir: Path) -> None:
    result = keyflash("env", state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    exported = dict(
        re.findall(r"^export (\w+)=(.*)$", result.stdout, re.MULTILINE)  # values may be quoted
    )
    holder = json.loads((stack.state_dir / "stack.lock").read_text())
    assert exported["DATABASE_URL"] == holder["database_url"]
    assert exported["UPSTASH_REDIS_REST_URL"] == holder["upstash_url"]
    assert exported["APP_URL"] == stack.url
    assert_one_line_failure(keyflash("env", state_dir=empty_state_dir), "no running keyflash dev")
    # docs/deploy.md: `eval "$(keyflash env)"` is all `osls invoke local --stage local` needs,
    # and osls refuses the whole file when an `${env:…}` without a default is unset.
    unresolved = [
        f"{name}: {value}"
        for name, value in load_serverless()["params"]["local"].items()
        if (sources := _ENV_SOURCE.fullmatch(str(value)))
        and "'" not in sources[1]
        and not set(re.findall(r"env:(\w+)", sources[1])) & set(exported)
    ]
    assert not unresolved, f"keyflash env leaves osls's local stage unresolved: {unresolved}"


_ENV_SOURCE = re.compile(r"\$\{(env:.*)\}")  # `${env:A, env:B, 'default'}`: its sources


def test_the_typescript_smoke_runs_against_your_own_stack_as_documented(stack: Stack) -> None:
    """s53t8 F1: docs/typescript.md's command for your own stack failed with `smoke: set
    KEYFLASH_ORG_TOKEN`; run exactly as written, but against this stack's URL."""
    if shutil.which("node") is None or not (ROOT / "clients/typescript/node_modules").is_dir():
        missing_tool("node and clients/typescript/node_modules (`npm ci` there) are needed")
    docs = (ROOT / "docs" / "typescript.md").read_text()
    own_stack = docs.split("Run it against your own stack", 1)[1]
    command = own_stack.split("```bash\n", 1)[1].split("```", 1)[0]
    assert "http://127.0.0.1:3000" in command, command
    env = cli_env(stack.state_dir)
    env["PATH"] = f"{Path(KEYFLASH).parent}{os.pathsep}{env['PATH']}"  # a developer's venv
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command.replace("http://127.0.0.1:3000", stack.url)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answered as documented" in result.stdout, result.stdout


def test_legacy_reads_the_running_stacks_redis_unless_told_otherwise(
    stack: Stack, empty_state_dir: Path
) -> None:
    """s44t2 F5: `legacy` borrowed the stack's database but refused without the Upstash
    variables; it reads the stack's emulator now, and the variables, when set, still win.
    With neither, it refuses: an in-memory emulator would hold no legacy data to read."""
    from upstash_redis import Redis as Upstash

    from devkit.upstash_emulator import UpstashEmulator
    from shared.legacy import keys
    from tests.support.legacy import dumps, user_record

    holder = json.loads((stack.state_dir / "stack.lock").read_text())
    created = datetime.now(UTC)
    in_stack = Upstash(url=holder["upstash_url"], token=holder["upstash_token"])
    in_stack.set(
        keys.user("legacy_in_stack"),
        dumps(user_record("legacy_in_stack", "s@example.com", created=created)),
    )
    result = keyflash("legacy", "verify", state_dir=stack.state_dir)
    assert "Traceback" not in result.stderr, result.stderr
    assert 'user:legacy_in_stack row: redis="present" postgres="missing"' in result.stdout, (
        result.stderr
    )
    assert result.returncode == 1  # that difference
    assert "Redis borrowed from keyflash dev" in result.stderr

    with UpstashEmulator() as elsewhere:
        Upstash(url=elsewhere.url, token=elsewhere.token).set(
            keys.user("legacy_elsewhere"),
            dumps(user_record("legacy_elsewhere", "e@example.com", created=created)),
        )
        result = keyflash(
            "legacy", "verify", state_dir=stack.state_dir,
            UPSTASH_REDIS_REST_URL=elsewhere.url, UPSTASH_REDIS_REST_TOKEN=elsewhere.token,
        )  # fmt: skip
        # The names Vercel's Upstash integration writes (`vercel env pull`) are read the same.
        vercel = keyflash(
            "legacy", "verify", state_dir=stack.state_dir,
            KV_REST_API_URL=elsewhere.url, KV_REST_API_TOKEN=elsewhere.token,
        )  # fmt: skip
    for run in (result, vercel):
        assert "user:legacy_elsewhere row:" in run.stdout, run.stderr
        assert "legacy_in_stack" not in run.stdout
    assert "Redis KV_REST_API_URL" in vercel.stderr

    database = "postgresql://postgres@127.0.0.1:1/unused"  # not reached: refused before
    refused = keyflash("legacy", "verify", state_dir=empty_state_dir, DATABASE_URL=database)
    assert_one_line_failure(refused, "UPSTASH_REDIS_REST_URL", str(empty_state_dir))


def test_dev_receives_clerk_webhooks_signed_with_its_own_secret(stack: Stack) -> None:
    """A plain `keyflash dev` makes a Clerk webhook secret once, kept in the state dir like the
    signing key, and gives it to the functions; the banner and `keyflash env` show it. Events
    Svix-signed with it are applied; signed with another secret, refused."""
    made = stack.state_dir / WEBHOOK_SECRET_FILE
    secret = made.read_text().strip()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret), secret
    assert oct(made.stat().st_mode & 0o777) == "0o600"
    assert f"CLERK_WEBHOOK_SECRET={secret}  (made once in {made})" in stack.output()
    printed = keyflash("env", state_dir=stack.state_dir)
    assert f"export CLERK_WEBHOOK_SECRET={shlex.quote(secret)}\n" in printed.stdout
    user = f"hook_{os.getpid()}"
    body = json.dumps({"type": "user.created", "data": user_data(user, f"{user}@example.com")})
    url = f"{stack.url}{CLERK_WEBHOOK}"
    applied = httpx.post(url, content=body, headers=signed_headers(body, secret=secret))
    assert (applied.status_code, applied.json()) == (200, {"received": True}), applied.text
    forged = httpx.post(url, content=body, headers=signed_headers(body))  # another secret
    assert (forged.status_code, forged.json()["message"]) == (400, "Invalid signature")
    query = f"select email from users where id = '{user}'"
    stored = keyflash("db", "psql", "-tAc", query, state_dir=stack.state_dir)
    assert stored.stdout.strip() == f"{user}@example.com", stored.stderr
    # `keyflash invoke` borrows the running stack's environment, its webhook secret included.
    headers = [f"{name}:{value}" for name, value in signed_headers(body, secret=secret).items()]
    invoked = keyflash(
        "invoke", "webhooks_clerk", "-X", "POST", "--path", CLERK_WEBHOOK, "--body", body,
        *(part for header in headers for part in ("--header", header)),
        state_dir=stack.state_dir,
    )  # fmt: skip
    assert invoked.returncode == 0, invoked.stderr
    assert "status 200" in invoked.stdout and '"duplicate"' not in invoked.stdout


def test_the_banner_names_the_dev_key_as_what_verifies_tokens(stack: Stack) -> None:
    clerk = [line for line in stack.output().splitlines() if line.startswith("  Clerk ")]
    assert clerk == [
        f"  Clerk      dev key {stack.state_dir / KEY_FILE}, issuer {DEV_ISSUER} "
        "(tokens: keyflash token)"
    ], stack.output()


def test_the_dev_webhook_secret_is_made_once_and_yours_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLERK_WEBHOOK_SECRET", raising=False)
    made = clerk_webhook_env(tmp_path)["CLERK_WEBHOOK_SECRET"]
    assert dev_webhook_secret(tmp_path) == made  # made once, then kept
    assert list(tmp_path.iterdir()) == [tmp_path / WEBHOOK_SECRET_FILE]
    (tmp_path / WEBHOOK_SECRET_FILE).write_text("whsec_\n")
    with pytest.raises(CliError, match="delete it to get a new one"):
        dev_webhook_secret(tmp_path)
    elsewhere = tmp_path / "other"
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", SECRET)  # a Clerk dev instance's endpoint
    assert clerk_webhook_env(elsewhere) == {"CLERK_WEBHOOK_SECRET": SECRET}
    assert not elsewhere.exists()


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.strip()}", **headers}


def test_global_options_before_the_command_choose_the_stack(
    stack: Stack, empty_state_dir: Path
) -> None:
    """KEYFLASH_STATE_DIR names an empty dir; `--state-dir` before the command wins over it."""
    where = ("--state-dir", str(stack.state_dir))
    token = keyflash(*where, "token", "--user", "global_opts", state_dir=empty_state_dir)
    assert token.returncode == 0, token.stderr
    searches = httpx.get(f"{stack.url}/api/searches", headers=bearer(token.stdout), timeout=10)
    assert searches.status_code == 200, searches.text
    psql = keyflash(*where, "db", "psql", "-tAc", "select 1", state_dir=empty_state_dir)
    assert psql.returncode == 0, psql.stderr
    assert "borrowed from keyflash dev" in psql.stderr  # not a new, empty database
    assert list(empty_state_dir.iterdir()) == []  # no key, no cluster, no lock made there


def test_token_refuses_a_state_dir_no_stack_runs_on(stack: Stack, empty_state_dir: Path) -> None:
    result = keyflash("token", "--user", "elsewhere", state_dir=empty_state_dir)
    assert_one_line_failure(
        result, "no keyflash dev is running", str(empty_state_dir / "dev-signing-key.pem"),
        "--offline",
    )  # fmt: skip
    assert result.stdout == ""
    assert not (empty_state_dir / "dev-signing-key.pem").exists()
    # What the refusal prevents: a token the running stack answers with 401.
    offline = keyflash("token", "--user", "elsewhere", "--offline", state_dir=empty_state_dir)
    assert offline.returncode == 0, offline.stderr
    rejected = httpx.get(f"{stack.url}/api/searches", headers=bearer(offline.stdout), timeout=10)
    assert rejected.status_code == 401


def test_token_refuses_a_key_the_running_stack_does_not_trust(stack: Stack) -> None:
    private, public = (stack.state_dir / name for name in ("dev-signing-key.pem",
                                                            "dev-signing-key.pub.pem"))  # fmt: skip
    saved = private.read_bytes(), public.read_bytes()
    other = make_state_dir()
    try:
        assert keyflash("token", "--user", "x", "--offline", state_dir=other).returncode == 0
        private.write_bytes((other / "dev-signing-key.pem").read_bytes())  # replaced meanwhile
        result = keyflash("token", "--user", "x", state_dir=stack.state_dir)
    finally:
        private.write_bytes(saved[0])
        public.write_bytes(saved[1])
        remove_state_dir(other)
    assert_one_line_failure(result, f"pid {stack.process.pid}", "trusts another key", "restart")
    assert result.stdout == ""


def test_forwarding_headers_do_not_choose_the_client_locally(stack: Stack) -> None:
    """TRUST_PROXY unset and not on Vercel: the socket peer, as on Lambda, whatever a client
    writes into X-Forwarded-For / X-Real-IP (uvicorn would have believed them from 127.0.0.1)."""
    remaining = []
    for forged in ("198.51.100.7", "203.0.113.9"):
        response = httpx.get(
            f"{stack.url}/api/health",
            headers={"X-Forwarded-For": forged, "X-Real-IP": forged},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        remaining.append(int(response.headers["x-ratelimit-remaining"]))
    assert remaining[1] == remaining[0] - 1  # one bucket: the forged addresses changed nothing
    assert stored_client_ips(stack, "forged_forwarding", "198.51.100.7") == ["127.0.0.0"]


def stored_client_ips(stack: Stack, user: str, forged: str) -> list[str]:
    """The address recorded in api_usage for one signed-in request that forges `forged`."""
    import psycopg

    user = f"{user}_{time.monotonic_ns()}"
    response = httpx.get(
        f"{stack.url}/api/searches",
        headers=bearer(token_for(stack, user), **{"X-Forwarded-For": forged}),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    holder = json.loads((stack.state_dir / "stack.lock").read_text())
    rows: list[str] = []
    with psycopg.connect(holder["direct_database_url"], autocommit=True) as conn:

        def recorded() -> bool:  # written after the response is sent
            query = 'SELECT "ipAddress" FROM api_usage WHERE "userId" = %s'
            rows[:] = [ip for (ip,) in conn.execute(query, (user,))]
            return bool(rows)

        wait_until(recorded, 30, "the request is recorded in api_usage")
    return rows


def test_commands_wait_for_no_one_but_say_who_holds_the_lock(empty_state_dir: Path) -> None:
    from devkit.stack import StackLock

    lock = StackLock(empty_state_dir)
    lock.acquire("db backup")
    try:
        result = keyflash("db", "psql", "-c", "select 1", state_dir=empty_state_dir, timeout=60)
    finally:
        lock.release()
    assert_one_line_failure(result, "keyflash db backup", f"pid {os.getpid()}", "wait for it")
    assert not (empty_state_dir / "pgdata").exists()


# --------------------------------------------------------------------------- bad usage


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["invoke", "no_such_function"], "no function 'no_such_function'"),
        (["invoke", "health", "--repeat", "0"], "--repeat"),
        (["invoke", "health", "--header", "no-colon"], "NAME:VALUE"),
        (["invoke", "health", "--event", "/nonexistent/event.json"], "does not exist"),
        (["dev", "--port", "70000"], "between 0 and 65535"),
        (["token"], "--user"),
        (["db", "frobnicate"], "invalid choice"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    args: list[str], fragment: str, empty_state_dir: Path
) -> None:
    result = keyflash(*args, state_dir=empty_state_dir, timeout=60)
    assert result.returncode == 2
    assert_one_line_failure(result, fragment)
    assert not (empty_state_dir / "pgdata").exists()  # nothing was started for it


@pytest.mark.parametrize(
    ("content", "fragment"),
    [('{"version": "2.0",', "not valid JSON (line 1"), ("[1, 2]", "JSON list")],
)
def test_invoke_rejects_a_malformed_event_file(
    content: str, fragment: str, empty_state_dir: Path
) -> None:
    event_file = empty_state_dir / "event.json"
    event_file.write_text(content)
    result = keyflash("invoke", "health", "--event", str(event_file), state_dir=empty_state_dir)
    assert result.returncode == 2
    assert_one_line_failure(result, fragment)


def test_dev_reports_a_port_in_use_before_starting_anything(empty_state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = keyflash("dev", "--port", str(port), state_dir=empty_state_dir, timeout=60)
    assert_one_line_failure(result, f"port {port}", "already in use")
    assert result.returncode == 1
    assert not (empty_state_dir / "pgdata").exists()
    assert not (empty_state_dir / "stack.lock").exists()


def test_token_is_refused_in_production(empty_state_dir: Path) -> None:
    result = keyflash("token", "--user", "x", state_dir=empty_state_dir, APP_ENV="production")
    assert_one_line_failure(result, "APP_ENV=production")
    assert not (empty_state_dir / "dev-signing-key.pem").exists()


def test_dev_is_refused_in_production(empty_state_dir: Path) -> None:
    result = keyflash("dev", state_dir=empty_state_dir, APP_ENV="production")
    assert_one_line_failure(result, "APP_ENV=production")


def test_token_claims_and_key_reuse(empty_state_dir: Path) -> None:
    first = keyflash(
        "token", "--user", "u1", "--email", "u1@example.com", "--admin", "--ttl", "600",
        "--offline", state_dir=empty_state_dir,
    )  # fmt: skip
    second = keyflash("token", "--user", "u2", "--offline", state_dir=empty_state_dir)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    public = (empty_state_dir / "dev-signing-key.pub.pem").read_text()
    claims = jwt.decode(
        first.stdout.strip(), public, algorithms=["RS256"], options={"verify_iss": False}
    )
    assert (claims["sub"], claims["email"], claims["metadata"]) == (
        "u1", "u1@example.com", {"role": "admin"},
    )  # fmt: skip
    assert claims["exp"] - claims["iat"] == 600
    other = jwt.decode(
        second.stdout.strip(), public, algorithms=["RS256"], options={"verify_iss": False}
    )
    assert "metadata" not in other and other["exp"] - other["iat"] == 24 * 3600
    assert oct((empty_state_dir / "dev-signing-key.pem").stat().st_mode & 0o777) == "0o600"
    bad_ttl = keyflash("token", "--user", "u", "--ttl", "0", "--offline", state_dir=empty_state_dir)
    assert_one_line_failure(bad_ttl, "--ttl")


def test_token_with_an_active_org_in_both_claim_versions(empty_state_dir: Path) -> None:
    org = (
        "--org", "org_2team", "--org-role", "admin", "--org-slug", "team",
        "--org-permission", "org:billing:manage", "--org-permission", "org:searches:manage",
    )  # fmt: skip
    v2 = keyflash("token", "--user", "u1", *org, "--offline", state_dir=empty_state_dir)
    v1 = keyflash(
        "token", "--user", "u1", *org, "--claims-version", "1", "--offline",
        state_dir=empty_state_dir,
    )  # fmt: skip
    assert v2.returncode == v1.returncode == 0, v2.stderr + v1.stderr
    public = (empty_state_dir / "dev-signing-key.pub.pem").read_text()
    settings = Settings(
        database_url="postgresql://u:p@localhost/db",
        clerk_jwt_key=public,
        clerk_issuer=DEV_ISSUER,
        clerk_authorized_parties="",
    )
    expected = ActiveOrg(
        "org_2team", "org:admin", "team", frozenset({"org:billing:manage", "org:searches:manage"})
    )
    for minted, version in ((v2, 2), (v1, None)):
        claims = verify_session_token(minted.stdout.strip(), settings)
        assert claims.get("v") == version
        assert identity_from_claims(claims, settings).org == expected
    member = keyflash(
        "token", "--user", "u2", "--org", "org_2team", "--offline", state_dir=empty_state_dir
    )
    claims = verify_session_token(member.stdout.strip(), settings)
    assert identity_from_claims(claims, settings).org == ActiveOrg(
        "org_2team", "org:member", None, frozenset()
    )
    orphan = keyflash("token", "--user", "u", "--org-role", "admin", state_dir=empty_state_dir)
    assert_one_line_failure(orphan, "need --org")
    bad = keyflash(
        "token", "--user", "u", "--org", "team-1", "--offline", state_dir=empty_state_dir
    )
    assert_one_line_failure(bad, "--org", "org_")


@pytest.mark.parametrize("clerk_org", [("--admin", "ada"), ("--delete",)], ids=["make", "delete"])
def test_clerk_org_refuses_the_org_ids_token_refuses(
    empty_state_dir: Path, clerk_org: tuple[str, ...]
) -> None:
    """One shape check for both: `clerk-org` never makes a team no token (nor route) can name."""
    for org_id in ("org_a-b", "not an org"):
        token = keyflash(
            "token", "--user", "ada", "--org", org_id, "--offline", state_dir=empty_state_dir
        )
        team = keyflash("clerk-org", "--org", org_id, *clerk_org, state_dir=empty_state_dir)
        assert (token.returncode, team.returncode) == (2, 2), team.stdout + team.stderr
        assert assert_one_line_failure(team, "--org", "org_") == assert_one_line_failure(token)


def test_db_reset_and_restore_refuse_a_remote_database(empty_state_dir: Path) -> None:
    remote = "postgresql://user:secret@ep-cool-name-123.eu-central-1.aws.neon.tech/keyflash"
    for args in (["db", "reset", "--yes"], ["db", "seed"]):
        result = keyflash(*args, state_dir=empty_state_dir, DATABASE_URL=remote)
        line = assert_one_line_failure(result, "refusing", "neon.tech")
        assert "secret" not in line  # the password is masked
    archive = empty_state_dir / "x.dump"
    archive.write_bytes(b"PGDMP" + b"\0" * 16)
    result = keyflash(
        "db", "restore", str(archive), "--yes", state_dir=empty_state_dir, DATABASE_URL=remote
    )
    assert_one_line_failure(result, "refusing")


@pytest.mark.parametrize("variable", ["DATABASE_URL", "DIRECT_DATABASE_URL"])
def test_db_migrate_refuses_an_unencoded_password_showing_no_part_of_it(
    empty_state_dir: Path, variable: str
) -> None:
    """Printed as it was, the URL showed the password past its first '@', and SQLAlchemy's
    ValueError quoted a piece of it (`invalid literal for int() … 'w'`)."""
    raw = "postgresql://special:Kx7@Qz9:Wq4/Rd8?Tp2#Zn5%&=+$;é !Vb1@127.0.0.1:1/keyflash"
    env = {"DATABASE_URL": "postgresql://special:pw@127.0.0.1:1/keyflash", variable: raw}
    result = keyflash("db", "migrate", state_dir=empty_state_dir, **env)
    assert_one_line_failure(result, f"{variable} must have its user name and password")
    output = result.stdout + result.stderr
    assert [
        piece for piece in ("Kx7", "Qz9", "Wq4", "Rd8", "Tp2", "Zn5", "Vb1") if piece in output
    ] == []
    assert not (empty_state_dir / "pgdata").exists()  # refused before starting anything


def test_db_migrate_names_the_direct_url_it_migrates(
    empty_state_dir: Path, direct_database_url: str
) -> None:
    """The DDL goes over DIRECT_DATABASE_URL: the label named the pooled DATABASE_URL."""
    pooled = "postgresql://pooled@127.0.0.1:1/keyflash_pooled?pgbouncer=true"
    env = {"DATABASE_URL": pooled, "DIRECT_DATABASE_URL": direct_database_url}
    result = keyflash("db", "migrate", state_dir=empty_state_dir, **env)
    assert result.returncode == 0, result.stderr
    label = next(line for line in result.stderr.splitlines() if "keyflash db migrate:" in line)
    assert label.endswith(f"{direct_database_url} (DIRECT_DATABASE_URL)"), label
    assert "keyflash_pooled" not in result.stdout + result.stderr


def test_db_migrate_refusing_a_pooler_names_the_variable_it_came_from(
    empty_state_dir: Path, direct_database_url: str, pgbouncer: LocalPgBouncer
) -> None:
    """Only DATABASE_URL set, flagged as a pooler: the refusal blames DATABASE_URL, and says
    to set DIRECT_DATABASE_URL."""
    pooled = pgbouncer.url(str(conninfo_to_dict(direct_database_url)["dbname"]))
    result = keyflash("db", "migrate", state_dir=empty_state_dir, DATABASE_URL=pooled)
    error = assert_one_line_failure(result, "DATABASE_URL points at a transaction pooler")
    assert "DIRECT_DATABASE_URL points" not in error and "in DIRECT_DATABASE_URL" in error, error


def test_db_restore_rejects_a_file_that_is_not_a_backup(empty_state_dir: Path) -> None:
    bogus = empty_state_dir / "bogus.dump"
    bogus.write_text("not a dump")
    result = keyflash("db", "restore", str(bogus), "--yes", state_dir=empty_state_dir)
    assert_one_line_failure(result, "not a pg_dump custom-format archive")
    missing = keyflash("db", "restore", str(empty_state_dir / "missing"), state_dir=empty_state_dir)
    assert_one_line_failure(missing, "does not exist")
    assert not (empty_state_dir / "pgdata").exists()  # checked before starting anything


def test_openapi_command_writes_the_merged_document(empty_state_dir: Path) -> None:
    target = empty_state_dir / "openapi.json"
    result = keyflash("openapi", "--output", str(target), state_dir=empty_state_dir)
    assert result.returncode == 0, result.stderr
    document = json.loads(target.read_text())
    tags = {tag["name"] for tag in document["tags"]}
    assert tags == set(layout.http_functions())
    unwritable = keyflash("openapi", "-o", "/nonexistent/dir/x.json", state_dir=empty_state_dir)
    assert_one_line_failure(unwritable, "cannot write")


def test_check_command_says_whether_the_descriptors_are_in_step(
    empty_state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = keyflash("check", state_dir=empty_state_dir)
    assert result.returncode == 0, result.stderr
    assert "in step" in result.stdout

    from devkit import descriptors

    config = descriptors.load_vercel()
    config["builds"] = [b for b in config["builds"] if b["src"] != "functions/health.py"]
    monkeypatch.setattr(descriptors, "load_vercel", lambda: config)
    assert cli.main(["check"]) == 1
    assert "functions/health.py" in capsys.readouterr().err


def test_colour_only_on_a_terminal_without_no_color(empty_state_dir: Path) -> None:
    def run_on_tty(**extra: str) -> bytes:
        env = cli_env(empty_state_dir, **extra)
        if "NO_COLOR" not in extra:
            env.pop("NO_COLOR")
        leader, follower = pty.openpty()
        try:
            code = subprocess.run(
                [KEYFLASH, "cron", "list"], env=env, stdout=follower, stderr=follower, timeout=60
            ).returncode
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the terminal has no writer left
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(leader)
        assert code == 0
        return b"".join(chunks)

    if not layout.cron_modules():
        pytest.skip("cron list prints a plain message while functions/cron/ is absent")
    assert b"\x1b[" in run_on_tty()
    assert b"\x1b[" not in run_on_tty(NO_COLOR="1")
    piped = keyflash("cron", "list", state_dir=empty_state_dir)
    assert "\x1b[" not in piped.stdout


# Each command with the arguments it requires; the test below checks the list is complete.
COMMAND_ARGS: dict[tuple[str, ...], list[str]] = {
    ("dev",): [], ("invoke",): ["health"], ("cron", "list"): [], ("cron", "run"): ["job"],
    ("db", "migrate"): [], ("db", "downgrade"): ["-1"], ("db", "check"): [], ("db", "seed"): [],
    ("db", "reset"): [], ("db", "backup"): ["x.dump"], ("db", "restore"): ["x.dump"],
    ("db", "backups"): [], ("db", "restore-from-s3"): ["k/"],
    ("db", "psql"): [], ("token",): ["--user", "u"], ("legacy",): ["backfill"], ("env",): [],
    ("openapi",): [], ("check",): [], ("package",): ["health"],
    ("clerk-org",): ["--org", "org_x", "--admin", "u"],
}  # fmt: skip


def command_paths(parser: argparse.ArgumentParser) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= {(name, *rest) for rest in command_paths(sub)} or {(name,)}
    return found


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS), ids=" ".join)
def test_global_options_work_before_and_after_every_command(command: tuple[str, ...]) -> None:
    assert command_paths(cli.build_parser()) == set(COMMAND_ARGS)
    words, rest = list(command), COMMAND_ARGS[command]
    options = ["--state-dir", "/elsewhere", "--debug"]
    for at in range(len(words) + 1):  # before the command, between its words, after them
        argv = [*words[:at], *options, *words[at:], *rest]
        args, _ = cli.build_parser().parse_known_args(argv)
        assert (args.state_dir, args.debug) == (Path("/elsewhere"), True), argv
    args, _ = cli.build_parser().parse_known_args([*words, *rest])
    assert (args.state_dir, args.debug) == (None, False)


def into_a_closed_pipe(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`keyflash ARGS | head -c 0`: the reader is gone before anything is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [KEYFLASH, *args],
            env=cli_env(state_dir),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    finally:
        os.close(write_end)


def test_token_into_a_closed_pipe_exits_without_an_error(empty_state_dir: Path) -> None:
    result = into_a_closed_pipe(empty_state_dir, "token", "--user", "u", "--offline")
    assert result.stderr == ""
    assert result.returncode == cli.BROKEN_PIPE_EXIT


@pytest.mark.parametrize("output", [[], ["-o", "/dev/stdout"]], ids=["stdout", "dev-stdout"])
def test_openapi_to_a_reader_that_leaves_exits_as_a_closed_pipe_stops_it(
    empty_state_dir: Path, output: list[str]
) -> None:
    """s53t8 F2: `keyflash openapi | head` exited 0, and with `-o /dev/stdout` 1 with an error
    line; a pipeline under `set -o pipefail` must see the truncated write (141). The reader
    takes one byte and leaves while the document (far more than a pipe holds) is being written."""
    process = subprocess.Popen(
        [KEYFLASH, "openapi", *output],
        env=cli_env(empty_state_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(1) == b"{"
    process.stdout.close()
    assert process.wait(timeout=120) == cli.BROKEN_PIPE_EXIT
    assert process.stderr.read() == b""
    process.stderr.close()


def test_db_psql_into_a_closed_pipe_exits_141_as_the_shell_reports_it(stack: Stack) -> None:
    """s53t8 F2: psql killed by SIGPIPE came out as 243 (Python's -13 taken modulo 256)."""
    result = into_a_closed_pipe(
        stack.state_dir, "db", "psql", "-c", "select generate_series(1, 100000)"
    )
    assert result.returncode == cli.BROKEN_PIPE_EXIT, result.stderr


def test_every_command_has_help() -> None:
    for args in (
        [], ["dev"], ["invoke"], ["cron"], ["cron", "list"], ["cron", "run"], ["db"],
        ["db", "migrate"], ["db", "downgrade"], ["db", "reset"], ["db", "backup"],
        ["db", "restore"], ["db", "backups"], ["db", "restore-from-s3"], ["db", "psql"],
        ["token"], ["openapi"], ["check"], ["package"], ["env"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            cli.main([*args, "--help"])
        assert exited.value.code == 0, args


def test_every_command_is_in_the_local_stack_docs_table() -> None:
    """README: docs/local-stack.md describes every `keyflash` command (s45t2 F6: not `package`)."""
    (commands,) = [
        action
        for action in cli.build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    rows = (ROOT / "docs" / "local-stack.md").read_text().split("\n## Commands\n")[1]
    documented = set(re.findall(r"^\| `keyflash ([\w-]+)", rows, re.MULTILINE))
    assert set(commands.choices) - documented == set()


def test_legacy_delegates_or_says_it_is_not_available(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "devkit.legacy" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert cli.main(["legacy", "backfill"]) == 1
    assert capsys.readouterr().err.strip() == (
        "keyflash: keyflash legacy is not available: devkit/legacy.py does not exist yet"
    )
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    if real_find_spec("devkit.legacy") is None:
        return
    with pytest.raises(SystemExit) as exited:  # the delegate's own help, no database needed
        cli.main(["legacy", "verify", "--help"])
    assert exited.value.code == 0
    assert "verify" in capsys.readouterr().out


def test_legacy_help_names_the_keyflash_form_and_every_action(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """s53t8 F4: the actions' usage said `python -m devkit.legacy`, the top level listed only
    backfill|verify and named the state dir DIR in its usage but STATE_DIR in its options."""
    assert cli.main(["legacy", "--help"]) == 0
    top = capsys.readouterr().out
    assert top.startswith("usage: keyflash legacy ")
    for action in ("backfill", "verify", "repair", "reattach"):
        assert action in top, action
    assert "--state-dir STATE_DIR" not in top and "--state-dir DIR" in top
    for action in ("backfill", "verify", "repair", "reattach"):
        with pytest.raises(SystemExit) as exited:
            cli.main(["legacy", action, "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: keyflash legacy {action} "), out
        assert "devkit.legacy" not in out


def test_legacy_options_are_all_described() -> None:
    from devkit import legacy

    (actions,) = [
        action
        for action in legacy._parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    for name, sub in actions.choices.items():
        for option in sub._actions:
            assert option.help, f"{name} {option.option_strings or option.dest}"


def test_unexpected_errors_are_one_line_without_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def explode(args: argparse.Namespace) -> int:
        raise RuntimeError("cannot reach postgresql://u:hunter2@db.example.com/x\nmore detail")

    parser = cli.build_parser()
    args = parser.parse_args(["openapi"])
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_known_args", lambda argv: (args, []))
    args.handler = explode
    assert cli.main(["openapi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hunter2" not in err and "RuntimeError" in err


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_everything_and_leaves_nothing(spare_state_dir: Path, signum: int) -> None:
    running = start_dev(spare_state_dir)
    pids = running.processes()
    postmaster = int((spare_state_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    assert postmaster in pids and len(pids) >= 3  # dev, its watchdog, PostgreSQL and children
    assert running.stop(signum) == 0, running.output()
    assert_nothing_left(spare_state_dir, pids)
    assert "stopped" in running.output()


def test_sigterm_during_startup_unwinds_cleanly(spare_state_dir: Path) -> None:
    port = free_port()
    log = spare_state_dir.with_name(spare_state_dir.name + "-interrupted.log")
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [KEYFLASH, "dev", "--port", str(port)],
            env=cli_env(spare_state_dir),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_until(
            lambda: "PostgreSQL" in log.read_text() or process.poll() is not None,
            READY_TIMEOUT_S,
            "keyflash dev starts PostgreSQL",
        )
        pids = stack_processes(spare_state_dir, process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_nothing_left(spare_state_dir, pids)
    assert "Traceback" not in log.read_text()


def test_kill_9_is_cleaned_up_by_the_watchdog(spare_state_dir: Path) -> None:
    running = start_dev(spare_state_dir)
    pids = running.processes()
    assert running.stop(signal.SIGKILL) == -signal.SIGKILL
    assert_nothing_left(spare_state_dir, pids)
    log = (spare_state_dir / "watchdog.log").read_text()
    assert "exited without cleaning up" in log and "stopped PostgreSQL" in log


def test_a_stale_lock_is_detected_and_cleared(spare_state_dir: Path) -> None:
    ghost = subprocess.Popen(["true"])
    ghost.wait()  # a pid that no longer runs
    lock = spare_state_dir / "stack.lock"
    lock.write_text(json.dumps({"pid": ghost.pid, "command": "dev", "url": "http://x"}))
    result = keyflash("db", "psql", "-tAc", "select 1", state_dir=spare_state_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert f"cleared a stale lock left by pid {ghost.pid}" in result.stderr
    assert not lock.exists()


def test_trust_proxy_true_takes_the_forwarded_client_as_deployed(spare_state_dir: Path) -> None:
    running = start_dev(spare_state_dir, TRUST_PROXY="true")
    try:
        remaining = {
            forged: httpx.get(
                f"{running.url}/api/health",
                headers={"X-Forwarded-For": f"{forged}, 10.0.0.1"},
                timeout=10,
            ).headers["x-ratelimit-remaining"]
            for forged in ("198.51.100.7", "203.0.113.9")
        }
        assert len(set(remaining.values())) == 1  # two clients, two fresh buckets
        assert stored_client_ips(running, "trusted", "198.51.100.7") == ["198.51.100.0"]
    finally:
        assert running.stop() == 0, running.output()


def test_dev_checkout_then_the_signed_webhook_makes_the_user_pro(spare_state_dir: Path) -> None:
    """The billing round trip through the local stack over HTTP, with a local fake of the
    Stripe API (tests/support/fake_stripe.py) in place of Stripe."""
    with fake_stripe.serve() as stripe_api:
        running = start_dev(
            spare_state_dir,
            BILLING_ENABLED="true",
            STRIPE_SECRET_KEY=fake_stripe.API_KEY,
            STRIPE_PRICE_PRO=fake_stripe.PRICE,
            STRIPE_API_BASE=stripe_api.url,
            STRIPE_WEBHOOK_SECRET=stripe_events.SECRET,
        )
        try:
            user = f"cli_billing_{os.getpid()}_{time.monotonic_ns()}"
            auth = {"Authorization": f"Bearer {token_for(running, user)}"}
            with httpx.Client(base_url=running.url, headers=auth, timeout=20) as client:
                assert client.post("/api/billing/portal").status_code == 404  # never paid
                started = client.post("/api/checkout")
                assert started.status_code == 200, started.text
                [session_id] = stripe_api.sessions
                assert started.json() == {"url": stripe_api.sessions[session_id]["url"]}
                paid = stripe_api.complete(session_id, customer="cus_cli", subscription="sub_cli")
                body = json.dumps(stripe_events.stripe_event("checkout.session.completed", paid))
                delivered = httpx.post(
                    f"{running.url}{stripe_events.PATH}",
                    content=body,
                    headers={"stripe-signature": stripe_events.sign(body)},
                    timeout=20,
                )
                assert delivered.json() == {"received": True}, delivered.text
                assert client.get("/api/me").json()["tier"] == "PRO"
                assert client.post("/api/checkout").status_code == 409
                portal = client.post("/api/billing/portal")
                assert portal.status_code == 200, portal.text
            [sent] = stripe_api.created("/v1/billing_portal/sessions")
            assert sent.params["customer"] == "cus_cli"
        finally:
            assert running.stop() == 0, running.output()


@contextmanager
def serve_jwks(private_pem: bytes, kid: str) -> Iterator[str]:
    """A JWKS holding `private_pem`'s public half under `kid`, as a Clerk instance serves it;
    its URL while the block runs."""
    public = serialization.load_pem_private_key(private_pem, None).public_key()
    jwk = json.loads(RSAAlgorithm.to_jwk(public)) | {"kid": kid, "use": "sig", "alg": "RS256"}
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_dev_verifies_with_an_exported_clerk_jwks_url(spare_state_dir: Path) -> None:
    """`CLERK_JWKS_URL=… keyflash dev` verifies tokens as a deployment with only that setting
    does: a Clerk instance's tokens are accepted and the dev key's refused. The banner says so,
    `keyflash token` refuses to mint what would be refused, and `keyflash env` hands it on."""
    clerk_pem = new_private_pem()
    with serve_jwks(clerk_pem, "ins_kid_1") as jwks_url:
        running = start_dev(spare_state_dir, args=("--no-crons",), CLERK_JWKS_URL=jwks_url)
        try:
            output = running.output()
            clerk = [line for line in output.splitlines() if line.startswith("  Clerk ")]
            assert clerk == [
                f"  Clerk      CLERK_JWKS_URL {jwks_url} (yours): tokens of that Clerk "
                "instance only, not keyflash token's"
            ], output
            assert "Dev token" not in output and "export TOKEN=" not in output
            user = f"jwks_{os.getpid()}"
            now = int(time.time())
            claims = {"sub": user, "iat": now, "exp": now + 300, "sid": "sess_1"}
            token = jwt.encode(claims, clerk_pem, "RS256", headers={"kid": "ins_kid_1"})
            me = httpx.get(f"{running.url}/api/me", headers=bearer(token), timeout=20)
            assert (me.status_code, me.json().get("id")) == (200, user), me.text
            dev = issue_token(dev_key(spare_state_dir), user)
            refused = httpx.get(f"{running.url}/api/me", headers=bearer(dev), timeout=20)
            assert refused.status_code == 401, refused.text
            minted = keyflash("token", "--user", user, state_dir=spare_state_dir)
            assert_one_line_failure(minted, "CLERK_JWKS_URL", "would refuse")
            exported = keyflash("env", state_dir=spare_state_dir)
            assert f"export CLERK_JWKS_URL={shlex.quote(jwks_url)}\n" in exported.stdout
            assert "export CLERK_JWT_KEY=''\n" in exported.stdout, exported.stdout
            assert "export CLERK_ISSUER=''\n" in exported.stdout
        finally:
            assert running.stop() == 0, running.output()


def test_dev_warns_when_upstash_redis_rest_url_answers_nothing(spare_state_dir: Path) -> None:
    """One warning before "ready"; the progress names that URL, not an emulator (none starts).
    A password in the URL's user info is masked there, in the banner and in its environment
    section, as the database URL's is."""
    nowhere = f"http://u:{'p' * 40}@127.0.0.1:{free_port()}"
    running = start_dev(
        spare_state_dir, UPSTASH_REDIS_REST_URL=nowhere, UPSTASH_REDIS_REST_TOKEN="t" * 40
    )
    try:
        output = running.output()
    finally:
        assert running.stop() == 0, running.output()
    warnings = [line for line in output.splitlines() if line.startswith("keyflash: warning:")]
    assert len(warnings) == 1, output
    masked = nowhere.replace("p" * 40, "***")
    assert masked in warnings[0] and "does not answer" in warnings[0]
    assert f"Redis      {masked}  (UPSTASH_REDIS_REST_URL)" in output
    assert f"UPSTASH_REDIS_REST_URL={masked}" in output
    assert "t" * 40 not in output and "p" * 40 not in output
    assert output.index(warnings[0]) < output.index("ready in")
    assert "keyflash dev: using UPSTASH_REDIS_REST_URL\n" in output
    assert "starting the Upstash emulator" not in output, output


def postmaster_pid(state_dir: Path) -> int:
    return int((state_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


def kill_postgres(state_dir: Path) -> int:
    pid = postmaster_pid(state_dir)
    os.kill(pid, signal.SIGKILL)
    return pid


def restarted(running: Stack, times: int) -> Callable[[], bool]:
    return lambda: running.output().count("PostgreSQL is back") == times


def test_dev_restarts_a_dead_postgres_then_stops_after_the_last_attempt(
    spare_state_dir: Path,
) -> None:
    from devkit.dev import MAX_POSTGRES_RESTARTS

    running = start_dev(spare_state_dir)
    try:
        token = token_for(running, "survivor")
        for attempt in range(1, MAX_POSTGRES_RESTARTS + 1):
            dead = kill_postgres(spare_state_dir)
            wait_until(
                restarted(running, attempt),
                READY_TIMEOUT_S,
                f"keyflash dev restarts PostgreSQL ({attempt})",
            )
            assert f"restarting it (attempt {attempt} of {MAX_POSTGRES_RESTARTS})" in (
                running.output()
            )
            assert postmaster_pid(spare_state_dir) != dead
            # Served from the new server through the same URL (the pool was renewed).
            searches = httpx.get(f"{running.url}/api/searches", headers=bearer(token), timeout=30)
            assert searches.status_code == 200, searches.text
        pids = running.processes()
        kill_postgres(spare_state_dir)
        assert running.process.wait(timeout=STOP_TIMEOUT_S) == 1, running.output()
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
    assert_nothing_left(spare_state_dir, pids)
    errors = [line for line in running.output().splitlines() if "stopping the stack" in line]
    assert errors == [
        f"keyflash: PostgreSQL in {spare_state_dir / 'pgdata'} stopped unexpectedly again after "
        f"{MAX_POSTGRES_RESTARTS} restarts; stopping the stack "
        f"(see {spare_state_dir / 'pgdata' / 'server.log'})"
    ]
    assert "Traceback" not in running.output()


@pytest.mark.parametrize("spoiler", ["port taken", "bad setting"])
def test_dev_stops_with_one_line_when_postgres_cannot_come_back(
    spare_state_dir: Path, spoiler: str
) -> None:
    """The stack is frozen (SIGSTOP) while PostgreSQL is killed and its restart spoiled, so
    the restart it attempts once thawed fails for a known reason."""
    running = start_dev(spare_state_dir)
    auto_conf = spare_state_dir / "pgdata" / "postgresql.auto.conf"
    saved_conf = auto_conf.read_bytes()
    port = int((spare_state_dir / "pgdata" / "keyflash.port").read_text())
    squatter = socket.socket()
    try:
        pids = running.processes()
        running.process.send_signal(signal.SIGSTOP)
        dead = kill_postgres(spare_state_dir)
        wait_until(lambda: not alive(dead), STOP_TIMEOUT_S, "the postmaster is gone")
        if spoiler == "port taken":
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            wait_until(lambda: port_bound(squatter, port), STOP_TIMEOUT_S, "the port is ours")
            squatter.listen()
            expected = "could only restart on port"
        else:
            auto_conf.write_bytes(saved_conf + b"shared_buffers = 'plenty'\n")
            expected = "stopped unexpectedly and did not restart"
        running.process.send_signal(signal.SIGCONT)
        assert running.process.wait(timeout=READY_TIMEOUT_S) == 1, running.output()
    finally:
        squatter.close()
        auto_conf.write_bytes(saved_conf)
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
    assert_nothing_left(spare_state_dir, pids)
    errors = [line for line in running.output().splitlines() if "stopping the stack" in line]
    assert len(errors) == 1 and errors[0].startswith("keyflash: PostgreSQL in "), errors
    assert expected in errors[0]
    assert "Traceback" not in running.output()


def port_bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def test_db_backup_reset_restore_round_trip(spare_state_dir: Path) -> None:
    archive = spare_state_dir / "backup.dump"

    def psql(sql: str) -> str:
        result = keyflash("db", "psql", "-tAc", sql, state_dir=spare_state_dir)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    # migrated here: the module's earlier tests may have run on another xdist worker
    migrated = keyflash("db", "migrate", state_dir=spare_state_dir)
    assert migrated.returncode == 0, migrated.stderr
    marker = f"roundtrip_{os.getpid()}"
    psql(
        'INSERT INTO users (id, email, "updatedAt") '
        f"VALUES ('{marker}', '{marker}@example.com', now())"
    )
    backup = keyflash("db", "backup", str(archive), state_dir=spare_state_dir)
    assert backup.returncode == 0, backup.stderr
    assert archive.read_bytes().startswith(b"PGDMP")
    # s53t8 F5: "35 tables written" after 32 tables (the partitioned parents hold no rows)
    dumped = re.findall(r"^backup: (\S+)$", backup.stderr, re.MULTILINE)
    assert f"backup: {len(dumped)} tables written to " in backup.stderr, backup.stderr

    refused = keyflash("db", "reset", state_dir=spare_state_dir)  # no terminal, no --yes
    assert_one_line_failure(refused, "--yes")
    assert psql(f"SELECT count(*) FROM users WHERE id = '{marker}'") == "1"

    reset = keyflash("db", "reset", "--yes", state_dir=spare_state_dir)
    assert reset.returncode == 0, reset.stderr
    assert "seeded" in reset.stdout
    assert psql(f"SELECT count(*) FROM users WHERE id = '{marker}'") == "0"

    restore = keyflash("db", "restore", str(archive), "--yes", state_dir=spare_state_dir)
    assert restore.returncode == 0, restore.stderr
    assert f"restore: {len(dumped)} tables restored from " in restore.stderr, restore.stderr
    assert psql(f"SELECT count(*) FROM users WHERE id = '{marker}'") == "1"
    check = keyflash("db", "check", state_dir=spare_state_dir)
    assert check.returncode == 0, check.stderr
    assert "at head" in check.stdout
    assert not stack_processes(spare_state_dir)  # each command stopped what it started


@pytest.fixture
def password_role_url(postgres_server_url: str) -> Iterator[str]:
    """A database owned by a role that must give its password (SCRAM, as Neon asks): the URL
    holds it. The suite's server trusts every client, so a line for this role goes first in
    its pg_hba.conf while the test runs; every other role still matches the trust lines."""
    import psycopg

    role, password = f"kf_pw_{os.getpid()}", "Pw-S3cret_only_in_the_url"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        row = admin.execute("SHOW hba_file").fetchone()
        assert row is not None
        hba = Path(row[0])
        trusting = hba.read_text()
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")
        admin.execute(f"CREATE DATABASE {role} OWNER {role}")
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{trusting}")
        admin.execute("SELECT pg_reload_conf()")
        server = conninfo_to_dict(postgres_server_url)
        url = f"postgresql://{role}:{password}@127.0.0.1:{server['port']}/{role}"
        try:
            unchecked = url.replace(password, "wrong")
            wait_until(lambda: _refused(unchecked), READY_TIMEOUT_S, "the server asks")
            yield url
        finally:
            hba.write_text(trusting)
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f"DROP DATABASE IF EXISTS {role} WITH (FORCE)")
            admin.execute(f"DROP ROLE {role}")


def _refused(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url).close()
    except psycopg.OperationalError:
        return True
    return False


def test_db_backup_restore_and_psql_use_the_urls_password(
    empty_state_dir: Path, password_role_url: str
) -> None:
    """`db backup` counted the tables over a connection without the URL's password, so it
    failed with "no password supplied" on every server that asks for one."""
    env = {"DATABASE_URL": password_role_url}
    archive = empty_state_dir / "backup.dump"
    steps = (
        ("db", "migrate"),
        ("db", "backup", str(archive)),
        ("db", "restore", str(archive), "--yes"),
        ("db", "psql", "-tAc", "SELECT current_user"),
    )
    for args in steps:
        result = keyflash(*args, state_dir=empty_state_dir, **env)
        assert result.returncode == 0, (args, result.stderr)
        assert "S3cret" not in result.stdout + result.stderr
    assert result.stdout.strip() == f"kf_pw_{os.getpid()}"
    assert archive.read_bytes().startswith(b"PGDMP")
    assert not (empty_state_dir / "pgdata").exists()  # the URL's server, not the state dir's


def test_the_lock_records_no_secret_given_to_dev(
    empty_state_dir: Path, password_role_url: str
) -> None:
    """docs/local-stack.md, Settings from your shell: a DATABASE_URL (its password), an
    Upstash token and a Clerk webhook secret from dev's own environment stayed in stack.lock.
    Now a command borrowing the stack without them is refused, naming the variable (it would
    use another database or Redis), and with them in its own environment it works."""
    from devkit.upstash_emulator import UpstashEmulator

    with UpstashEmulator() as upstash:
        redis = {"UPSTASH_REDIS_REST_URL": upstash.url, "UPSTASH_REDIS_REST_TOKEN": upstash.token}
        yours = {"DATABASE_URL": password_role_url, "CLERK_WEBHOOK_SECRET": SECRET} | redis
        running = start_dev(empty_state_dir, args=("--no-crons",), **yours)
        try:
            lock = (empty_state_dir / "stack.lock").read_text()
            no_database = keyflash("invoke", "health", state_dir=empty_state_dir, **redis)
            no_redis = keyflash("env", state_dir=empty_state_dir, DATABASE_URL=password_role_url)
            invoked = keyflash("invoke", "health", state_dir=empty_state_dir, **yours)
            exported = keyflash("env", state_dir=empty_state_dir, **yours)
        finally:
            assert running.stop() == 0, running.output()
    assert "S3cret" not in lock and upstash.token not in lock and SECRET not in lock, lock
    assert_one_line_failure(
        no_database, "uses DATABASE_URL from its own environment", "set DATABASE_URL for"
    )
    assert_one_line_failure(no_redis, "set UPSTASH_REDIS_REST_URL and its token for")
    assert invoked.returncode == 0, invoked.stderr
    assert '"status": "healthy"' in invoked.stdout, invoked.stdout
    assert exported.returncode == 0, exported.stderr
    assert f"export UPSTASH_REDIS_REST_TOKEN={upstash.token}" in exported.stdout


def test_db_downgrade_and_migrate(spare_state_dir: Path) -> None:
    first = keyflash("db", "migrate", state_dir=spare_state_dir)  # a new cluster starts empty
    assert first.returncode == 0, first.stderr
    down = keyflash("db", "downgrade", "-1", state_dir=spare_state_dir)
    assert down.returncode == 0 and down.stdout.startswith("downgraded "), down.stderr
    behind = keyflash("db", "check", state_dir=spare_state_dir)
    assert_one_line_failure(behind, "keyflash db migrate")
    up = keyflash("db", "migrate", state_dir=spare_state_dir)
    assert up.returncode == 0 and up.stdout.startswith("migrated "), up.stderr
    bad = keyflash("db", "downgrade", "not_a_revision", state_dir=spare_state_dir)
    assert_one_line_failure(bad, "not_a_revision")


# --------------------------------------------------------------------------- cron schedules


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/5 * * * *", "2026-11-25T13:37:10", "2026-11-25T13:40:00"),
        ("0 3 * * *", "2026-11-25T03:00:00", "2026-11-26T03:00:00"),
        ("5 0 1 * *", "2026-12-31T23:59:00", "2027-01-01T00:05:00"),
        ("30 9 * * MON-FRI", "2026-11-28T10:00:00", "2026-11-30T09:30:00"),  # Sat → Mon
        ("0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),
        ("0 12 13 * 5", "2026-11-01T00:00:00", "2026-11-06T12:00:00"),  # day OR Friday
        ("0 0 * * 7", "2026-11-25T00:00:00", "2026-11-29T00:00:00"),  # 7 is Sunday
    ],
)
def test_schedule_next_run(expression: str, after: str, expected: str) -> None:
    moment = datetime.fromisoformat(after).replace(tzinfo=UTC)
    assert Schedule.parse(expression).next_after(moment) == datetime.fromisoformat(
        expected
    ).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("* * * *", "has 4 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "runs backwards"),
        ("x * * * *", "not a number"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_schedule_rejects_bad_expressions(expression: str, fragment: str) -> None:
    with pytest.raises(CronSyntaxError, match=re.escape(fragment)):
        Schedule.parse(expression).next_after(datetime(2026, 1, 1, tzinfo=UTC))


# --------------------------------------------------------------------------- in-process units


def test_lock_waits_for_a_cleanup_then_gives_up_with_a_pointer(empty_state_dir: Path) -> None:
    import fcntl

    from devkit.console import CliError
    from devkit.stack import StackLock

    ghost = subprocess.Popen(["true"])
    ghost.wait()
    path = empty_state_dir / "stack.lock"
    path.write_text(json.dumps({"pid": ghost.pid, "command": "dev"}))
    held = os.open(path, os.O_RDWR)  # as a watchdog still cleaning up holds it
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(CliError, match="has not finished within"):
            StackLock(empty_state_dir).acquire("dev", wait_for_cleanup=0.3)
    finally:
        os.close(held)
    lock = StackLock(empty_state_dir)
    lock.acquire("dev")  # the holder is gone: taken over, reported as stale
    assert lock.stale_pid == ghost.pid
    lock.release()
    assert not path.exists()


def test_scheduler_fires_due_jobs_and_skips_overlapping_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    from datetime import timedelta

    from devkit import crons

    job = crons.CronJob("tick", "none", "/api/cron/tick", Schedule.parse("* * * * *"), "test")
    release = threading.Event()
    started = threading.Event()
    calls: list[str] = []

    def slow_run(job: crons.CronJob) -> crons.RunResult:
        calls.append(job.name)
        started.set()
        release.wait(10)
        return crons.RunResult(job.name, True, 1.0, result={"ok": True})

    monkeypatch.setattr(crons, "run_job", slow_run)
    now = [datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)]
    lines: list[str] = []
    reported = threading.Condition()

    def report(line: str) -> None:
        with reported:
            lines.append(line)
            reported.notify_all()

    scheduler = crons.Scheduler([job], report=report, clock=lambda: now[0])
    assert scheduler.next_runs() == {"tick": datetime(2026, 1, 1, 12, 1, tzinfo=UTC)}
    scheduler.start()
    try:
        assert not started.is_set()
        now[0] += timedelta(minutes=1)  # 12:01:30: due
        assert started.wait(10)
        now[0] += timedelta(minutes=1)  # due again while the first run is still going
        with reported:
            assert reported.wait_for(lambda: any("skipped" in line for line in lines), 10)
        release.set()
        with reported:
            assert reported.wait_for(lambda: any(": ok in " in line for line in lines), 10)
    finally:
        release.set()
        scheduler.stop()
    assert calls == ["tick"]


def test_run_job_reports_a_failing_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from devkit import crons

    module = types.ModuleType("kf_failing_cron")

    def handler(event: dict[str, Any], context: Any) -> None:
        assert event["detail-type"] == "Scheduled Event"
        raise ValueError("disk full")

    module.lambda_handler = handler  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kf_failing_cron", module)
    job = crons.CronJob("failing", "kf_failing_cron", "/api/cron/failing", None, "test")
    result = crons.run_job(job)
    assert not result.ok
    assert result.summary().startswith("cron failing: FAILED in ")
    assert result.summary().endswith("ValueError: disk full")


def test_invoke_reports_a_handler_that_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from devkit import invoke
    from devkit.console import CliError

    module = types.ModuleType("kf_raising_function")

    def handler(event: dict[str, Any], context: Any) -> None:
        raise KeyError("boom")

    module.lambda_handler = handler  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kf_raising_function", module)
    target = invoke.Target("cron", "cron.raising", "kf_raising_function")
    with pytest.raises(
        CliError, match=re.escape("kf_raising_function.lambda_handler raised KeyError")
    ):
        invoke.invoke(target, event_file=None, request=invoke.Request(), repeat=1, token_for=str)


def test_gateway_routing_and_openapi_merge(caplog: pytest.LogCaptureFixture) -> None:
    import types

    from fastapi import FastAPI
    from fastapi.routing import APIRoute
    from pydantic import create_model
    from starlette.testclient import TestClient

    from devkit import gateway

    def function(name: str, field: type) -> gateway.Function:
        body_model = create_model("Body", value=(field, ...))
        app = FastAPI(title=name)

        def create(body: Any) -> dict[str, str]:
            return {"served_by": name}

        create.__annotations__ = {"body": body_model, "return": dict[str, str]}
        app.post(f"/api/{name}")(create)

        @app.get("/api/shared/{item}")
        def shared(item: str) -> dict[str, str]:
            return {"served_by": name}

        module = types.ModuleType(name)
        module.app = app  # type: ignore[attr-defined]
        routes = tuple(
            gateway.Route(r.path, frozenset(r.methods or ()), r.path_regex)
            for r in app.routes
            if isinstance(r, APIRoute)
        )
        return gateway.Function(name, module, routes)

    first, second = function("first", int), function("second", str)
    gate = gateway.Gateway([first, second])
    assert gateway.conflicts([first, second]) == ["/api/shared/{item}: first and second"]
    with TestClient(gate) as client:
        assert client.post("/api/second", json={"value": "x"}).json() == {"served_by": "second"}
        assert client.get("/api/shared/1").json() == {"served_by": "first"}  # first one wins
        assert client.get("/api/second").status_code == 405  # the owner answers
        assert client.put("/api/shared/1").status_code == 405  # every method goes to the first
        missing = client.get("/api/third")
        assert missing.status_code == 404 and missing.json()["statusCode"] == 404
        # A decoded %0A or %00 must not forge a log line or make the log binary.
        with caplog.at_level(logging.INFO, logger="keyflash.gateway"):
            client.get("/api/shared/x%0A12:00:00 GET%00")
            client.get("/api/third%0A12:00:00 GET /api/admin/flags -> admin_flags 200 (1 ms)")
        lines = [record.getMessage() for record in caplog.records]
        assert len(lines) == 2 and not any("\n" in line or "\x00" in line for line in lines)
        assert lines[0].startswith("GET /api/shared/x\\x0a12:00:00 GET\\x00 -> first 200 (")
        assert lines[1].startswith(
            "GET /api/third\\x0a12:00:00 GET /api/admin/flags -> admin_flags 200 (1 ms)"
            " -> no function 404 (req_"
        )
    merged = gateway.merged_openapi([first, second])
    schemas = merged["components"]["schemas"]
    assert {"Body", "Body__second"} <= set(schemas)  # same name, different shapes: both kept
    second_ref = merged["paths"]["/api/second"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["$ref"]
    assert second_ref == "#/components/schemas/Body__second"
    assert merged["paths"]["/api/first"]["post"]["tags"] == ["first"]


def test_gateway_request_lines_are_one_bounded_line_without_emails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What `splitlines()` and log viewers break at (U+2028, U+0085) is escaped as control
    characters are, a path is cut to a bounded length, a path segment with an email in it is
    masked, and the gateway's own 404 carries an X-Request-ID as every answer does."""
    from starlette.testclient import TestClient

    from devkit import gateway

    with (
        TestClient(gateway.Gateway([])) as client,
        caplog.at_level(logging.INFO, logger="keyflash.gateway"),
    ):
        missing = client.get("/api/x%E2%80%A8FORGED%C2%85too%E2%80%A9")
        client.get("/api/" + "a" * 5_000)  # under every platform's head limit
        for email in ("alex.doe%40", "kyle%2540", "kim%25252540", "kate%EF%BC%A0", "k%EF%B9%AB"):
            client.get(f"/api/nope/{email}example.com/more")
    assert missing.status_code == 404
    assert re.fullmatch(r"req_[0-9a-f]{16}", missing.headers["x-request-id"])
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 7 and all(len(line.splitlines()) == 1 for line in lines)
    assert lines[0].startswith("GET /api/x\\u2028FORGED\\x85too\\u2029 -> no function 404")
    assert missing.headers["x-request-id"] in lines[0]
    assert len(lines[1]) < 400 and "(+" in lines[1]
    for line in lines[2:]:  # encoded once or more, or U+FF20, U+FE6B
        assert line.startswith("GET /api/nope/…/more -> no function 404"), line


def test_the_gateways_404_has_the_functions_security_headers_and_its_docs_page_no_csp() -> None:
    """The gateway's 404 stands for a function's answer: the same security headers. The Swagger
    page at /docs runs an inline script from a CDN, which that CSP and COEP would block."""
    from starlette.testclient import TestClient

    from devkit import gateway
    from shared.http.security_headers import SECURITY_HEADERS

    with TestClient(gateway.Gateway([])) as client:
        missing = client.get("/api/nope")
        docs = client.get("/docs")
    assert missing.status_code == 404 and docs.status_code == 200
    assert {name: missing.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert "content-security-policy" not in docs.headers
    assert "cross-origin-embedder-policy" not in docs.headers


def test_the_stack_reads_the_vercel_upstash_names_as_its_own(
    monkeypatch: pytest.MonkeyPatch, empty_state_dir: Path
) -> None:
    """KV_REST_API_URL and _TOKEN (Vercel's Upstash integration) are used as
    UPSTASH_REDIS_REST_URL and _TOKEN are: no emulator starts, the progress names the
    variable, and the functions get that Redis."""
    from devkit.stack import Database, Session, function_env
    from devkit.tokens import dev_key
    from devkit.upstash_emulator import UpstashEmulator

    for name in ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    database = Database(
        "postgresql://u@127.0.0.1/db", "postgresql://u@127.0.0.1/db", "test", "test"
    )
    steps: list[str] = []
    with UpstashEmulator() as upstash:
        monkeypatch.setenv("KV_REST_API_URL", upstash.url)
        monkeypatch.setenv("KV_REST_API_TOKEN", upstash.token)
        with Session(empty_state_dir, "test") as session:
            redis = session.redis(steps.append)
            env = function_env(database, redis, dev_key(empty_state_dir))
        assert (redis.url, redis.token) == (upstash.url, upstash.token)
        assert steps == ["using KV_REST_API_URL"]
        settings = Settings.from_environ({**os.environ, **env})
        assert settings.upstash_redis_rest_url == upstash.url


def test_the_functions_env_agrees_with_every_name_the_developer_exported(
    monkeypatch: pytest.MonkeyPatch, empty_state_dir: Path
) -> None:
    """A KV_REST_API_URL without its token (or a Neon DATABASE_URL_UNPOOLED without
    DATABASE_URL) is not the stack's: the functions get the emulator (and the local database)
    under that name too, never an UPSTASH_REDIS_REST_URL the settings would refuse."""
    from devkit.stack import Database, Session, function_env, shared_database
    from devkit.tokens import dev_key
    from shared.config import get_settings

    for name in ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN", "DIRECT_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KV_REST_API_URL", "https://theirs.upstash.io")
    monkeypatch.setenv("DATABASE_URL_UNPOOLED", "postgresql://u@theirs.neon.tech/db")
    local = "postgresql://postgres@127.0.0.1:1/keyflash"
    database = Database(local, local, "embedded", "embedded")
    with Session(empty_state_dir, "test") as session:
        redis = session.redis()
        env = function_env(database, redis, dev_key(empty_state_dir))
        assert redis.origin == "Upstash emulator, in-memory"
    settings = Settings.from_environ({**os.environ, **env})
    assert (settings.upstash_redis_rest_url, settings.direct_database_url) == (redis.url, local)
    with shared_database(database):
        assert get_settings().direct_database_url == local
    assert os.environ["DATABASE_URL_UNPOOLED"] == "postgresql://u@theirs.neon.tech/db"


def test_upstash_probe_warns_unless_the_url_answers_ping_with_pong(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The check `keyflash dev` makes of a developer's UPSTASH_REDIS_REST_URL, against the
    emulator (right and wrong token) and a server that is not Upstash at all."""
    import http.server
    import threading

    from devkit.dev import _warn_unless_upstash_answers
    from devkit.stack import Redis
    from devkit.upstash_emulator import UpstashEmulator

    class NotUpstash(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>welcome</html>")

        def log_message(self, *args: Any) -> None:
            pass

    emulator = UpstashEmulator()
    emulator.start()
    other = http.server.HTTPServer(("127.0.0.1", 0), NotUpstash)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        warnings = {}
        for case, url, token in (
            ("right token", emulator.url, emulator.token),
            ("wrong token", emulator.url, "wrong-token-0123456789"),
            ("not Upstash", f"http://127.0.0.1:{other.server_address[1]}", "x"),
        ):
            _warn_unless_upstash_answers(Redis(url, token, "KV_REST_API_URL", "KV_REST_API_URL"))
            warnings[case] = capsys.readouterr().err
    finally:
        other.shutdown()
        other.server_close()
        emulator.stop()
    assert warnings["right token"] == ""
    assert "answers PING with HTTP 401, not PONG" in warnings["wrong token"]
    assert "KV_REST_API_URL" in warnings["wrong token"]  # the variable the developer set
    assert "unset KV_REST_API_URL to use the emulator" in warnings["wrong token"]
    assert "not Upstash's JSON" in warnings["not Upstash"]
    assert all(text.count("\n") <= 1 for text in warnings.values())
    assert "wrong-token" not in warnings["wrong token"]


def test_dev_request_and_cron_lines_are_stamped_in_utc_whatever_tz() -> None:
    """The banner's schedules say UTC, and so do the lines (the JSON logs' `ts` form): under
    TZ=America/New_York, noon UTC is stamped 12:00:00.000Z, not the local 08:00:00."""
    script = (
        "import logging; from devkit import dev; dev._configure_logging(False)\n"
        "record = logging.LogRecord('keyflash.cron', logging.INFO, '', 0, 'cron x', None, None)\n"
        "record.created = 1772971200.0  # 2026-03-08T12:00:00Z, after that day's US DST change\n"
        "print(logging.getLogger('keyflash').handlers[0].format(record))"
    )
    env = {**os.environ, "TZ": "America/New_York"}
    printed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=layout.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout == "2026-03-08T12:00:00.000Z cron x\n"
