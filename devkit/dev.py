"""`keyflash dev`: the whole local stack in one process, until Ctrl-C or SIGTERM.

Order matters for failing fast and cleanly: the state dir's lock and the port are taken before
anything slow starts (a second stack or a busy port is reported in milliseconds); PostgreSQL,
migrations, seed data, the Upstash emulator, the functions, the HTTP server and the cron
scheduler follow, each registered for shutdown as soon as it exists. A signal at any point
unwinds the same way, and the watchdog covers the case where we are killed outright. While
serving, an embedded PostgreSQL that dies is restarted on the same port a bounded number of
times; after that the stack stops with one line, as for any other failure.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from devkit.console import CliError, Progress, info, paint
from devkit.stack import (
    Database,
    Redis,
    Session,
    apply_env,
    bound_socket,
    clerk_key_env,
    clerk_webhook_env,
    cors_env,
    function_env,
    jwks_url_of,
    migrate_and_seed,
    recordable,
    refuse_production,
)

DEMO_TOKEN_USER = "demo"
STARTUP_TIMEOUT_S = 30.0
UPSTASH_PROBE_TIMEOUT_S = 3.0
HEAD_BUFFER_BYTES = 64 * 1024  # > Vercel's 14 KB URL and 32 KB of headers together
# Restarts of a dead embedded PostgreSQL per stack; one more death stops the stack.
MAX_POSTGRES_RESTARTS = 3
logger = logging.getLogger("keyflash.dev")


@dataclass(frozen=True)
class DevOptions:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 3000
    verbose: bool = False
    crons: bool = True
    cors_origins: tuple[str, ...] = ()  # added to ALLOWED_ORIGINS for a frontend's dev server


class _Stop(BaseException):
    """Raised by our signal handlers so startup and the main loop unwind through cleanup."""


def app_url(base_url: str) -> str:
    """The developer's own APP_URL (any spelling the settings read, e.g. `app_url`), else the
    stack's `base_url`."""
    from shared.config import read_variable  # shared settings stay untouched until needed

    given = read_variable("APP_URL")
    return base_url if given is None else given[1]


def run_dev(options: DevOptions, *, started: float | None = None) -> int:
    started = time.perf_counter() if started is None else started
    refuse_production()
    _configure_logging(options.verbose)
    stopping = threading.Event()
    previous = _install_signal_handlers(stopping)
    session = Session(options.state_dir, "dev")
    try:
        with session:
            _serve(session, options, started, stopping)
    except _Stop:
        pass  # the cleanup above already ran; the signal is the normal way to stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopping.is_set():
        info("keyflash: stopped")
    return 0


def _install_signal_handlers(stopping: threading.Event) -> dict[int, Any]:
    def handle(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            info("keyflash: already stopping…")
            return
        stopping.set()
        info(f"\nkeyflash: {signal.Signals(signum).name} received, stopping…")
        raise _Stop

    return {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}


def _serve(
    session: Session, options: DevOptions, started: float, stopping: threading.Event
) -> None:
    session.claim(exclusive=True)
    sock = session.cleanup.enter_context(bound_socket(options.host, options.port))
    port = sock.getsockname()[1]
    base_url = f"http://{_url_host(options.host)}:{port}"
    assert session.lock is not None
    session.lock.update(url=base_url)
    from devkit.tokens import dev_key, issue_token

    key = dev_key(options.state_dir)
    session.lock.update(key_fingerprint=key.fingerprint)
    # Importing every function (FastAPI, SQLAlchemy, pydantic models) costs seconds; do it
    # while PostgreSQL starts in its own process. Nothing reads settings at import time.
    preload = _Background(_load_functions)
    with Progress(7, "keyflash dev") as progress:
        database = session.database(progress.step)
        if database.origin == "embedded":
            session.lock.update(database_url=database.url, direct_database_url=database.direct_url)
        else:  # yours: not recorded, the lock would hold its password (Session.database)
            session.lock.update(database_variable=database.origin)
        redis = session.redis(progress.step)
        if redis.variable is not None:
            _warn_unless_upstash_answers(redis)
        progress.step(
            "using BACKUP_BUCKET" if os.environ.get("BACKUP_BUCKET") else "starting the local S3"
        )
        stack_env = (
            {"APP_URL": app_url(base_url)}  # the CORS/CSRF allow-list's own
            | session.local_s3()
            | cors_env(list(options.cors_origins))
            | clerk_webhook_env(options.state_dir)
            | clerk_key_env()
        )
        session.lock.update(stack_env=recordable(stack_env))
        env = function_env(database, redis, key, stack_env=stack_env)
        apply_env(env)
        session.cleanup.callback(_dispose_engine)
        seeded = migrate_and_seed(database, progress.step)
        progress.step("loading functions")
        from devkit import crons, gateway

        try:
            functions, jobs = preload.result()
        except Exception:  # e.g. a module that reads settings at import: again, env now set
            functions, jobs = _load_functions()
        for clash in gateway.conflicts(functions):
            info(f"keyflash: warning: two functions claim {clash}; the first one serves it")
        progress.step("starting the HTTP server")
        app = gateway.Gateway(functions, public_url=base_url)
        http_thread = _start_http(session, app, sock)
        scheduler = crons.Scheduler(jobs, report=lambda line: logger.info("%s", line))
        if options.crons:
            scheduler.start()
            session.cleanup.callback(scheduler.stop)
        if redis.variable is None:
            session.lock.update(upstash_url=redis.url, upstash_token=redis.token, ready=True)
        else:  # yours: not recorded, the lock would hold its token (Session.redis)
            session.lock.update(redis_variable=redis.variable, ready=True)
        progress.close(f"keyflash dev: ready in {time.perf_counter() - started:.1f} s")
    token = issue_token(key, DEMO_TOKEN_USER)
    _banner(base_url, database, redis, env, functions, scheduler, seeded, token, options)
    _wait(http_thread, database, stopping)


def _load_functions() -> tuple[list[Any], list[Any]]:
    from devkit import crons, gateway

    return gateway.load_all(), crons.discover_jobs()


class _Background:
    """Run `work` on a thread now; `result()` waits for it and re-raises what it raised."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self._work = work
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="keyflash-preload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._work()
        except BaseException as error:  # handed to the main thread by result()
            self._error = error

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _dispose_engine() -> None:
    from shared.db import dispose_engine

    dispose_engine()


def _start_http(session: Session, app: Any, sock: Any) -> threading.Thread:
    """Serve `app` with uvicorn on a thread; the main thread keeps the signals."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        # uvicorn would take X-Forwarded-For from 127.0.0.1 as the client's address; the
        # functions apply TRUST_PROXY themselves, exactly as deployed, to the real peer.
        proxy_headers=False,
        access_log=False,  # the gateway logs each request with the function that served it
        lifespan="off",
        timeout_graceful_shutdown=3,
        # h11 refuses a head still incomplete past this (its own plain 400): room for every
        # head a platform takes and more, so the gateway answers an over-limit one itself.
        h11_max_incomplete_event_size=HEAD_BUFFER_BYTES,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="keyflash-http", daemon=True
    )

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)

    thread.start()
    session.cleanup.callback(stop)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise CliError("the HTTP server stopped while starting (see the log above)")
        if time.monotonic() > deadline:
            raise CliError(f"the HTTP server did not start within {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.01)
    return thread


def _warn_unless_upstash_answers(redis: Redis) -> None:
    """A developer's UPSTASH_REDIS_REST_URL (or KV_REST_API_URL) that does not answer PING is
    reported now, not discovered later as failing caches and refused requests (the stack still
    starts)."""
    import httpx

    try:
        response = httpx.post(
            redis.url,
            json=["PING"],
            headers={"Authorization": f"Bearer {redis.token}"},
            timeout=UPSTASH_PROBE_TIMEOUT_S,
        )
        answer = response.json() if response.status_code == 200 else None
    except httpx.HTTPError as error:
        problem = f"does not answer ({type(error).__name__}: {error})"
    except ValueError:
        problem = "answers PING with something that is not Upstash's JSON"
    else:
        if isinstance(answer, dict) and answer.get("result") == "PONG":
            return
        problem = f"answers PING with HTTP {response.status_code}, not PONG"
    info(
        f"keyflash: warning: {redis.variable} {redis.redacted} {problem}; the cache, rate "
        f"limits and health's Redis check will fail until it does (unset {redis.variable} to "
        "use the emulator)"
    )


def _wait(thread: threading.Thread, database: Database, stopping: threading.Event) -> None:
    """Until a signal: watch that the server thread and PostgreSQL stay up."""
    restarts = 0
    while not stopping.wait(0.5):
        if not thread.is_alive():
            raise CliError("the HTTP server stopped unexpectedly (see the log above)")
        if database.data_dir is not None and not _postgres_running(database.data_dir):
            restarts += 1
            _restart_postgres(database, database.data_dir, restarts)


def _postgres_running(data_dir: Path) -> bool:
    from devkit.postgres import LocalPostgres

    return LocalPostgres(data_dir).is_running()


def _restart_postgres(database: Database, data_dir: Path, attempt: int) -> None:
    """Bring the embedded PostgreSQL back on the same URL, at most MAX_POSTGRES_RESTARTS
    times per stack; otherwise stop the stack with one line saying what happened."""
    from devkit.postgres import LOG_FILE, LocalPostgres, LocalPostgresError
    from devkit.stack import DATABASE_NAME

    log = data_dir / LOG_FILE
    if attempt > MAX_POSTGRES_RESTARTS:
        raise CliError(
            f"PostgreSQL in {data_dir} stopped unexpectedly again after {MAX_POSTGRES_RESTARTS} "
            f"restarts; stopping the stack (see {log})"
        )
    info(
        f"keyflash: PostgreSQL in {data_dir} stopped unexpectedly; restarting it "
        f"(attempt {attempt} of {MAX_POSTGRES_RESTARTS})"
    )
    server = LocalPostgres(data_dir)
    try:
        server.start()
    except LocalPostgresError:
        raise CliError(
            f"PostgreSQL in {data_dir} stopped unexpectedly and did not restart; stopping the "
            f"stack (see {log})"
        ) from None
    if server.url(DATABASE_NAME) != database.url:
        # The functions, the lock and printed URLs all name the old port: no half-working stack.
        server.stop()
        raise CliError(
            f"PostgreSQL in {data_dir} could only restart on port {server.port}, not on "
            f"{urlsplit(database.url).port} which the stack uses; stopping the stack"
        )
    _dispose_engine()  # its pooled connections died with the old server
    info("keyflash: PostgreSQL is back; requests in flight during the outage may have failed")


class _UtcFormatter(logging.Formatter):
    """Lines stamped as the JSON logs' `ts` is (`2026-03-08T12:00:00.000Z`): UTC, like the
    banner's schedules, whatever TZ the shell has."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.created * 1000) % 1000:03d}Z"


def _configure_logging(verbose: bool) -> None:
    """Our request and cron lines on stdout; the core's JSON telemetry only with --verbose
    (its per-query INFO lines would drown the request log), warnings always."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_UtcFormatter("%(asctime)s %(message)s"))
    root = logging.getLogger("keyflash")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("keyflash.gateway", "keyflash.cron", "keyflash.dev"):
        logging.getLogger(name).setLevel(logging.INFO)


def _banner(
    base_url: str,
    database: Database,
    redis: Redis,
    env: dict[str, str],
    functions: list[Any],
    scheduler: Any,
    seeded: str | None,
    token: str,
    options: DevOptions,
) -> None:
    from devkit import gateway
    from devkit.tokens import KEY_FILE, PUBLIC_KEY_FILE

    bold: Callable[[str], str] = lambda text: paint(text, "bold")  # noqa: E731
    routes = gateway.route_table(functions)
    lines = [
        "",
        paint(f"KeyFlash dev is ready at {base_url}", "green"),
        "",
        bold("URLs"),
        f"  API        {base_url}/api/…  ({len(functions)} functions, {len(routes)} routes)",
        f"  Health     {base_url}/api/health",
        f"  OpenAPI    {base_url}{gateway.OPENAPI_PATH}",
        f"  Docs       {base_url}{gateway.DOCS_PATH}",
        f"  Database   {database.redacted}  ({database.origin})",
        f"  Redis      {redis.redacted}  ({redis.origin})",
        f"  S3         {_s3_line(env)}",
        f"  CORS       {_cors_line(options)}",
        f"  Clerk      {_clerk_line(env, options.state_dir)}",
        f"  State      {options.state_dir}",
    ]
    if seeded:
        lines.append(f"  Seeded     {seeded}")
    lines += ["", bold("Functions")]
    by_function: dict[str, list[str]] = {}
    for method, path, name in routes:
        by_function.setdefault(name, []).append(f"{method} {path}")
    width = max((len(name) for name in by_function), default=0)
    lines += [f"  {name.ljust(width)}  {', '.join(items)}" for name, items in by_function.items()]
    lines += ["", bold("Crons")]
    if not scheduler.jobs and not _cron_dir_exists():
        lines.append("  none (functions/cron/ does not exist yet)")
    elif not options.crons:
        lines.append("  not scheduled (--no-crons); run one with: keyflash cron run JOB")
    else:
        upcoming = scheduler.next_runs()
        name_width = max((len(job.name) for job in scheduler.jobs), default=0)
        cron_width = max((len(job.schedule.expression) for job in scheduler.jobs), default=0)
        for job in scheduler.jobs:
            when = upcoming[job.name].strftime("%Y-%m-%d %H:%M UTC")
            expression = job.schedule.expression.ljust(cron_width)
            lines.append(f"  {job.name.ljust(name_width)}  {expression}  next {when}")
        if not scheduler.jobs:
            lines.append("  none scheduled (keyflash cron list shows why)")
    lines += ["", bold("Environment set for the functions")]
    from shared.config import setting_of

    for name, value in env.items():
        setting = setting_of(name)  # KV_REST_API_TOKEN is the token too
        if setting == "clerk_jwt_key" and value:
            shown = f"<public key of {options.state_dir / KEY_FILE}, also in {PUBLIC_KEY_FILE}>"
        elif setting == "clerk_webhook_secret":
            shown = _webhook_secret_line(value, options.state_dir)
        elif setting in ("rate_limit_hmac_secret", "upstash_redis_rest_token"):
            shown = value[:8] + "…"  # whole: keyflash env
        elif "database_url" in setting or setting == "upstash_redis_rest_url":
            from shared.db_url import redact_url

            shown = redact_url(value)
        else:
            shown = value
        lines.append(f"  {name}={shown}")
    if jwks_url_of(env) is None:  # else the functions would refuse it
        heading = f'Dev token for user "{DEMO_TOKEN_USER}" (24 h; others: keyflash token --user ID)'
        lines += [
            "",
            bold(heading),
            f"  export TOKEN={token}",
            f'  curl -H "Authorization: Bearer $TOKEN" {base_url}/api/searches',
        ]
    lines += ["", "Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)


def _clerk_line(env: dict[str, str], state_dir: Path) -> str:
    """What verifies session tokens: the developer's Clerk JWKS, else the dev key."""
    from devkit.tokens import DEV_ISSUER, KEY_FILE

    jwks = jwks_url_of(env)
    if jwks is not None:
        return (
            f"CLERK_JWKS_URL {jwks} (yours): tokens of that Clerk instance only, "
            "not keyflash token's"
        )
    return f"dev key {state_dir / KEY_FILE}, issuer {DEV_ISSUER} (tokens: keyflash token)"


def _webhook_secret_line(secret: str, state_dir: Path) -> str:
    """The stack's own secret whole (to sign test events with); the developer's, which may be
    a Clerk instance's, as the other secrets are shown."""
    from devkit.tokens import WEBHOOK_SECRET_FILE

    made = state_dir / WEBHOOK_SECRET_FILE
    if made.exists() and made.read_text().strip() == secret:
        return f"{secret}  (made once in {made})"
    return secret[:8] + "…  (yours, from the environment)"


def _s3_line(env: dict[str, str]) -> str:
    if "AWS_ENDPOINT_URL_S3" in env:
        return f"s3://{env['BACKUP_BUCKET']} at {env['AWS_ENDPOINT_URL_S3']}  (local, in-memory)"
    return f"s3://{os.environ.get('BACKUP_BUCKET')}  (BACKUP_BUCKET, your AWS credentials)"


def _cors_line(options: DevOptions) -> str:
    from shared.config import get_settings

    origins = ", ".join(sorted(get_settings().cors_origins))
    return f"{origins}  (add yours: --cors-origin ORIGIN or ALLOWED_ORIGINS)"


def _cron_dir_exists() -> bool:
    from devkit.layout import CRON_DIR

    return CRON_DIR.is_dir()
