"""Real processes for the fault tests (`tests/faults`): what they kill, freeze and wait on.

- `UpstashProcess`: the Upstash REST emulator in a process of its own (`python -m
  devkit.upstash_emulator`), that a test can SIGKILL (Redis down: connections refused), SIGSTOP
  (Redis that accepts connections and never answers: slower than any timeout) and bring back on
  the same port. Over a private `redis-server` when one is installed, so data outlives a restart.
- `fresh_interpreter`: a script run in a new interpreter (a cold container's init), and the
  JSON it printed.
- `HandlerProcess`: a function's Lambda `lambda_handler`, run once in a child interpreter with an
  explicit environment, so a test can SIGKILL it mid-work like a container that vanished.
- `RowLock`: a row lock held from an admin transaction. It stops a child at a chosen statement
  without any test hook in production code.
- `blocked_backend`, `wait_for_backend`, `backend_settled`: conditions read from
  `pg_stat_activity` / `pg_locks`. Tests wait on these, never on sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import psycopg
import pytest

from devkit._host import LOOPBACK, Service, free_port, log_tail, wait_for
from tests.support.redis import LocalRedis

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30.0  # a child interpreter importing a function, on a busy 2-core machine


def fresh_interpreter(script: str, *args: str, env: Mapping[str, str]) -> Any:
    """Run `script` with `args` in a new interpreter at the repository root; the JSON it
    printed on its line starting with `@@`."""
    completed = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(x for x in completed.stdout.splitlines() if x.startswith("@@"))
    return json.loads(line[2:])


def child_env(**values: str | int | float | None) -> dict[str, str]:
    """A child's whole environment: only what it needs, never this process's (which tests
    monkeypatch). None leaves a variable out."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "APP_ENV": "test",
    }
    env.update({name: str(value) for name, value in values.items() if value is not None})
    return env


# --- the Upstash emulator as a process ----------------------------------------------------------


class UpstashProcess(Service):
    """`python -m devkit.upstash_emulator` on a fixed loopback port, with a known token."""

    def __init__(self, workdir: Path, *, redis_url: str | None = None) -> None:
        self.redis_url = redis_url
        self.port = free_port()
        self.token = "fault-token-" + os.urandom(6).hex()
        self.log_path = Path(workdir) / f"upstash-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Start (or restart, on the same port) and return once it answers PING."""
        args = [sys.executable, "-m", "devkit.upstash_emulator"]
        args += ["--host", LOOPBACK, "--port", str(self.port), "--token", self.token]
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.frozen = False
        if not wait_for(self.answers, timeout=STARTUP_TIMEOUT_S):
            self.stop()
            raise RuntimeError(
                f"the Upstash emulator did not answer on {self.url}; its log:\n"
                f"{log_tail(self.log_path)}"
            )

    def answers(self) -> bool:
        """True when PING through the REST API gets PONG (False while down or frozen)."""
        try:
            reply = httpx.post(
                self.url,
                json=["PING"],
                headers={"authorization": f"Bearer {self.token}"},
                timeout=0.5,
            )
            return bool(reply.json() == {"result": "PONG"})
        except (httpx.HTTPError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL: the port closes at once, so clients get 'connection refused'."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections on the port; nothing ever answers."""
        assert self._process is not None, "the emulator is not running"
        os.kill(self._process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: the same process carries on (requests queued meanwhile run now)."""
        assert self._process is not None, "the emulator is not running"
        os.kill(self._process.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """Gone for good: nothing of it needs a graceful shutdown (a frozen one included)."""
        self.kill()


@contextmanager
def private_upstash(workdir: Path) -> Iterator[UpstashProcess]:
    """An emulator process over its own redis-server when one is installed (so its data
    outlives a restart of the emulator, as Upstash's does), else over its in-memory store."""
    backing = LocalRedis(Path(workdir) / "redis") if LocalRedis.binary() else None
    if backing is not None:
        backing.start()
    try:
        with UpstashProcess(workdir, redis_url=backing.url if backing else None) as upstash:
            yield upstash
    finally:
        if backing is not None:
            backing.stop()


# --- a Lambda handler in a child process ----------------------------------------------------------

_CHILD = """
import importlib, json, sys
from devkit import events
spec = json.load(sys.stdin)
module = importlib.import_module(spec["module"])
context = events.lambda_context(spec["module"].rsplit(".", 1)[-1], spec["timeout_ms"])
print(json.dumps(module.lambda_handler(spec["event"], context)), flush=True)
"""


class HandlerProcess:
    """`module.lambda_handler(event, context)` once, in a fresh interpreter with exactly `env`.

    Output goes to files, not pipes, so a chatty child can never block on a full pipe. The
    context is a Lambda context with `timeout_ms` (what the crons size their lease from).
    """

    def __init__(
        self,
        module: str,
        event: Mapping[str, Any],
        env: Mapping[str, str],
        *,
        timeout_ms: int = 30_000,
    ) -> None:
        self.module = module
        self._dir = Path(tempfile.mkdtemp(prefix="keyflash-child-"))
        self._stdout, self._stderr = self._dir / "stdout", self._dir / "stderr"
        with self._stdout.open("wb") as out, self._stderr.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", _CHILD],
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
            )
        assert self.popen.stdin is not None
        spec = {"module": module, "event": event, "timeout_ms": timeout_ms}
        self.popen.stdin.write(json.dumps(spec).encode())
        self.popen.stdin.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def sigkill(self) -> int:
        """Kill it outright (no cleanup, no answer) and return its exit status (-9)."""
        self.popen.send_signal(signal.SIGKILL)
        return self.popen.wait(timeout=10)

    def answered(self) -> bool:
        """Whether it printed a handler result (its answer to the platform)."""
        return bool(self._stdout.read_bytes().strip())

    def result(self, timeout: float = 60) -> dict[str, Any]:
        """Wait for the handler's return value (fails with the child's stderr if it died)."""
        code = self.popen.wait(timeout=timeout)
        lines = self._stdout.read_text().strip().splitlines()
        if code != 0 or not lines:
            raise AssertionError(f"{self.module} exited {code}:\n{self.stderr()}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def stderr(self, lines: int = 30) -> str:
        return "\n".join(self._stderr.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.alive():
            self.sigkill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- row locks and what PostgreSQL says a backend is doing ----------------------------------------


class RowLock:
    """`SELECT … FOR UPDATE` in an open transaction on its own connection, until `release()`.

    Any statement of another transaction that needs one of those rows (UPDATE, DELETE, an
    upsert on the row, SELECT … FOR UPDATE) waits for us: a stop at a chosen statement.
    """

    def __init__(self, url: str, select_sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._conn = psycopg.connect(url, autocommit=False)
        self.pid = self._conn.info.backend_pid
        rows = self._conn.execute(f"{select_sql} FOR UPDATE", params).fetchall()
        assert rows, f"nothing to lock: {select_sql}"
        self.rows = len(rows)

    def release(self) -> None:
        if not self._conn.closed:
            self._conn.rollback()
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class Backend:
    """A server process of the application named `application_name`, as PostgreSQL sees it."""

    pid: int
    query: str
    blocked_by: tuple[int, ...]
    wrote: frozenset[str]  # tables its transaction wrote or is writing (RowExclusiveLock);
    # a partition is named by its partitioned table


def blocked_backend(
    conn: psycopg.Connection[Any], application_name: str, blocker: int
) -> Backend | None:
    """The backend of `application_name` waiting on a lock that `blocker` holds, if any."""
    row = conn.execute(
        """SELECT pid, query, pg_blocking_pids(pid) FROM pg_stat_activity
           WHERE application_name = %s AND wait_event_type = 'Lock'
             AND %s = ANY(pg_blocking_pids(pid))""",
        (application_name, blocker),
    ).fetchone()
    if row is None:
        return None
    written = conn.execute(
        """SELECT coalesce(pg_partition_root(c.oid)::regclass::text, c.relname)
           FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
           WHERE l.pid = %s AND l.granted AND l.mode = 'RowExclusiveLock'
             AND c.relkind IN ('r', 'p')""",
        (row[0],),
    ).fetchall()
    return Backend(row[0], row[1], tuple(row[2]), frozenset(name for (name,) in written))


def wait_for_backend(
    conn: psycopg.Connection[Any],
    child: HandlerProcess,
    application_name: str,
    blocker: RowLock,
    *,
    timeout: float = STARTUP_TIMEOUT_S,
) -> Backend:
    """Wait until `child`'s backend waits on `blocker`'s lock; fail if the child exits first."""
    found: list[Backend] = []

    def ready() -> bool:
        if not child.alive():
            return True
        backend = blocked_backend(conn, application_name, blocker.pid)
        if backend is not None:
            found.append(backend)
        return bool(found)

    if not wait_for(ready, timeout=timeout) or not found:
        state = "exited" if not child.alive() else "still running, never blocked"
        pytest.fail(f"{child.module} {state} before waiting on the lock:\n{child.stderr()}")
    return found[0]


def backend_settled(conn: psycopg.Connection[Any], application_name: str) -> bool:
    """No backend of `application_name` is running a statement or holding a transaction open.

    After a client is killed, its server process may still be waiting on a lock, and finishes
    the statement once the lock is released (it learns of the dead client only when it next
    talks to it). Assertions about what survived must wait for that.
    """
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state <> 'idle'",
        (application_name,),
    ).fetchone()
    return row is not None and row[0] == 0


def wait_until_settled(conn: psycopg.Connection[Any], application_name: str) -> None:
    assert wait_for(lambda: backend_settled(conn, application_name), timeout=30), (
        f"a backend of {application_name} is still busy"
    )
