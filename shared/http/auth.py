"""Who is calling: the session token read from the request, as FastAPI dependencies.

The token comes from `Authorization: Bearer …` or Clerk's `__session` cookie; `shared.auth`
verifies it. `SignedIn` routes need a valid token (401 otherwise, from `unauthenticated`, which
tells a session with pending tasks why, and answers 503 when Clerk's keys could not be read or
none is configured); `CurrentUser` routes also provision the caller (409 when another account
holds the token's email; 401 when Clerk deleted the user, whose token may outlive them by a
minute); `AdminUser` routes also need the admin role (403).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import cookie_parser

from shared import jwks
from shared.auth import (
    Identity,
    InvalidToken,
    PendingSession,
    Unverifiable,
    identity_from_claims,
    provision,
    verify_session_token,
)
from shared.config import get_settings
from shared.envelope import INVALID_TOKEN_CHALLENGE
from shared.http.errors import AUTH_REQUIRED, ApiError
from shared.http.guards import SESSION_COOKIE

SESSION_PENDING = (
    "Finish signing in: the session has pending tasks (such as choosing an organization)"
)


def _token_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return _first_cookie(request.headers.get("cookie", ""), SESSION_COOKIE) or None


def _first_cookie(header: str, name: str) -> str | None:
    """The first `name` cookie of a `Cookie` header, as Clerk's backend SDK reads `__session`
    (the `cookie` package keeps the first); Starlette's `request.cookies` keeps the last, so a
    stale cookie sent after the live one would make us act as another session than Clerk's."""
    for pair in header.split(";"):
        found = cookie_parser(pair)  # one pair: Starlette's own trimming and unquoting
        if name in found:
            return found[name]
    return None


def identify(request: Request) -> Identity | None:
    """The caller's verified identity, or None; no database work (cheap enough to run before
    a rate limit, so signed-in users get their own budget)."""
    token = _token_from(request)
    if token is None:
        return None
    settings = get_settings()
    try:
        identity = identity_from_claims(verify_session_token(token, settings), settings)
    except PendingSession:
        request.state.session_pending = True
        return None
    except Unverifiable as unverifiable:
        request.state.keys_unavailable = unverifiable.reason
        return None
    except InvalidToken:
        return None
    request.state.user_id = identity.user_id
    return identity


def unauthenticated(request: Request, message: str = AUTH_REQUIRED) -> ApiError:
    """The 401 for a caller `identify` found no identity for, or whose user Clerk deleted: the
    route's `message`, or, for a session with pending tasks, what is left to do (the client
    would otherwise retry as is); `error="invalid_token"` in its challenge when a token came.
    A 503 instead when the token could not be checked, Clerk's JWKS failing us or no Clerk key
    configured: a 401 would sign out a user whose token may be fine."""
    unavailable = getattr(request.state, "keys_unavailable", None)
    if unavailable:
        retry = {"Retry-After": str(jwks.MIN_INTERVAL_S)}  # the message is the log's `reason`
        return ApiError(503, unavailable, headers=retry)
    if getattr(request.state, "session_pending", False):
        message = SESSION_PENDING
    refused = _token_from(request) is not None
    headers = {"WWW-Authenticate": INVALID_TOKEN_CHALLENGE} if refused else None
    return ApiError(401, message, headers=headers)


def signed_in(request: Request) -> Identity:
    """The caller's identity, not provisioned; 401 when there is no valid token."""
    identity = identify(request)
    if identity is None:
        raise unauthenticated(request)
    return identity


def authenticate(request: Request) -> Identity:
    """`signed_in`'s identity, provisioned in the database (`EmailInUseError`, a 409, when
    another account holds the token's email; `AccountDeletedError`, a 401, when Clerk deleted
    the user). Called, not depended on: one dependency, so one threadpool hop per request."""
    identity = signed_in(request)
    provision(identity)
    return identity


def require_admin(identity: Annotated[Identity, Depends(authenticate)]) -> Identity:
    if not identity.is_admin:
        raise ApiError(403, "Admin access required")
    return identity


SignedIn = Annotated[Identity, Depends(signed_in)]
CurrentUser = Annotated[Identity, Depends(authenticate)]
AdminUser = Annotated[Identity, Depends(require_admin)]
