"""A local DataForSEO over real HTTP, for what respx cannot show: a body trickled byte by byte,
and a request that never gets its answer while another process waits on it (and is killed).

    with FakeDataForSEO() as fake:
        fake.answer(200, body)             # or fake.trickle(200, body, every_s=0.2) / fake.hang()
        ... DATAFORSEO_API_BASE_URL=fake.url ...
        fake.received.wait(10)             # a request arrived (set before answering)

Pacing waits on the stop event, so closing the server ends every pending answer at once.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class FakeDataForSEO:
    def __init__(self) -> None:
        self.requests: list[Any] = []  # the JSON bodies received, in order
        self.received = threading.Event()
        self.finished_answers = 0
        self._stop = threading.Event()
        self._mode: tuple[str, int, bytes, float] = ("answer", 200, b"{}", 0.0)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                fake.requests.append(json.loads(self.rfile.read(length) or b"null"))
                fake.received.set()
                fake._respond(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, status: int, body: Any) -> None:
        self._mode = ("answer", status, json.dumps(body).encode(), 0.0)

    def trickle(self, status: int, body: Any, *, every_s: float) -> None:
        """Headers at once, then the body one byte per `every_s`: each read is quick, the
        whole is slow (what a per-step timeout cannot catch)."""
        self._mode = ("trickle", status, json.dumps(body).encode(), every_s)

    def hang(self) -> None:
        """Take the request and answer nothing until the server closes."""
        self._mode = ("hang", 0, b"", 0.0)

    def _respond(self, handler: BaseHTTPRequestHandler) -> None:
        mode, status, body, every_s = self._mode
        if mode == "hang":
            self._stop.wait()
            return
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            if mode == "answer":
                handler.wfile.write(body)
            else:
                for index in range(len(body)):
                    handler.wfile.write(body[index : index + 1])
                    handler.wfile.flush()
                    if self._stop.wait(every_s):
                        return
            self.finished_answers += 1
        except OSError:  # the client gave up and closed the connection
            return

    def __enter__(self) -> FakeDataForSEO:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
