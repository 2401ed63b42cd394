"""A local Google (OAuth token endpoint and Google Ads API) over real HTTP, serving recorded
answers in Google's documented shapes (tests/fixtures/google_ads).

    with FakeGoogleAds() as fake:
        fake.ads(200, fixture("historical_metrics"))   # or fake.token(400, …), headers=…,
                                                       # bytes: sent as they are,
                                                       # every_s=0.2 (the body byte by byte)
        ... GOOGLE_ADS_TOKEN_URL=fake.token_url, GOOGLE_ADS_API_BASE_URL=fake.url ...
        fake.calls  # [(path, headers, body)] in order; a form body is a dict of its fields

`POST /token` answers the token reply, any other POST the Ads reply.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

FIXTURES = Path(__file__).parents[1] / "fixtures" / "google_ads"

Reply = tuple[int, bytes, dict[str, str]]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _payload(body: Any) -> bytes:
    """`body` as JSON, or bytes as they are (an answer that is not JSON)."""
    return body if isinstance(body, bytes) else json.dumps(body).encode()


class FakeGoogleAds:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], Any]] = []
        self._token: Reply = (200, json.dumps(fixture("token")).encode(), {})
        self._ads: Reply = (200, json.dumps(fixture("historical_metrics")).encode(), {})
        self._ads_every_s = 0.0
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = self.headers.get("Content-Type", "").startswith("application/x-www-form")
                body = dict(parse_qsl(raw.decode())) if form else json.loads(raw or b"null")
                fake.calls.append(
                    (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                token = self.path == "/token"
                status, payload, headers = fake._token if token else fake._ads
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                every_s = 0.0 if token else fake._ads_every_s
                if not every_s:
                    self.wfile.write(payload)
                    return
                try:
                    for index in range(len(payload)):
                        self.wfile.write(payload[index : index + 1])
                        self.wfile.flush()
                        if fake._stop.wait(every_s):
                            return
                except OSError:  # the client gave up and closed the connection
                    return

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    def token(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._token = (status, _payload(body), headers or {})

    def ads(
        self, status: int, body: Any, headers: dict[str, str] | None = None, every_s: float = 0.0
    ) -> None:
        """The Ads API's answer; with `every_s`, its body one byte per `every_s` (each read is
        quick, the whole is slow: what only a total deadline stops)."""
        self._ads = (status, _payload(body), headers or {})
        self._ads_every_s = every_s

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]

    def __enter__(self) -> FakeGoogleAds:
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
