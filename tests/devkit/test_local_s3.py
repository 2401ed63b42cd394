"""Every cron runs locally, and what a frontend's developer needs from `keyflash dev`.

One `keyflash dev` (its own state dir) with `--cors-origin http://localhost:3000`, driven as a
developer drives it, through `.venv/bin/keyflash` subprocesses:
- the local S3 (moto's server mode on loopback, devkit/local_s3.py): the backup cron's round
  trip (`cron run backup` → `db backups` lists it → `db restore-from-s3` into the recreated
  database → every table's rows equal those at backup time), the exports cron storing a
  download the browser can fetch, and the failure paths with their exit codes;
- CORS: a preflight from the configured origin through the dev server, none from elsewhere;
- `keyflash env --format dotenv` for a Next.js `.env.local`.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from devkit.cli import dotenv_quote
from devkit.console import CliError
from devkit.local_s3 import LOCAL_BUCKET
from devkit.stack import Session
from tests.support.dev_stack import (
    Stack,
    assert_one_line_failure,
    keyflash,
    make_state_dir,
    remove_state_dir,
    running_dev,
    token_for,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")

FRONTEND = "http://localhost:3000"
BACKUP_KEY = re.compile(r"^(keyflash/\d{8}T\d{9}Z/)\s+(\d+(?:\.\d)? (?:B|KiB|MiB))\s+(\S+ \S+)$")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One running `keyflash dev` that lets the frontend's origin through CORS. Its crons run
    only when a test runs them: a scheduled one (metrics, every 5 minutes) would write rows
    between two fingerprints of "nothing was touched"."""
    with running_dev("--cors-origin", FRONTEND, "--no-crons") as running:
        yield running


def holder(stack: Stack) -> dict[str, Any]:
    return dict(json.loads((stack.state_dir / "stack.lock").read_text()))


def fingerprints(stack: Stack) -> dict[str, tuple[int, str]]:
    """Every public table's row count and an md5 of its rows, in a stable order; but
    cron_leases, whose row for the backup itself is in the backup's snapshot (the lease is
    held while it runs) and gone from the database by the time the backup is done."""
    url = holder(stack)["direct_database_url"]
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename NOT IN ('alembic_version', 'cron_leases') ORDER BY 1"
            )
        ]
        found = {}
        for table in tables:
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                    " FROM {} t"
                ).format(sql.Identifier(table))
            ).fetchone()
            assert row is not None
            found[table] = (int(row[0]), str(row[1]))
    return found


def psql(stack: Stack, sql: str) -> str:
    result = keyflash("db", "psql", "-tAc", sql, state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def add_user(stack: Stack, user: str) -> None:
    psql(
        stack,
        f"INSERT INTO users (id, email, \"updatedAt\") VALUES ('{user}', '{user}@e.x', now())",
    )


# --------------------------------------------------------------------------- the local S3


def test_banner_names_the_local_s3_and_the_cors_origins(stack: Stack) -> None:
    output = stack.output()
    endpoint = holder(stack)["stack_env"]["AWS_ENDPOINT_URL_S3"]
    assert re.match(r"^http://127\.0\.0\.1:\d+$", endpoint)
    assert f"S3         s3://{LOCAL_BUCKET} at {endpoint}" in output
    assert f"BACKUP_BUCKET={LOCAL_BUCKET}" in output
    assert re.search(rf"^  CORS .*{re.escape(FRONTEND)}", output, re.MULTILINE), output


def test_backup_cron_round_trip_through_the_local_s3(stack: Stack) -> None:
    add_user(stack, "before_backup")
    at_backup = fingerprints(stack)
    ran = keyflash("cron", "run", "backup", state_dir=stack.state_dir)
    assert ran.returncode == 0, ran.stderr
    assert f"s3://{LOCAL_BUCKET}/keyflash/" in ran.stdout

    listed = keyflash("db", "backups", state_dir=stack.state_dir)
    assert listed.returncode == 0, listed.stderr
    rows = [m for line in listed.stdout.splitlines() if (m := BACKUP_KEY.match(line.strip()))]
    assert len(rows) == 1, listed.stdout
    key = rows[0].group(1)

    add_user(stack, "after_backup")
    assert fingerprints(stack) != at_backup
    remote = "postgresql://user:secret@ep-cool-name-123.eu-central-1.aws.neon.tech/keyflash"
    refused = keyflash(
        "db", "restore-from-s3", key, "--yes", state_dir=stack.state_dir, DATABASE_URL=remote
    )
    assert refused.returncode == 1
    assert "secret" not in assert_one_line_failure(refused, "refusing to restore into")
    restored = keyflash("db", "restore-from-s3", key, "--yes", state_dir=stack.state_dir)
    assert restored.returncode == 0, restored.stderr
    assert f"restored s3://{LOCAL_BUCKET}/{key}manifest.json" in restored.stdout
    assert fingerprints(stack) == at_backup
    assert psql(stack, "SELECT count(*) FROM users WHERE id = 'after_backup'") == "0"
    assert httpx.get(f"{stack.url}/api/health", timeout=10).status_code == 200


def test_restore_from_s3_failures_are_one_line_with_exit_codes(stack: Stack) -> None:
    before = fingerprints(stack)
    missing = keyflash(
        "db", "restore-from-s3", "keyflash/20000101T000000000Z/", "--yes",
        state_dir=stack.state_dir,
    )  # fmt: skip
    assert missing.returncode == 1
    assert_one_line_failure(missing, "keyflash/20000101T000000000Z/manifest.json does not exist")
    other_bucket = keyflash(
        "db", "restore-from-s3", "s3://no-such-bucket/x/", "--yes", state_dir=stack.state_dir
    )
    assert other_bucket.returncode == 1
    assert_one_line_failure(other_bucket, "no-such-bucket")
    no_key = keyflash("db", "restore-from-s3", state_dir=stack.state_dir)
    assert no_key.returncode == 2
    assert_one_line_failure(no_key, "KEY")
    unconfirmed = keyflash("db", "restore-from-s3", "keyflash/x/", state_dir=stack.state_dir)
    assert unconfirmed.returncode == 1
    assert fingerprints(stack) == before  # nothing was touched


def test_backup_commands_without_a_bucket_say_what_to_do(tmp_path: Path) -> None:
    state_dir = make_state_dir()
    try:
        for command in (("db", "backups"), ("db", "restore-from-s3", "k/", "--yes")):
            result = keyflash(*command, state_dir=state_dir)
            assert result.returncode == 1
            assert_one_line_failure(result, "BACKUP_BUCKET is not set", "start keyflash dev")
    finally:
        remove_state_dir(state_dir)


def test_exports_cron_stores_a_download_in_the_local_s3(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {token_for(stack, 'demo')}"}
    requested = httpx.post(f"{stack.url}/api/me/export", headers=headers, timeout=30)
    assert requested.status_code == 202, requested.text
    location = requested.headers["location"]
    ran = keyflash("cron", "run", "exports", state_dir=stack.state_dir)
    assert ran.returncode == 0, ran.stderr
    status = httpx.get(f"{stack.url}{location}", headers=headers, timeout=30)
    export = status.json()["export"]
    assert export["status"] == "ready", status.text
    download = httpx.get(export["url"], timeout=30)
    assert download.status_code == 200
    document = json.loads(gzip.decompress(download.content))
    assert "demo" in json.dumps(document)


def test_a_developers_own_backup_bucket_starts_no_local_s3(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BACKUP_BUCKET", "my-own-bucket")
    with Session(tmp_path, "dev") as session:
        assert session.local_s3() == {}


# --------------------------------------------------------------------------- CORS


def test_preflight_from_the_configured_origin_through_the_dev_server(stack: Stack) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    allowed = httpx.options(
        f"{stack.url}/api/searches", headers={"Origin": FRONTEND, **ask}, timeout=10
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == FRONTEND
    assert "POST" in allowed.headers["access-control-allow-methods"]
    elsewhere = httpx.options(
        f"{stack.url}/api/searches", headers={"Origin": "http://localhost:5173", **ask}, timeout=10
    )
    assert "access-control-allow-origin" not in elsewhere.headers


@pytest.mark.parametrize("origin", ["localhost:3000", "http://localhost:3000/app", "ftp://x"])
def test_cors_origin_must_be_an_origin(origin: str, tmp_path: Path) -> None:
    result = keyflash("dev", "--cors-origin", origin, state_dir=tmp_path, timeout=60)
    assert result.returncode == 2
    assert_one_line_failure(result, "is not an origin")


# --------------------------------------------------------------------------- env


def test_env_dotenv_for_a_nextjs_env_local(stack: Stack) -> None:
    exported = keyflash("env", state_dir=stack.state_dir)
    dotenv = keyflash("env", "--format", "dotenv", state_dir=stack.state_dir)
    assert exported.returncode == dotenv.returncode == 0, exported.stderr + dotenv.stderr
    lines = dotenv.stdout.splitlines()
    assert all(re.fullmatch(r'[A-Z0-9_]+="[^"\n]*"', line) for line in lines), dotenv.stdout
    values = {
        name: value.replace("\\n", "\n").replace("\\$", "$")
        for name, value in (re.fullmatch(r'(\w+)="(.*)"', line).groups() for line in lines)  # type: ignore[union-attr]
    }
    names = re.findall(r"^export (\w+)=", exported.stdout, re.MULTILINE)
    assert list(values) == names
    lock = holder(stack)
    assert values["DATABASE_URL"] == lock["database_url"]
    assert values["APP_URL"] == stack.url
    # The browser's API base (docs/typescript.md): Next.js shows browser code NEXT_PUBLIC_* only.
    assert values["NEXT_PUBLIC_API_URL"] == stack.url
    assert values["BACKUP_BUCKET"] == LOCAL_BUCKET
    assert values["AWS_ENDPOINT_URL_S3"] == lock["stack_env"]["AWS_ENDPOINT_URL_S3"]
    assert FRONTEND in values["ALLOWED_ORIGINS"].split(",")
    assert values["CLERK_JWT_KEY"].startswith("-----BEGIN PUBLIC KEY-----\n")
    # A developer's own APP_URL (their frontend's, say) is theirs; the API base stays the stack.
    own = keyflash("env", "--format", "dotenv", state_dir=stack.state_dir, APP_URL=FRONTEND)
    assert f'NEXT_PUBLIC_API_URL="{stack.url}"' in own.stdout.splitlines(), own.stdout
    bad = keyflash("env", "--format", "yaml", state_dir=stack.state_dir)
    assert bad.returncode == 2


def test_dotenv_quoting() -> None:
    assert dotenv_quote("plain") == '"plain"'
    assert dotenv_quote("a\nb") == '"a\\nb"'
    assert dotenv_quote("pa$word") == '"pa\\$word"'
    assert dotenv_quote('say "hi"') == "'say \"hi\"'"
    assert dotenv_quote("C:\\dir") == "'C:\\dir'"
    with pytest.raises(CliError, match="dotenv"):
        dotenv_quote('it\'s "both"')
