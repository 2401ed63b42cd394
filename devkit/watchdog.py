"""Cleans up after a `keyflash` process that died without cleaning up itself (e.g. SIGKILL).

PostgreSQL runs detached from us (pg_ctl starts it in its own session), so it would outlive a
killed `keyflash dev`. The owner starts this watchdog with a pipe on its stdin and the stack
lock's file descriptor: the owner's death, however it happens, closes the pipe. If the owner
said "done" first, it cleaned up and we just exit; otherwise we stop PostgreSQL and remove the
lock file. Holding the inherited lock descriptor keeps a new `keyflash dev` waiting until the
cleanup is over, so it never adopts a server we are about to stop.

`python -m devkit.watchdog --owner PID --lock FILE [--data-dir DIR]` (started by devkit.stack).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DONE = b"done\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.watchdog", description=__doc__)
    parser.add_argument("--owner", type=int, required=True, help="pid of the keyflash process")
    parser.add_argument("--lock", type=Path, required=True, help="the stack lock file")
    parser.add_argument("--data-dir", type=Path, help="PostgreSQL data dir to stop")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the owner's to handle
    message = sys.stdin.buffer.read()  # returns at EOF: the owner closed the pipe or died
    if message.endswith(DONE):
        return 0
    _log(f"keyflash (pid {args.owner}) exited without cleaning up; cleaning up after it")
    if args.data_dir is not None:
        from devkit.postgres import LocalPostgres, LocalPostgresError

        try:
            LocalPostgres(args.data_dir).stop()
            _log(f"stopped PostgreSQL in {args.data_dir}")
        except LocalPostgresError as error:
            _log(f"could not stop PostgreSQL: {error}")
    _remove_lock(args.lock, args.owner)
    return 0


def _remove_lock(lock: Path, owner: int) -> None:
    """Remove the lock file if it is still the owner's (a new session may have replaced it)."""
    try:
        recorded = json.loads(lock.read_text()).get("pid")
    except (OSError, ValueError):
        return
    if recorded == owner:
        lock.unlink(missing_ok=True)


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} watchdog[{os.getpid()}]: {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
