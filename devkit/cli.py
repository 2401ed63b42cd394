"""`keyflash`: developer commands (dev-only; deployable code never imports this).

Every command fails with ONE line on stderr (`keyflash: …`) and a non-zero exit status: 2 for
usage mistakes (argparse's convention), 1 for everything else; `--debug` adds the traceback.
State (the embedded database, the dev signing key, the stack lock) lives in `.keyflash/` in the
repository, or wherever --state-dir / $KEYFLASH_STATE_DIR says. The global options (--state-dir,
--debug) go before or after any command word; the last one given wins.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from devkit.console import CliError, error_line, info, paint

if TYPE_CHECKING:
    from shared.cron.backup import BackupInfo

Handler = Callable[[argparse.Namespace], int]
# What a shell reports for a program killed by SIGPIPE (128 + 13), as `yes | head` does.
BROKEN_PIPE_EXIT = 141


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line too (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, error_line(f"{message} (see {self.prog} --help)") + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `keyflash` console script (which passes no `argv`)."""
    code = _main(argv)
    if argv is None:
        # Everything is stopped and flushed by now; only the interpreter's final garbage
        # collection of SQLAlchemy/FastAPI/pydantic objects is left, and it took seconds
        # on a loaded machine. Frozen objects are skipped; atexit handlers still run.
        gc.freeze()
    return code


def _main(argv: Sequence[str] | None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra[1:] if extra[:1] == ["--"] else extra
    args.started = started
    handler: Handler = args.handler
    return reported(lambda: handler(args), debug=args.debug)


def reported(command: Callable[[], int], *, debug: bool) -> int:
    """Run `command` and end as every keyflash command does: a failure is one line on stderr
    (the traceback only with `debug`), exit 1; Ctrl-C is `interrupted`, 130; a reader gone
    from stdout, 141. Also the end of `python -m devkit.legacy`, so the documented commands
    fail alike."""
    try:
        code = command()
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        # A child's status passed on (`db psql`): killed by signal N is -N in subprocess, and
        # 128 + N as a shell reports it (psql stopped by `| head`: 141, not 243).
        return 128 - code if code < 0 else code
    except BrokenPipeError:
        # The reader went away (`keyflash token | head -c 20`): nothing left to say to anyone.
        # Point stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
    except CliError as error:
        if debug and error.__cause__ is not None:
            traceback.print_exception(error.__cause__)
        print(error_line(error.message), file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print(error_line("interrupted"), file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            traceback.print_exc()
        print(error_line(_explain(error, debug)), file=sys.stderr)
        return 1


def _write_all(fd: int, text: str) -> None:
    """Write `text` to `fd` in full, or raise BrokenPipeError (then `reported` exits 141).

    Not through a Python file object: when the reader leaves half-way through a write larger
    than the pipe holds, its buffered writer drops the rest without an error, so `keyflash
    openapi | head` ended 0 after a truncated document."""
    data = memoryview(text.encode())
    while data:
        data = data[os.write(fd, data) :]


def _explain(error: Exception, debug: bool) -> str:
    """One line for an error we did not anticipate, naming its type; no secrets in URLs."""
    from shared.db_url import redact_url

    first = (str(error).strip().splitlines() or [""])[0]
    hint = "" if debug else " (run with --debug for the traceback)"
    return redact_url(f"{type(error).__name__}: {first}{hint}")


# --------------------------------------------------------------------------------- parser


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    """--state-dir and --debug, accepted before and after every (sub)command.

    Each parser gets its own copies: argparse loses a top-level value when the subcommand's
    parser shares the same option object (what `parents=` does). SUPPRESS keeps a parser that
    did not see the option from overwriting the value another level parsed.
    """
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="where the local database, dev key and lock live "
        "(default: $KEYFLASH_STATE_DIR, else .keyflash/ in the repository)",
    )
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="keyflash",
        description="KeyFlash developer tools: the local stack, invocations, database, tokens.",
    )
    _add_global_options(parser)
    parser.set_defaults(state_dir=None, debug=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help: str, description: str, handler: Handler
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description)
        _add_global_options(sub)
        sub.set_defaults(handler=handler)
        return sub

    dev = command(
        "dev",
        "run the local stack (database, Redis, every function, crons) until Ctrl-C",
        "Start PostgreSQL (data in <state dir>/pgdata; DATABASE_URL overrides), the Upstash "
        "REST emulator (over REDIS_URL's Redis when set, else in-memory), a local S3 for the "
        "backup and exports crons (moto, in-memory; not when BACKUP_BUCKET is set), migrate, "
        "seed demo "
        "data on first run, and serve every function in functions/ at http://HOST:PORT under "
        "its deployed paths, with the merged OpenAPI at /openapi.json and /docs. Crons in "
        "functions/cron/ run on vercel.json's schedules. Ctrl-C or SIGTERM stops everything.",
        _dev,
    )
    dev.add_argument("--port", type=_port, default=3000, help="port to serve on (default: 3000)")
    dev.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    dev.add_argument("--no-crons", action="store_true", help="do not run crons on schedule")
    dev.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        type=_origin,
        metavar="ORIGIN",
        help="allow a frontend's dev server, e.g. http://localhost:3000 (repeatable; added to "
        "ALLOWED_ORIGINS)",
    )
    dev.add_argument(
        "-v", "--verbose", action="store_true", help="also show the core's JSON telemetry logs"
    )

    invoke = command(
        "invoke",
        "call one function's Lambda handler in-process with a real event",
        "Build an API Gateway HTTP API (v2) event (or load one with --event; a cron gets an "
        "EventBridge schedule event), call the function's `lambda_handler` in this process and "
        "print the status, headers and body. --repeat shows cold versus warm timings. Uses the "
        "running `keyflash dev`'s database and Redis when there is one.",
        _invoke,
    )
    invoke.add_argument("function", metavar="FUNCTION", help="e.g. health, searches, cron.JOB")
    invoke.add_argument("--event", metavar="FILE", help="a Lambda event as JSON ('-': stdin)")
    invoke.add_argument(
        "--method", "-X", help="HTTP method, sent as given (default: GET when offered)"
    )
    invoke.add_argument("--path", help="request path, with ?query (default: the first route)")
    invoke.add_argument("--body", "-d", help="request body, or @FILE")
    invoke.add_argument(
        "--header", "-H", action="append", default=[], metavar="NAME:VALUE", help="repeatable"
    )
    invoke.add_argument("--user", help="send a dev token for this user id")
    invoke.add_argument("--repeat", type=int, default=1, metavar="N", help="call N times")

    cron = command(
        "cron",
        "list or run the scheduled jobs in functions/cron/",
        "Scheduled jobs are functions/cron/<job>.py; their schedules come from vercel.json's "
        "crons (5-field, UTC).",
        _no_subcommand,
    )
    cron_commands = cron.add_subparsers(dest="cron_command", required=True, metavar="ACTION")
    cron_list = cron_commands.add_parser("list", help="jobs, schedules and next runs")
    _add_global_options(cron_list)
    cron_list.set_defaults(handler=_cron_list)
    cron_run = cron_commands.add_parser(
        "run", help="run one job now (its Lambda handler, in-process)"
    )
    _add_global_options(cron_run)
    cron_run.add_argument("job", metavar="JOB")
    cron_run.set_defaults(handler=_cron_run)

    db = command(
        "db",
        "migrate, check, seed, reset, back up or restore the database",
        "Works on DATABASE_URL (DIRECT_DATABASE_URL, or DATABASE_URL_UNPOOLED, for schema "
        "changes) when set, else on the "
        "embedded database (borrowed from a running `keyflash dev`, or started for the "
        "command). reset and restore only touch a database on this machine.",
        _no_subcommand,
    )
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")

    def db_action(name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        sub = db_commands.add_parser(name, help=help, description=help)
        _add_global_options(sub)
        sub.set_defaults(handler=handler)
        return sub

    db_action("migrate", "upgrade the schema to the newest migration", _db_migrate)
    downgrade = db_action("downgrade", "downgrade the schema to REV", _db_downgrade)
    downgrade.add_argument("revision", metavar="REV", help="a revision id, -1, or base")
    downgrade.add_argument(
        "--yes", "-y", action="store_true", help="do not ask before dropping rows"
    )
    db_action("check", "fail unless the schema is at head and matches the models", _db_check)
    db_action("seed", "add the demo users, searches, history and flag (once)", _db_seed)
    reset = db_action("reset", "drop and recreate the local database, migrate, seed", _db_reset)
    reset.add_argument("--no-seed", action="store_true", help="leave it empty after migrating")
    reset.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    backup = db_action("backup", "pg_dump the database to FILE (custom format)", _db_backup)
    backup.add_argument("file", type=Path, metavar="FILE")
    restore = db_action("restore", "replace the local database with a backup", _db_restore)
    restore.add_argument("file", type=Path, metavar="FILE")
    restore.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    db_action(
        "backups",
        "list the backups in BACKUP_BUCKET (or the running keyflash dev's local S3)",
        _db_backups,
    )
    from_s3 = db_action(
        "restore-from-s3",
        "replace the local database with a backup the backup cron made (production's restore)",
        _db_restore_from_s3,
    )
    from_s3.add_argument(
        "key", metavar="KEY", help="a backup as `keyflash db backups` lists it, or s3://bucket/…"
    )
    from_s3.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    psql = db_action("psql", "open psql on the database; other arguments go to psql", _db_psql)
    psql.set_defaults(passthrough=True)

    token = command(
        "token",
        "print a dev session token (RS256) the running local stack trusts",
        "Sign a Clerk-shaped session token with the state dir's dev key, for the `keyflash dev` "
        "running on that state dir (refused when none runs there, unless --offline, and when "
        "it verifies with CLERK_JWKS_URL). "
        "`keyflash dev` and `keyflash invoke` on that state dir trust it; nothing else does. "
        "Refused when APP_ENV=production.",
        _token,
    )
    token.add_argument("--user", required=True, metavar="ID", help="the user id (sub claim)")
    token.add_argument("--email", help="email claim (default: ID@keyflash.local)")
    token.add_argument("--admin", action="store_true", help="include the admin role claim")
    token.add_argument("--org", metavar="ID", help="the active organization (org_…)")
    token.add_argument(
        "--org-role", metavar="ROLE", help="the role in --org: admin, member (default) or custom"
    )
    token.add_argument("--org-slug", metavar="SLUG", help="the organization's slug claim")
    token.add_argument(
        "--org-permission",
        action="append",
        default=[],
        metavar="P",
        help="a Clerk custom permission in --org, e.g. org:billing:manage (repeatable)",
    )
    token.add_argument(
        "--claims-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="Clerk's session-token claims version (default: 2, what Clerk issues now)",
    )
    token.add_argument(
        "--ttl", type=int, default=24 * 3600, metavar="S", help="lifetime (default: 86400)"
    )
    token.add_argument(
        "--offline",
        action="store_true",
        help="sign even though no keyflash dev runs on the state dir (for one started later)",
    )

    clerk_org = command(
        "clerk-org",
        "make (or delete) a local team by replaying Clerk's signed organization webhooks",
        "Send organization.created and one organizationMembership.created per --admin and "
        "--member (or organization.deleted with --delete), in Clerk's shape and signed as Svix "
        "signs them, to the Clerk webhook function's handler in this process, against the "
        "running `keyflash dev`'s database (or the embedded one). Then `keyflash token --user "
        "ID --org ORG --org-role ...` signs in as a member. Refused when APP_ENV=production.",
        _clerk_org,
    )
    clerk_org.add_argument("--org", required=True, metavar="ORG_ID", help="e.g. org_demo")
    clerk_org.add_argument("--name", help="the organization's name (default: from ORG_ID)")
    clerk_org.add_argument(
        "--admin", action="append", default=[], metavar="USER_ID", help="repeatable"
    )
    clerk_org.add_argument(
        "--member", action="append", default=[], metavar="USER_ID", help="repeatable"
    )
    clerk_org.add_argument(
        "--delete", action="store_true", help="delete the organization (and its team data)"
    )

    legacy = commands.add_parser(
        "legacy",
        help="copy the original Redis data into Postgres (backfill), check it (verify), finish "
        "dual writes (repair), import users whose email another holds (reattach)",
        description="Delegates to devkit.legacy: `keyflash legacy "
        "backfill|verify|repair|reattach [options]` (`keyflash legacy ACTION --help` shows "
        "an action's options; docs/migration-from-redis.md). Reads UPSTASH_REDIS_REST_URL "
        "(with _TOKEN; or KV_REST_API_URL and _TOKEN), else the running keyflash dev's Redis, "
        "else an emulator over REDIS_URL; writes DATABASE_URL, else the running keyflash dev's "
        "database, else the embedded one.",
        usage="keyflash legacy [-h] [--state-dir DIR] [--debug] ACTION [ARGS ...]",
        add_help=False,  # -h after the action is the delegate's
    )
    _add_global_options(legacy)
    legacy.set_defaults(handler=_legacy, passthrough=True, legacy_parser=legacy)

    env = command(
        "env",
        "print the running stack's environment as shell exports or dotenv lines",
        "For running the functions under other tools (osls invoke local, serverless-offline) "
        'against the running `keyflash dev`: eval "$(keyflash env)"; for a Next.js app: '
        "keyflash env --format dotenv > .env.local (NEXT_PUBLIC_API_URL is the API base).",
        _env,
    )
    env.add_argument(
        "--format",
        choices=("export", "dotenv"),
        default="export",
        help="export: `export K='v'` for a shell (default); dotenv: `K=\"v\"` for .env files",
    )

    command(
        "check",
        "check that serverless.yml and vercel.json declare every function as its code says",
        "Derive from functions/ what each descriptor must declare (each path for every "
        "method, schedules, package patterns) and list every difference; exit 1 when there is one.",
        _check,
    )

    package = command(
        "package",
        "build each function's Lambda package as a directory, as the deploy does",
        "Copy what serverless.yml packages for each function (its patterns, the requirements "
        "less noDeploy and slim's strips, from this environment, which must be of the Lambda "
        "runtime's Python, e.g. .venv-3.12) into OUT/<function>/ and compile every module "
        "(unchecked hash-based .pyc). Nothing else in OUT is touched: an OUT/<function>/ is "
        "replaced only when a build made it (it holds .keyflash-package), any other is refused. "
        "No AWS, no Docker, no network.",
        _package,
    )
    package.add_argument("functions", nargs="*", metavar="FUNCTION", help="default: all")
    package.add_argument(
        "--out", type=Path, default=Path("build/lambda"), help="default: build/lambda"
    )

    openapi = command(
        "openapi",
        "write the merged OpenAPI document of every function",
        "Merge every function's app.openapi() (one tag per function) and write it as JSON; "
        "--typescript also writes the frontend's typed client (clients/typescript/).",
        _openapi,
    )
    target = openapi.add_mutually_exclusive_group()
    target.add_argument("--output", "-o", type=Path, metavar="FILE", help="default: stdout")
    target.add_argument(
        "--typescript",
        type=Path,
        metavar="DIR",
        help="write openapi.json, schema.d.ts (openapi-typescript) and client.ts into DIR",
    )
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not between 0 and 65535")
    return port


def _origin(text: str) -> str:
    """A browser origin: scheme://host[:port], nothing after it."""
    from urllib.parse import urlsplit

    parts = urlsplit(text.strip().rstrip("/"))
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an origin like http://localhost:3000 (scheme, host, optional port)"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _state_dir(args: argparse.Namespace) -> Path:
    from devkit.stack import resolve_state_dir

    return resolve_state_dir(args.state_dir)


def _no_subcommand(args: argparse.Namespace) -> int:  # argparse requires one; kept for safety
    raise CliError("missing action; see --help", code=2)


# ------------------------------------------------------------------------------- commands


def _dev(args: argparse.Namespace) -> int:
    from devkit.dev import DevOptions, run_dev

    options = DevOptions(
        state_dir=_state_dir(args),
        host=args.host,
        port=args.port,
        verbose=args.verbose,
        crons=not args.no_crons,
        cors_origins=tuple(args.cors_origin),
    )
    return run_dev(options, started=args.started)


def _prepared_session(args: argparse.Namespace, command: str) -> Any:
    """A session with the database (migrated when we started it) and Redis, and the env the
    functions expect exported, so handlers run in this process as they do under `dev`."""
    from devkit.console import Progress
    from devkit.stack import Session, apply_env, function_env, migrate_and_seed, refuse_production
    from devkit.tokens import dev_key

    refuse_production()
    state_dir = _state_dir(args)
    session = Session(state_dir, command)
    try:
        with Progress(3, f"keyflash {command}") as progress:
            database = session.database(progress.step)
            if database.origin == "embedded":  # borrowed and external ones are not ours to change
                migrate_and_seed(database, progress.step)
            redis = session.redis()
            progress.close(f"keyflash {command}: database {database.origin}, Redis {redis.origin}")
        apply_env(function_env(database, redis, dev_key(state_dir), stack_env=session.stack_env()))
    except BaseException:
        session.cleanup.close()
        raise
    return session


def _invoke(args: argparse.Namespace) -> int:
    from devkit import invoke
    from devkit.tokens import dev_key, issue_token

    if not 1 <= args.repeat <= invoke.MAX_REPEAT:
        raise CliError(f"--repeat must be between 1 and {invoke.MAX_REPEAT}", code=2)
    target = invoke.resolve_target(args.function)
    event = invoke.load_event(args.event) if args.event else None
    if event is not None and (args.method or args.path or args.body or args.header or args.user):
        raise CliError("--event replaces --method/--path/--body/--header/--user", code=2)
    if target.kind == "cron" and (args.method or args.path or args.body or args.header):
        raise CliError(f"{target.name} is a cron: it takes no HTTP request options", code=2)
    request = invoke.Request(
        method=args.method,
        path=args.path,
        body=invoke.read_body(args.body),
        headers=invoke.parse_headers(args.header),
        user=args.user,
    )
    with _prepared_session(args, "invoke"):
        key = dev_key(_state_dir(args))
        result = invoke.invoke(
            target,
            event_file=event,
            request=request,
            repeat=args.repeat,
            token_for=lambda user: issue_token(key, user),
        )
        print(invoke.render(result), flush=True)
    return 0


def _cron_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from devkit.crons import discover_jobs
    from devkit.layout import CRON_DIR

    jobs = discover_jobs()
    if not jobs:
        print(f"no cron jobs: {CRON_DIR} does not exist yet (or holds no jobs)")
        return 0
    now = datetime.now(UTC)
    rows = [("JOB", "SCHEDULE (UTC)", "NEXT RUN", "PATH", "SCHEDULE FROM")]
    for job in jobs:
        if job.schedule is None:
            rows.append((job.name, "-", "-", job.path, job.source))
        else:
            upcoming = job.schedule.next_after(now).strftime("%Y-%m-%d %H:%M")
            rows.append((job.name, job.schedule.expression, upcoming, job.path, job.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for n, row in enumerate(rows):
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        line += "  " + row[-1]
        print(paint(line, "bold") if n == 0 else line)
    return 0


def _cron_run(args: argparse.Namespace) -> int:
    from devkit.crons import discover_jobs, find_job, run_job

    job = find_job(args.job, discover_jobs())
    with _prepared_session(args, "cron run"):
        result = run_job(job)
    if not result.ok:
        raise CliError(result.summary())
    print(result.summary(limit=10_000))
    return 0


def _database_session(args: argparse.Namespace, command: str, *, direct: bool) -> Any:
    """The command's session and database, announced by the URL it uses (`direct`: the
    direct URL, as DDL, dumps and restores need; else the functions' pooled one)."""
    from devkit.console import Progress
    from devkit.stack import Session

    session = Session(_state_dir(args), command)
    try:
        with Progress(1, f"keyflash {command}") as progress:
            database = session.database(progress.step)
            progress.close(f"keyflash {command}: {database.label(direct=direct)}")
    except BaseException:
        session.cleanup.close()
        raise
    return session, database


def _db_migrate(args: argparse.Namespace) -> int:
    from devkit import dbtools

    session, database = _database_session(args, "db migrate", direct=True)
    with session:
        print(dbtools.migrate(database.direct_url, database.direct_origin))
    return 0


def _db_downgrade(args: argparse.Namespace) -> int:
    from devkit import dbtools

    session, database = _database_session(args, "db downgrade", direct=True)
    with session:
        print(
            dbtools.downgrade(database.direct_url, args.revision, args.yes, database.direct_origin)
        )
    return 0


def _db_check(args: argparse.Namespace) -> int:
    from devkit import dbtools

    session, database = _database_session(args, "db check", direct=True)
    with session:
        print(dbtools.check(database.direct_url, database.direct_origin))
    return 0


def _seed(database: Any) -> str:
    from devkit import seed
    from devkit.stack import shared_database

    if not database.is_local:
        raise CliError(f"refusing to seed demo data into {database.redacted}: it is not local")
    with shared_database(database):
        summary = seed.seed()
    return "already seeded (the demo user exists)" if summary is None else f"seeded {summary}"


def _db_seed(args: argparse.Namespace) -> int:
    session, database = _database_session(args, "db seed", direct=False)
    with session:
        print(_seed(database))
    return 0


def _db_reset(args: argparse.Namespace) -> int:
    from devkit import dbtools

    dbtools.require_consent("db reset deletes every row", args.yes)
    session, database = _database_session(args, "db reset", direct=True)
    with session:
        dbtools.require_local(database, "reset")
        dbtools.confirm(f"Delete every row of {database.redacted} and start again?", args.yes)
        dbtools.recreate(database)
        print(dbtools.migrate(database.direct_url))
        if not args.no_seed:
            print(_seed(database))
    return 0


def _db_backup(args: argparse.Namespace) -> int:
    from devkit import dbtools

    session, database = _database_session(args, "db backup", direct=True)
    with session:
        dbtools.backup(database, args.file)
    return 0


def _db_restore(args: argparse.Namespace) -> int:
    from devkit import dbtools

    dbtools.check_archive(args.file)  # before starting anything
    dbtools.require_consent("db restore replaces the whole database", args.yes)
    session, database = _database_session(args, "db restore", direct=True)
    with session:
        dbtools.require_local(database, "restore into")
        dbtools.confirm(f"Replace {database.redacted} with {args.file}?", args.yes)
        dbtools.restore(database, args.file)
    return 0


def _backup_store(args: argparse.Namespace, command: str) -> tuple[Any, str, str]:
    """(an S3 client, the bucket, the prefix) where the backup cron writes: the developer's
    BACKUP_BUCKET, else the running `keyflash dev`'s local S3."""
    from devkit.stack import Session
    from shared.config import Settings
    from shared.s3 import s3_client

    state_dir = _state_dir(args)
    if not os.environ.get("BACKUP_BUCKET"):
        stack_env = Session(state_dir, command).stack_env()
        if not stack_env.get("BACKUP_BUCKET"):
            raise CliError(
                f"BACKUP_BUCKET is not set and no keyflash dev with its local S3 runs in "
                f"{state_dir}: start keyflash dev, or set BACKUP_BUCKET (and AWS credentials)"
            )
        os.environ.update(stack_env)  # this process only: the local S3 and its dummy keys
    # Not get_settings(): listing a bucket needs no DATABASE_URL.
    prefix = os.environ.get("BACKUP_PREFIX") or Settings.backup_prefix
    return s3_client(), os.environ["BACKUP_BUCKET"], prefix


def _db_backups(args: argparse.Namespace) -> int:
    from shared.cron.backup import describe_backups

    s3, bucket, prefix = _backup_store(args, "db backups")
    backups = describe_backups(s3, bucket, prefix)
    if not backups:
        print(f"no backups in s3://{bucket}/{prefix} (keyflash cron run backup makes one)")
        return 0
    rows = [("KEY", "SIZE", "CREATED (UTC)", "")]
    for item in backups:
        when = item.created.strftime("%Y-%m-%d %H:%M:%S") if item.created else "-"
        state = (
            "" if item.restorable
            else "interrupted (no manifest; pruned once a day old)" if item.interrupted
            else f"damaged: {_damage(item)} (left alone; not counted toward BACKUP_KEEP)"
            if item.missing or item.unlisted
            else "not a keyflash backup (left alone; not counted toward BACKUP_KEEP)"
        )  # fmt: skip
        rows.append((item.key, _human_size(item.bytes), when, state))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"s3://{bucket}/")
    for n, row in enumerate(rows):
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        line = (line + "  " + row[3]).rstrip()
        print(paint(line, "bold") if n == 0 else line)
    return 0


def _damage(item: BackupInfo) -> str:
    """What `db backups` says is wrong with a damaged backup folder."""
    problems = [f"{', '.join(item.missing)} missing"] if item.missing else []
    if item.unlisted:
        problems.append(f"the manifest leaves out {', '.join(item.unlisted)}")
    return "; ".join(problems)


def _human_size(size: int) -> str:
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{size} B"  # unreachable; keeps mypy sure of a return


def _db_restore_from_s3(args: argparse.Namespace) -> int:
    """Production's restore (shared.cron.backup.restore_backup) into a new local database
    migrated to the backup's revision, then to head for the functions; it replaces the local
    database only once all of that has succeeded (`dbtools.replace`)."""
    from devkit import dbtools
    from shared.cron.backup import RestoreError, load_manifest, restore_backup
    from shared.db_url import redact_url

    if not args.key.strip():
        raise CliError("KEY is empty: give a backup as `keyflash db backups` lists it", code=2)
    s3, bucket, _ = _backup_store(args, "db restore-from-s3")
    try:
        bucket, manifest_key, manifest = load_manifest(args.key, s3=s3, bucket=bucket)
    except RestoreError as error:  # before anything is touched
        raise CliError(redact_url(str(error))) from None
    location = f"s3://{bucket}/{manifest_key.removesuffix('manifest.json')}"
    revision = manifest.get("alembicRevision")
    if revision is not None:
        dbtools.require_revision(str(revision))
    dbtools.require_consent("db restore-from-s3 replaces the whole database", args.yes)
    session, database = _database_session(args, "db restore-from-s3", direct=True)

    def load(url: str) -> None:
        if revision is not None:
            dbtools.upgrade(url, str(revision))
        try:
            summary = restore_backup(location, url, s3=s3, bucket=bucket)
        except RestoreError as error:
            raise CliError(redact_url(str(error))) from None
        print(f"restored {summary['restored']}: {summary['tables']} tables, {summary['rows']} rows")
        print(dbtools.migrate(url))

    with session:
        dbtools.require_local(database, "restore into")
        dbtools.confirm(f"Replace {database.redacted} with {location}?", args.yes)
        dbtools.replace(database, load)
    return 0


def _db_psql(args: argparse.Namespace) -> int:
    from devkit import dbtools

    extra = list(args.extra)
    session, database = _database_session(args, "db psql", direct=False)
    with session:
        return dbtools.psql(database, extra)


def _token(args: argparse.Namespace) -> int:
    from devkit.stack import jwks_url_of, lock_holder, pid_alive
    from devkit.tokens import KEY_FILE, dev_key, issue_token, require_dev_mode

    require_dev_mode()  # before a key is generated for nothing
    if args.org is None and (args.org_role or args.org_slug or args.org_permission):
        raise CliError("--org-role, --org-slug and --org-permission need --org", code=2)
    state_dir = _state_dir(args)
    holder = lock_holder(state_dir) or {}
    pid = holder.get("pid")
    running = holder.get("command") == "dev" and isinstance(pid, int) and pid_alive(pid)
    if not running and not args.offline:
        raise CliError(
            f"no keyflash dev is running with state in {state_dir}, and only that stack would "
            f"accept a token signed with {state_dir / KEY_FILE}: start it, point --state-dir "
            "(or KEYFLASH_STATE_DIR) at the running stack's state dir, or add --offline to "
            "sign for a stack you start there later"
        )
    stack_env = holder.get("stack_env") if running else None
    jwks = jwks_url_of(stack_env) if isinstance(stack_env, dict) else None
    if jwks is not None:
        raise CliError(
            f"keyflash dev (pid {pid}) verifies tokens with CLERK_JWKS_URL {jwks}: it would "
            f"refuse a token signed with {state_dir / KEY_FILE}; sign in through that Clerk "
            "instance, or restart keyflash dev without CLERK_JWKS_URL"
        )
    key = dev_key(state_dir)
    trusted = holder.get("key_fingerprint") if running else None
    if trusted is not None and trusted != key.fingerprint:
        raise CliError(
            f"keyflash dev (pid {pid}) trusts another key than {key.path}, which "
            "changed after it started: restart it to trust the new key"
        )
    token = issue_token(
        key,
        args.user,
        email=args.email,
        admin=args.admin,
        org_id=args.org,
        org_role=args.org_role or "member",
        org_slug=args.org_slug,
        org_permissions=tuple(args.org_permission),
        claims_version=args.claims_version,
        ttl_s=args.ttl,
    )
    print(token)
    return 0


def _clerk_org(args: argparse.Namespace) -> int:
    from devkit import clerk_org
    from devkit.tokens import check_org_id

    people = [*args.admin, *args.member]
    if args.delete and (people or args.name):
        raise CliError("--delete takes no --admin, --member or --name", code=2)
    if not args.delete and not people:
        raise CliError("give at least one --admin or --member (or --delete)", code=2)
    if not args.org.strip() or any(not person.strip() for person in people):
        raise CliError("ids must not be empty", code=2)
    check_org_id(args.org)  # a team `keyflash token --org` (and every org route) can name
    if args.delete:
        sent = clerk_org.deletion_events(args.org)
    else:
        name = args.name or args.org.removeprefix("org_").replace("_", " ").title()
        team = clerk_org.Team(args.org, name, tuple(args.admin), tuple(args.member))
        sent = clerk_org.team_events(team, now_ms=clerk_org.now_ms())
    with _prepared_session(args, "clerk-org"):
        for line in clerk_org.deliver(sent):
            print(line, flush=True)
    return 0


def _legacy(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("devkit.legacy") is None:
        raise CliError("keyflash legacy is not available: devkit/legacy.py does not exist yet")
    module = importlib.import_module("devkit.legacy")
    entry: Callable[..., Any] | None = getattr(module, "main", None)
    if not callable(entry):
        raise CliError("keyflash legacy is not available: devkit.legacy has no main()")
    rest = list(args.extra)
    if not rest or rest[0] in ("-h", "--help"):
        args.legacy_parser.print_help()
        return 0 if rest else 2
    if "-h" in rest or "--help" in rest:
        return int(entry(rest, prog="keyflash legacy") or 0)  # its help needs no database
    from devkit.console import Progress
    from devkit.stack import Session, shared_database

    with Session(_state_dir(args), "legacy") as session:
        with Progress(2, "keyflash legacy") as progress:
            database = session.database(progress.step)
            redis = session.redis(progress.step, empty_ok=False)
            progress.close(
                f"keyflash legacy: {database.redacted} ({database.origin}), Redis {redis.origin}"
            )
        from shared.config import every_spelling

        # this process only: what devkit.legacy reads
        os.environ.update(
            every_spelling(
                {"UPSTASH_REDIS_REST_URL": redis.url, "UPSTASH_REDIS_REST_TOKEN": redis.token}
            )
        )
        with shared_database(database):
            return int(entry(rest, prog="keyflash legacy") or 0)


def _env(args: argparse.Namespace) -> int:
    import shlex

    from devkit.stack import Session, function_env, lock_holder
    from devkit.tokens import dev_key

    state_dir = _state_dir(args)
    holder = lock_holder(state_dir)
    if not holder or holder.get("command") != "dev" or not holder.get("ready"):
        raise CliError(f"no running keyflash dev in {state_dir}: start one with keyflash dev")
    with Session(state_dir, "env") as session:  # the stack's, or yours where it used yours
        session.running = holder
        database, redis = session.database(), session.redis()
    stack_env = holder.get("stack_env") if isinstance(holder.get("stack_env"), dict) else {}
    env = function_env(database, redis, dev_key(state_dir), stack_env=stack_env)
    # A Next.js frontend's API base: browser code sees NEXT_PUBLIC_* variables only.
    env["NEXT_PUBLIC_API_URL"] = holder["url"]
    for name, value in env.items():
        if args.format == "dotenv":
            print(f"{name}={dotenv_quote(value)}")
        else:
            print(f"export {name}={shlex.quote(value)}")
    return 0


def dotenv_quote(value: str) -> str:
    """A value as dotenv (and Next.js's @next/env, which expands `$VAR`) reads it back.

    Double quotes, newlines as `\\n` (dotenv turns them back into newlines: the PEM key),
    `$` escaped from expansion. dotenv does not unescape `\\"` or `\\\\`, so a value with a
    double quote or backslash is single-quoted (taken literally), or refused when it has
    both kinds of quote or a newline too."""
    if '"' not in value and "\\" not in value:
        escaped = value.replace("\r\n", "\n").replace("\n", "\\n").replace("$", "\\$")
        return f'"{escaped}"'
    if "'" not in value and "\n" not in value and "\r" not in value:
        return f"'{value}'"
    raise CliError("a value cannot be written for dotenv (it mixes quotes and newlines)")


def _check(args: argparse.Namespace) -> int:
    from devkit import descriptors

    return descriptors.main()


def _package(args: argparse.Namespace) -> int:
    from devkit.package import build

    try:
        trees = build(args.out, args.functions or None)
    except (ValueError, RuntimeError, subprocess.CalledProcessError) as error:
        raise CliError(str(error)) from None
    for name, tree in trees.items():
        info(f"{name}: {tree}")
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from devkit import gateway
    from devkit.typescript_client import render, write_client

    functions = gateway.load_all()
    if args.typescript is not None:
        try:
            written = write_client(args.typescript, gateway.merged_openapi(functions))
        except RuntimeError as error:
            raise CliError(str(error)) from None
        info(f"keyflash openapi: {', '.join(path.name for path in written)} -> {args.typescript}")
        return 0
    document = render(gateway.merged_openapi(functions))
    if args.output is None:
        sys.stdout.flush()
        _write_all(sys.stdout.fileno(), document)
        return 0
    try:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, document)
        finally:
            os.close(fd)
    except BrokenPipeError:
        raise  # `-o /dev/stdout | head`: a reader gone, as without -o
    except OSError as error:
        raise CliError(f"cannot write {args.output}: {error.strerror}") from None
    paths = sum(1 for route in gateway.route_table(functions))
    info(f"keyflash openapi: {len(functions)} functions, {paths} operations -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
