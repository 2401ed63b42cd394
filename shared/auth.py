"""Clerk session tokens: verified without a network call when a PEM key is configured.

A token comes from `Authorization: Bearer …` or Clerk's `__session` cookie and must be RS256
(`alg: none` and HS256 tricks are refused by pinning the algorithm), unexpired (small leeway),
from `CLERK_ISSUER` when set, and for an authorised party when the token names one (Clerk's own
rule). The first authenticated call provisions the user with the core's get-or-create; a warm
container remembers whom it has provisioned, so later calls cost no extra query.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from shared.config import Settings, get_settings
from shared.errors import EMAIL_IN_USE, EmailInUseError
from shared.http.errors import ApiError

AUTH_REQUIRED = "Authentication required"
_PROVISIONED_MAX = 10_000
_provisioned: set[str] = set()


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    email: str
    is_admin: bool


class InvalidToken(Exception):
    """The token failed verification; the reason is for logs, clients only see 401."""


@cache
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=3600, timeout=5)


def _verification_key(token: str, settings: Settings) -> Any:
    if settings.clerk_jwt_key:
        return settings.clerk_jwt_key.replace("\\n", "\n")
    if settings.clerk_jwks_url:
        try:
            return _jwks_client(settings.clerk_jwks_url).get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientError as error:
            raise InvalidToken(f"no signing key: {error}") from None
    raise InvalidToken("CLERK_JWT_KEY or CLERK_JWKS_URL must be set")


def verify_session_token(token: str, settings: Settings) -> dict[str, Any]:
    """The token's claims, or `InvalidToken`."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=_verification_key(token, settings),
            algorithms=["RS256"],
            leeway=settings.clerk_leeway_s,
            issuer=settings.clerk_issuer or None,
            options={"require": ["exp", "sub"], "verify_iss": bool(settings.clerk_issuer)},
        )
    except jwt.PyJWTError as error:
        raise InvalidToken(type(error).__name__) from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip():
        raise InvalidToken("empty subject")  # would provision a user with an empty id
    azp = claims.get("azp")
    if azp and settings.authorized_parties and azp not in settings.authorized_parties:
        raise InvalidToken("unauthorised party")
    return claims


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def identity_from_claims(claims: dict[str, Any], settings: Settings) -> Identity:
    user_id = str(claims["sub"])
    email = claims.get("email")
    is_admin = user_id in settings.admin_ids or (
        _claim(claims, settings.admin_role_claim) == settings.admin_role_value
    )
    return Identity(
        user_id=user_id,
        email=email if isinstance(email, str) and email else f"{user_id}@keyflash.local",
        is_admin=is_admin,
    )


def _token_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get("__session") or None


def identify(request: Request) -> Identity | None:
    """The caller's verified identity, or None; no database work (cheap enough to run before
    a rate limit, so signed-in users get their own budget)."""
    token = _token_from(request)
    if token is None:
        return None
    settings = get_settings()
    try:
        identity = identity_from_claims(verify_session_token(token, settings), settings)
    except InvalidToken:
        return None
    request.state.user_id = identity.user_id
    return identity


def authenticate(request: Request) -> Identity:
    """The caller's identity, provisioned in the database; 401 when there is no valid token."""
    identity = identify(request)
    if identity is None:
        raise ApiError(401, AUTH_REQUIRED)
    provision(identity)
    return identity


def provision(identity: Identity) -> None:
    """Get-or-create the user once per warm container."""
    if identity.user_id in _provisioned:
        return
    try:
        from shared import storage  # only callers that provision load the storage layer

        storage.provision_user(identity.user_id, identity.email)
    except EmailInUseError:
        raise ApiError(409, EMAIL_IN_USE) from None
    if len(_provisioned) >= _PROVISIONED_MAX:
        _provisioned.clear()
    _provisioned.add(identity.user_id)


def forget(user_id: str) -> None:
    """After erasure: the next call by this user provisions a fresh row."""
    _provisioned.discard(user_id)


def require_admin(identity: Annotated[Identity, Depends(authenticate)]) -> Identity:
    if not identity.is_admin:
        raise ApiError(403, "Admin access required")
    return identity


CurrentUser = Annotated[Identity, Depends(authenticate)]
AdminUser = Annotated[Identity, Depends(require_admin)]
