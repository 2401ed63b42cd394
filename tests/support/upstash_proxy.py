"""A real HTTP server in front of the Upstash emulator that misbehaves as a REST gateway can:
it forwards every request and, for the commands a test names, trickles the reply one byte at a
time or swaps its `result` for another JSON value. It counts the requests that reach it (how
many Upstash calls the app sent) and answers 502 when the emulator cannot be reached, as a
gateway would. The app talks to it over real sockets through the real SDK; nothing of ours is
mocked.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from devkit._host import LOOPBACK

PADDING = b" " * 40  # JSON allows leading whitespace: a trickled reply of any command is long


@dataclass(frozen=True)
class Trickle:
    """Send the headers at once, then the body (padded) one byte every `interval` seconds."""

    interval: float


@dataclass(frozen=True)
class Result:
    """Answer `{"result": value}` (as sent: no base64) instead of the emulator's reply."""

    value: Any


Fault = Trickle | Result


class UpstashProxy:
    """Forwards to `upstream`; `faults` maps an upper-cased command name (or `*`) to a fault."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: dict[str, Fault] = {}
        self.received = 0  # requests received, whatever became of them
        self._counting = threading.Lock()
        self.stopping = threading.Event()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def fault_for(self, body: bytes) -> Fault | None:
        try:
            command = json.loads(body)
            name = str(command[0]).upper() if isinstance(command, list) and command else ""
        except ValueError:
            name = ""
        return self.faults.get(name) or self.faults.get("*")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                with proxy._counting:
                    proxy.received += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                try:
                    answer = httpx.post(proxy.upstream + self.path, content=body, headers=headers)
                except httpx.HTTPError:  # the emulator is down, or frozen past httpx's timeout
                    answer = httpx.Response(502, json={"error": "ERR upstream unreachable"})
                fault = proxy.fault_for(body)
                reply = answer.content
                if isinstance(fault, Result):
                    reply = json.dumps({"result": fault.value}).encode()
                if isinstance(fault, Trickle):
                    reply = PADDING + reply
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                if not isinstance(fault, Trickle):
                    with contextlib.suppress(OSError):  # the client gave up (timed out)
                        self.wfile.write(reply)
                    return
                try:
                    for byte in reply:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        if proxy.stopping.wait(fault.interval):
                            return
                except OSError:  # the client gave up: what the test wants
                    return

        return Handler

    def __enter__(self) -> UpstashProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
