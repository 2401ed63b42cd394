"""Clerk session tokens and who they name, with no HTTP in sight (`shared.http.auth` reads them
from requests).

A token must be RS256 (`alg: none` and HS256 tricks are refused by pinning the algorithm),
unexpired (small leeway), from `CLERK_ISSUER` when set, and for an authorised party when the
token names one (Clerk's own rule); it is verified without a network call when a PEM key is
configured. The first authenticated call provisions the user with the core's get-or-create; a
warm container remembers whom it has provisioned, so later calls cost no extra query.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt

from shared.config import Settings

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


def provision(identity: Identity) -> None:
    """Get-or-create the user once per warm container; `EmailInUseError` when another account
    has the email (the HTTP layer answers 409)."""
    if identity.user_id in _provisioned:
        return
    from shared import storage  # only callers that provision load the storage layer

    storage.provision_user(identity.user_id, identity.email)
    if len(_provisioned) >= _PROVISIONED_MAX:
        _provisioned.clear()
    _provisioned.add(identity.user_id)


def forget(user_id: str) -> None:
    """After erasure: the next call by this user provisions a fresh row."""
    _provisioned.discard(user_id)
