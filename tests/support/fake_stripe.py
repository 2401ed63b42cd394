"""A small fake of the Stripe API on 127.0.0.1: a real HTTP server in the test process that
stripe-python talks to (STRIPE_API_BASE points the functions at it).

It serves what checkout and the billing portal call, with Stripe's own rules where our code
depends on them: a bearer secret key (else 401 `invalid_request_error`), form-encoded
parameters, and idempotency keys (the same key with the same parameters answers the first
response again; with other parameters it is a 400 `idempotency_error`). Every request is
recorded with its decoded parameters and headers, so tests assert what reached Stripe.
`fail_next` makes the next requests answer a given error, as Stripe would (`reply_next`: any
answer); a request naming a customer in `deleted_customers` is Stripe's 400 `resource_missing`
("No such customer"). `hold_next_create` keeps the next keyed create in progress, as a slow
Stripe does: meanwhile a request with its key gets Stripe's 409 `idempotency_error`.
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


IN_PROGRESS = (
    "There is currently another in-progress request using this Idempotent Key (that probably "
    "means you submitted twice, and the other request is still going through): {key}. "
    "Please try again later."
)  # Stripe's own words


@dataclass
class Hold:
    """A create held in progress: `arrived` once it reached the fake; it goes on after
    `release_after` requests with its key were answered 409 (or `release()`)."""

    release_after: int
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    conflicts: int = 0

    def release(self) -> None:
        self.released.set()


@dataclass
class FakeStripe:
    api_key: str = API_KEY
    requests: list[Recorded] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_customers: set[str] = field(default_factory=set)
    _replies: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = field(default_factory=dict)
    _failures: list[tuple[int, dict[str, Any] | bytes]] = field(default_factory=list)
    _hold: Hold | None = None
    _in_flight: dict[str, Hold] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def fail_next(
        self,
        status: int,
        error_type: str,
        *,
        times: int = 1,
        code: str = "",
        message: str = "fake failure",
        param: str | None = None,
    ) -> None:
        error = {"type": error_type, "code": code, "message": message, "param": param}
        self.reply_next(status, {"error": error}, times=times)

    def reply_next(self, status: int, body: dict[str, Any] | bytes, *, times: int = 1) -> None:
        """The next `times` requests get this answer, whatever they ask (bytes: sent as they
        are, e.g. a body cut short)."""
        self._failures.extend([(status, body)] * times)

    def hold_next_create(self, *, release_after: int = 1) -> Hold:
        """The next create with an idempotency key stays in progress until `release_after`
        requests with its key were refused with Stripe's 409 (or `Hold.release()`)."""
        self._hold = Hold(release_after)
        return self._hold

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
            if key and key in self._in_flight:
                self.requests.append(Recorded(method, path, params, headers))
                hold = self._in_flight[key]
                hold.conflicts += 1
                if hold.conflicts >= hold.release_after:
                    hold.release()
                error = {"type": "idempotency_error", "message": IN_PROGRESS.format(key=key)}
                return 409, {"error": error}
            if key and key in self._replies:
                first, status, reply = self._replies[key]
                self.requests.append(Recorded(method, path, params, headers))
                if first != params:
                    return 400, {"error": {"type": "idempotency_error", "message": "reused"}}
                return status, reply
            self.requests.append(Recorded(method, path, params, {**headers, "x-fake-new": "1"}))
            hold, self._hold = (self._hold, None) if key else (None, self._hold)
            if hold is None:
                status, reply = self._create(path, params)
                if key:
                    self._replies[key] = (params, status, reply)
                return status, reply
            self._in_flight[str(key)] = hold
        hold.arrived.set()
        hold.released.wait(30)
        with self._lock:
            status, reply = self._create(path, params)
            self._replies[str(key)] = (params, status, reply)
            del self._in_flight[str(key)]
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
            data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_fake{len(fake.requests)}")
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up waiting (its timeout): Stripe goes on anyway
                self.close_connection = True

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
        for hold in [fake._hold, *fake._in_flight.values()]:
            if hold is not None:
                hold.release()
        server.shutdown()
        server.server_close()
        thread.join()
