"""`keyflash`: developer commands (dev-only; deployable code never imports this)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from devkit.migrate import upgrade_head
from devkit.postgres import LocalPostgres, LocalPostgresError, database_exists

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_DATA_DIR = REPO_ROOT / ".keyflash" / "pgdata"
DEV_DATABASE = "keyflash"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `keyflash` console script."""
    parser = argparse.ArgumentParser(prog="keyflash", description="KeyFlash developer tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "dev",
        help="run a local database, migrated to head, until Ctrl-C",
        description=(
            "Start PostgreSQL with its data in .keyflash/pgdata (or use DATABASE_URL when set), "
            "create the 'keyflash' database if missing, run migrations and keep running until "
            "Ctrl-C or SIGTERM, then stop PostgreSQL cleanly."
        ),
    )
    parser.parse_args(argv)
    try:
        return dev()
    except LocalPostgresError as error:
        print(f"keyflash: {error}", file=sys.stderr)
        return 1


def dev() -> int:
    """Bring the local stack up, wait for Ctrl-C/SIGTERM, and tear it down without leftovers."""
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C, through the cleanup
    with ExitStack() as cleanup:
        url = os.environ.get("DATABASE_URL")
        direct_url = os.environ.get("DIRECT_DATABASE_URL") or url
        if url is None or direct_url is None:
            server = LocalPostgres(DEV_DATA_DIR)
            cleanup.callback(server.stop)  # registered first: an interrupted start is cleaned too
            server.start()
            if not database_exists(server.url(), DEV_DATABASE):
                server.create_database(DEV_DATABASE)
            url = direct_url = server.url(DEV_DATABASE)
        upgrade_head(direct_url)
        # SEED: call the dev seed (devkit/seed.py, written separately) here, with direct_url.
        print(
            "\nKeyFlash dev is up.\n"
            f"  DATABASE_URL={url}\n"
            f"  DIRECT_DATABASE_URL={direct_url}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            print("\nkeyflash: stopping…", flush=True)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
