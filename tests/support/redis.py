"""A private `redis-server` for the real-Redis test lane: own port, own temp dir, no persistence.

Tests never touch the machine's shared Redis (often on 6379, maybe holding someone's data), and
never flush: a private server is thrown away whole when the session ends.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from devkit._host import LOOPBACK, Service, free_port, log_tail, wait_for

LOG_FILE = "redis.log"


class LocalRedisError(RuntimeError):
    """redis-server is missing or did not start; the message ends with its log's tail."""


class LocalRedis(Service):
    """redis-server on 127.0.0.1 (free port), data and log in `workdir`, stopped on exit."""

    def __init__(self, workdir: Path, *, timeout: float = 20.0) -> None:
        self.workdir = Path(workdir).absolute()
        self.timeout = timeout
        self.log_path = self.workdir / LOG_FILE
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        """Path of redis-server (Debian: `apt-get install redis-server`), or None."""
        return shutil.which("redis-server")

    @property
    def url(self) -> str:
        """redis://127.0.0.1:PORT/0."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        """Launch in the foreground as our child and wait until it answers PING."""
        binary = self.binary()
        if binary is None:
            raise LocalRedisError("redis-server is not installed: apt-get install redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()  # a restart after `kill` keeps the port
        args = [
            binary,
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        answered = wait_for(self._answers, timeout=self.timeout)
        if not answered or self._process.poll() is not None:
            self.stop()
            raise LocalRedisError(
                f"redis-server did not answer on port {self.port} within {self.timeout:g}s; "
                f"its log ends with:\n{log_tail(self.log_path)}"
            )

    def stop(self) -> None:
        """SIGTERM (no save: persistence is off) and wait for the exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash: the port refuses connections and the data is gone (no
        persistence). `start()` brings up an empty server on the same port."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def _answers(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            return True  # exited: stop waiting, start() reports it
        try:
            with redis.Redis(host=LOOPBACK, port=self.port, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False
