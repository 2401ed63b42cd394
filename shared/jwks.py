"""Clerk's signing keys read from `CLERK_JWKS_URL`, kept per container (docs/http-contract.md,
Auth, has the rules; `shared.auth` verifies tokens with them).

Our own small client rather than PyJWT's `PyJWKClient`, which kept every key it had ever seen
(a withdrawn key stayed trusted for the container's life), raised on a body that was not JSON
(a 500), ran one read per waiting request behind its lock, and forgot failures (a read per
request during an outage). Here each read replaces the whole set; one read runs at a time and
those waiting take its result; a failed read is logged once, kept from being repeated for
`MIN_INTERVAL_S`, and leaves the last good set in use for up to `KEEP_S`.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit

from jwt import PyJWK, PyJWTError

from shared.telemetry import log_event

FETCH_TIMEOUT_S = 5.0  # each network step of a read; also the longest wait for another's read
FRESH_S = 300.0  # a set this old is read again (Clerk's SDKs: 5 minutes)
MIN_INTERVAL_S = 5  # no read starts sooner after the last one ended, whatever its outcome
KEEP_S = 3600.0  # while reads fail, the last good set is trusted this long after it was read
MAX_BODY_BYTES = 1 << 20  # a larger answer is no JWKS (Clerk's is a few KB): a failed read


class Unavailable(Exception):
    """The JWKS could not be read (or its read outlasted the wait) and no kept key names the
    token's `kid`: the token may well be valid (our dependency failed, not the caller)."""


class _ReadFailed(Exception):
    """One read went wrong: `failure` says how (logged), `status` the HTTP status if any."""

    def __init__(self, failure: str, status: int | None = None) -> None:
        super().__init__(failure)
        self.failure = failure
        self.status = status


@dataclass(frozen=True, slots=True)
class _State:
    """What a container knows, replaced whole (readers take it without the lock)."""

    keys: dict[str, Any] = field(default_factory=dict)  # kid -> RSA public key, last good read
    read_at: float = float("-inf")  # when that read ended
    tried_at: float = float("-inf")  # when the last read ended, good or not
    failed: bool = False  # whether that last read failed


class KeySource:
    """The signing keys published at one JWKS URL."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = FETCH_TIMEOUT_S,
        wait: float = FETCH_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.wait = wait  # the longest a request without a key waits for another's read
        self.clock = clock
        self._state = _State()
        self._reading = threading.Lock()

    def key(self, kid: str) -> Any | None:
        """`kid`'s public key; None when a current set lacks it (an invalid token);
        `Unavailable` when the JWKS could not be read and nothing kept has it."""
        state = self._state
        now = self.clock()
        kept = state.keys.get(kid) if now - state.read_at < KEEP_S else None
        if kept is not None and now - state.read_at < FRESH_S:
            return kept
        learned = True
        if now - state.tried_at >= MIN_INTERVAL_S:
            # With a kept key nobody need wait: a read under way elsewhere will renew it.
            learned = self._read(wait=self.wait if kept is None else 0)
            state = self._state
            now = self.clock()
        if now - state.read_at < KEEP_S and kid in state.keys:
            return state.keys[kid]
        if not learned or state.failed or now - state.read_at >= KEEP_S:
            raise Unavailable(kid)  # not learned: the read still under way may publish `kid`
        return None

    def _read(self, *, wait: float) -> bool:
        """Read the JWKS unless another request is (then wait up to `wait` s for its result)
        or a read ended less than `MIN_INTERVAL_S` ago; False when the wait ran out, nothing
        learned."""
        if not (self._reading.acquire(timeout=wait) if wait else self._reading.acquire(False)):
            return False
        try:
            if self.clock() - self._state.tried_at < MIN_INTERVAL_S:
                return True  # the read this request waited for
            try:
                keys = _signing_keys(self._fetch())
            except Exception as error:  # any, else a 500 and a read per request (a bad URL)
                failed = error if isinstance(error, _ReadFailed) else _ReadFailed("unexpected")
                log_event(
                    "jwks_fetch_failed",
                    level=logging.WARNING,
                    host=_host(self.url),
                    failure=failed.failure,
                    **({"status": failed.status} if failed.status is not None else {}),
                    **({} if failed is error else {"error": type(error).__name__}),
                    retryInS=MIN_INTERVAL_S,
                )
                self._state = _State(
                    self._state.keys, self._state.read_at, self.clock(), failed=True
                )
                return True
            now = self.clock()
            self._state = _State(keys, now, now)
            return True
        finally:
            self._reading.release()

    def _fetch(self) -> Any:
        """The endpoint's answer as JSON; any step (connecting, each read) may wait `timeout`."""
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_BODY_BYTES + 1)
        except HTTPError as error:
            error.close()
            raise _ReadFailed("status", error.code) from None
        except TimeoutError:
            raise _ReadFailed("timeout") from None
        except OSError as error:  # refused, DNS, TLS, reset (URLError is one)
            timed_out = isinstance(getattr(error, "reason", None), TimeoutError)
            raise _ReadFailed("timeout" if timed_out else "unreachable") from None
        except http.client.HTTPException:  # a malformed answer: a bad status line, cut short
            raise _ReadFailed("bad_response") from None
        if len(body) > MAX_BODY_BYTES:
            raise _ReadFailed("too_large")
        try:
            return json.loads(body)
        except ValueError:  # not JSON, or not UTF-8: an HTML error page, a wrong URL
            raise _ReadFailed("not_json") from None


def _opener() -> urllib.request.OpenerDirector:
    """urlopen's opener less its redirects (a 3xx is a failed read, never keys from elsewhere,
    https to http included) and its other schemes (`file:`, `data:`, `ftp:`)."""
    proxies = urllib.request.getproxies()  # as urlopen: HTTP(S)_PROXY, NO_PROXY
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler({s: proxies[s] for s in ("http", "https") if s in proxies}),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.UnknownHandler(),  # any other scheme: a URLError, not None
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_OPENER = _opener()


def _host(url: str) -> str | None:
    """`url`'s host for the log; None when it has none, or none urllib can parse."""
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _signing_keys(document: Any) -> dict[str, Any]:
    """kid -> public key of the RSA signing keys (the only ones RS256 tokens can use)."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise _ReadFailed("not_a_key_set")
    keys = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or entry.get("use") not in (None, "sig"):
            continue
        try:
            keys[kid] = PyJWK(entry, "RS256").key
        except (PyJWTError, ValueError):
            continue  # a malformed key: the others still count
    if not keys:
        raise _ReadFailed("no_usable_key")
    return keys
