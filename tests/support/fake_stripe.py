"""A small fake of the Stripe API on 127.0.0.1: a real HTTP server in the test process that
stripe-python talks to (STRIPE_API_BASE points the functions at it).

It serves what checkout and the billing portal call, with Stripe's own rules where our code
depends on them: a bearer secret key (else 401 `invalid_request_error`), form-encoded
parameters, and idempotency keys (the same key with the same parameters answers the first
response again; with other parameters it is a 400 `idempotency_error`). Every request is
recorded with its decoded parameters and headers, so tests assert what reached Stripe.
`fail_next` makes the next requests answer a given error, as Stripe would; a request naming a
customer in `deleted_customers` is Stripe's 400 `resource_missing` ("No such customer").
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

API_KEY = "sk_test_fake_keyflash_0123456789"
PRICE = "price_test_pro"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    params: dict[str, str]  # form fields as sent: `metadata[clerkUserId]`, `line_items[0][price]`
    headers: dict[str, str]  # lower-cased names


@dataclass
class FakeStripe:
    api_key: str = API_KEY
    requests: list[Recorded] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_customers: set[str] = field(default_factory=set)
    _replies: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = field(default_factory=dict)
    _failures: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def fail_next(self, status: int, error_type: str, *, times: int = 1, code: str = "") -> None:
        body = {"error": {"type": error_type, "code": code, "message": "fake failure"}}
        self._failures.extend([(status, body)] * times)

    def created(self, path: str) -> list[Recorded]:
        """The requests to `path` that created something (replays excluded)."""
        return [r for r in self.requests if r.path == path and r.headers.get("x-fake-new")]

    def complete(self, session_id: str, *, customer: str, subscription: str) -> dict[str, Any]:
        """The session as `checkout.session.completed` carries it once paid."""
        session = dict(self.sessions[session_id])
        session.update(
            status="complete",
            payment_status="paid",
            customer=customer,
            subscription=subscription,
            customer_details={"email": session.get("customer_email")},
        )
        return session

    # --- the server side ------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        with self._lock:
            if headers.get("authorization") != f"Bearer {self.api_key}":
                self.requests.append(Recorded(method, path, params, headers))
                return 401, {"error": {"type": "invalid_request_error", "message": "bad key"}}
            if self._failures:
                self.requests.append(Recorded(method, path, params, headers))
                return self._failures.pop(0)
            key = headers.get("idempotency-key")
            if key and key in self._replies:
                first, status, reply = self._replies[key]
                self.requests.append(Recorded(method, path, params, headers))
                if first != params:
                    return 400, {"error": {"type": "idempotency_error", "message": "reused"}}
                return status, reply
            self.requests.append(Recorded(method, path, params, {**headers, "x-fake-new": "1"}))
            status, reply = self._create(path, params)
            if key:
                self._replies[key] = (params, status, reply)
            return status, reply

    def _create(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        customer = params.get("customer")
        if customer in self.deleted_customers:
            error = {
                "type": "invalid_request_error",
                "code": "resource_missing",
                "param": "customer",
                "message": f"No such customer: '{customer}'",
            }
            return 400, {"error": error}
        number = next(self._ids)
        if path == "/v1/checkout/sessions":
            expires_at = int(params.get("expires_at", time.time() + 86_400))
            if not time.time() + 1800 <= expires_at <= time.time() + 86_400:
                # Stripe: "between 30 minutes and 24 hours after the current time".
                return 400, {"error": {"type": "invalid_request_error", "param": "expires_at"}}
            session_id = f"cs_test_fake{number}"
            session = {
                "id": session_id,
                "object": "checkout.session",
                "created": int(time.time()),
                "mode": params.get("mode"),
                "status": "open",
                "payment_status": "unpaid",
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
                "customer": params.get("customer"),
                "customer_email": params.get("customer_email"),
                "client_reference_id": params.get("client_reference_id"),
                "metadata": _nested(params, "metadata"),
                "subscription": None,
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "expires_at": expires_at,
            }
            self.sessions[session_id] = session
            return 200, session
        if path == "/v1/billing_portal/sessions":
            portal_id = f"bps_fake{number}"
            return 200, {
                "id": portal_id,
                "object": "billing_portal.session",
                "customer": params.get("customer"),
                "return_url": params.get("return_url"),
                "url": f"https://billing.stripe.com/p/session/{portal_id}",
            }
        return 404, {"error": {"type": "invalid_request_error", "message": "unknown path"}}


def _nested(params: dict[str, str], name: str) -> dict[str, str]:
    prefix = f"{name}["
    return {
        k[len(prefix) : -1]: v for k, v in params.items() if k.startswith(prefix) and "][" not in k
    }


def _handler(fake: FakeStripe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, reply = fake.handle("POST", self.path, body, headers)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", f"req_fake{len(fake.requests)}")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def serve(api_key: str = API_KEY) -> Iterator[FakeStripe]:
    """A fake accepting `api_key`, listening on a free port of 127.0.0.1 (`.url`) until the
    block ends."""
    fake = FakeStripe(api_key=api_key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
