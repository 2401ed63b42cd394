"""The `keyflash dev` stack as the devkit tests drive it: subprocesses of `.venv/bin/keyflash`.

Shared by every test module that runs the CLI (tests/devkit/test_cli.py, test_local_s3.py), so
that no test module imports another one: `keyflash(...)` runs one command in a state dir of its
own, `start_dev` starts `keyflash dev` and returns once /api/health answers, and `running_dev`
is the whole life of a module's stack (fresh state dir, start, SIGINT stop exiting 0 with no
process and no lock file left behind, state dir removed). The process checks read Linux /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devkit._host import free_port
from devkit.postgres import LocalPostgres

ROOT = Path(__file__).resolve().parents[2]
KEYFLASH = str(Path(sys.executable).with_name("keyflash"))
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# Variables that would point the CLI somewhere else than its own embedded stack.
FOREIGN = (
    "DATABASE_URL", "DIRECT_DATABASE_URL", "UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN",
    "REDIS_URL", "APP_ENV", "KEYWORD_API_PROVIDER", "CLERK_JWT_KEY", "CLERK_ISSUER",
    "ADMIN_USER_IDS", "RATE_LIMIT_ENABLED", "BACKUP_BUCKET", "BACKUP_PREFIX",
    "AWS_ENDPOINT_URL_S3", "ALLOWED_ORIGINS", "CLERK_WEBHOOK_SECRET", "CLERK_JWKS_URL",
    "DATABASE_URL_UNPOOLED", "KV_REST_API_URL", "KV_REST_API_TOKEN",
)  # fmt: skip


def cli_env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env.update({"KEYFLASH_STATE_DIR": str(state_dir), "NO_COLOR": "1"})
    env.update(extra)
    return env


def keyflash(
    *args: str, state_dir: Path, timeout: float = 180, stdin: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEYFLASH, *args],
        env=cli_env(state_dir, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        cwd=ROOT,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Non-zero exit, no traceback, exactly one `keyflash: …` error line naming the problem."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("keyflash: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def make_state_dir() -> Path:
    # Not pytest's tmp_path: its root is 0700 and PostgreSQL runs as another user when we are root.
    return Path(tempfile.mkdtemp(prefix="keyflash-cli-"))


def remove_state_dir(state_dir: Path) -> None:
    LocalPostgres(state_dir / "pgdata").stop()  # a no-op unless a test failed half-way
    shutil.rmtree(state_dir, ignore_errors=True)


# --------------------------------------------------------------------------- processes


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, state, command line) for every process we can see."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], cmdline)
    return table


def stack_processes(state_dir: Path, root: int | None = None) -> set[int]:
    """The live processes of a stack: `root` and its descendants, plus whatever names the
    state dir on its command line (PostgreSQL and the watchdog run detached) and theirs."""
    table = _proc_table()
    found = {
        pid for pid, (_, state, cmd) in table.items() if str(state_dir) in cmd and state != "Z"
    }
    if root is not None and root in table:
        found.add(root)
    while True:
        children = {
            pid for pid, (ppid, state, _) in table.items() if ppid in found and state != "Z"
        }
        if children <= found:
            return found
        found |= children


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting until {what}")
        time.sleep(0.05)


def assert_nothing_left(state_dir: Path, pids: set[int]) -> None:
    wait_until(
        lambda: not any(alive(pid) for pid in pids) and not stack_processes(state_dir),
        STOP_TIMEOUT_S,
        f"the stack's processes {sorted(pids)} are gone",
    )
    assert not (state_dir / "stack.lock").exists(), "stale lock file left behind"


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    state_dir: Path
    url: str
    log: Path
    ready_s: float

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def processes(self) -> set[int]:
        return stack_processes(self.state_dir, self.process.pid)

    def stop(self, signum: int = signal.SIGINT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_TIMEOUT_S)


def start_dev(
    state_dir: Path, port: int | None = None, *, args: tuple[str, ...] = (), **extra: str
) -> Stack:
    """`keyflash dev` on a free port (`args`: more options, `extra`: environment), returned
    once /api/health answers."""
    port = port or free_port()
    log = state_dir.with_name(state_dir.name + f"-dev-{port}.log")
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [KEYFLASH, "dev", "--port", str(port), *args],
            env=cli_env(state_dir, **extra),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    stack = Stack(process, state_dir, f"http://127.0.0.1:{port}", log, 0.0)
    deadline = started + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"keyflash dev exited with {process.returncode}:\n{stack.output()}")
        try:
            if httpx.get(f"{stack.url}/api/health", timeout=2).status_code < 500:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stack.stop(signal.SIGKILL)
            pytest.fail(f"keyflash dev not ready in {READY_TIMEOUT_S:.0f} s:\n{stack.output()}")
        time.sleep(0.1)
    stack.ready_s = time.monotonic() - started
    return stack


def token_for(stack: Stack, user: str, *extra: str) -> str:
    result = keyflash("token", "--user", user, *extra, state_dir=stack.state_dir)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@contextmanager
def running_dev(*args: str) -> Iterator[Stack]:
    """A `keyflash dev` (more options: `args`) in a fresh state dir, for the length of a module.

    On a clean exit it must stop on SIGINT with status 0 and leave no process nor lock file;
    whatever happened, it is killed if still alive and its state dir is removed."""
    state_dir = make_state_dir()
    running = start_dev(state_dir, args=args)
    try:
        yield running
        pids = running.processes()
        assert running.stop(signal.SIGINT) == 0, running.output()
        assert_nothing_left(state_dir, pids)
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        remove_state_dir(state_dir)
