"""A local Clerk JWKS endpoint (`/.well-known/jwks.json`) over real HTTP, whose answer a test
sets: the keys it publishes, or a failure (a status, a body that is no key set, a hang).

    with FakeJwks() as jwks:
        jwks.publish("k1", "k2")    # or jwks.answer(200, b"<html>", "text/html") / jwks.hang()
        token = jwks.token("k1", "user_a")
        ... CLERK_JWKS_URL=jwks.url ...
        jwks.fetches                       # how many times it was read

A hang holds the request until `release()` or the server closes; `received` is set when a
request arrives, before it is answered (cleared by `hang()`).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.support.http import ISSUER

KIDS = ("k1", "k2", "k3")


@functools.cache
def _private_keys() -> dict[str, rsa.RSAPrivateKey]:
    """The signing keys behind the kids, made once per session (each takes ~50 ms)."""
    return {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in KIDS}


class FakeJwks:
    def __init__(self) -> None:
        self.keys = _private_keys()
        self.fetches = 0
        self.received = threading.Event()
        self._released = threading.Event()
        self._answer: tuple[int, bytes, str, dict[str, str]] | None = None
        self._lock = threading.Lock()
        self.publish(*KIDS)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fake._lock:
                    fake.fetches += 1
                    answer = fake._answer
                fake.received.set()
                if answer is None:
                    fake._released.wait()
                    return
                status, body, content_type, headers = answer
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
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
        return f"http://{host!s}:{port}/.well-known/jwks.json"

    def jwk(self, kid: str) -> dict[str, Any]:
        """`kid`'s public key as Clerk publishes it."""
        public = RSAAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
        return {**public, "kid": kid, "use": "sig", "alg": "RS256"}

    def publish(self, *kids: str) -> None:
        """Answer a key set of these keys (and nothing else)."""
        self.answer(200, json.dumps({"keys": [self.jwk(kid) for kid in kids]}).encode())

    def answer(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        with self._lock:
            self._answer = (status, body, content_type, headers or {})

    def hang(self) -> None:
        """Take each request and answer nothing until `release()`; `received` then tells
        of the next request."""
        with self._lock:
            self._answer = None
        self._released.clear()
        self.received.clear()

    def release(self) -> None:
        self._released.set()

    def token(self, kid: str, sub: str, **claims: Any) -> str:
        """A Clerk-style session token for `sub`, signed with `kid`'s key and naming it."""
        now = int(time.time())
        payload = {"sub": sub, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + 300, **claims}
        return jwt.encode(payload, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def __enter__(self) -> FakeJwks:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
