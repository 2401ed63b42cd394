"""Clerk session tokens and who they name, with no HTTP in sight (`shared.http.auth` reads them
from requests).

A token must be RS256 (`alg: none` and HS256 tricks are refused by pinning the algorithm),
unexpired (small leeway), from `CLERK_ISSUER` when set, and for an authorised party when the
token names one (Clerk's own rule); it is verified without a network call when a PEM key is
configured. Claims of a type Clerk never issues (`exp`/`nbf`/`iat` not a number, `azp`, `sts`
or `sub` not a string) make the token invalid, never a 500. A session with pending tasks (v2's
`sts: "pending"`: choose an organization, reset a password) is signed out, as Clerk's SDKs treat
it by default (`treatPendingAsSignedOut`); any other status, or none (v1), is signed in, as
there. The first authenticated call provisions the user with the core's get-or-create; a warm
container remembers whom it has provisioned, so later calls cost no extra query.

The token also names the session's active organization (Clerk Organizations), read from either
claim version: v2 (`"v": 2`) nests it in `o` (`id`, `rol` without the `org:` prefix, `slg`, and
the permissions as `per` names and `fpm` bitmasks over the org features of `fea`); v1 (no `v`)
has `org_id`, `org_role`, `org_slug` and `org_permissions`. An org claim Clerk would never issue
(a wrong type, an id not shaped `org_…`, a role, feature or permission key outside `KEY`, a v2
role with the `org:` prefix, a malformed `fea` or `fpm`, an unknown `v`) gives the session no
active org rather than an error: org routes then answer as they do for a user outside the org.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, TypeVar

import jwt

from shared import jwks
from shared.config import Settings
from shared.errors import UserNotFoundError
from shared.org_ids import is_org_id
from shared.storable_text import unstorable_kind
from shared.telemetry import log_event

_PROVISIONED_MAX = 10_000
_provisioned: set[str] = set()

KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a role, feature or permission key (no `org:`)
_PERMISSION = re.compile(r"org:[A-Za-z0-9_-]{1,64}:[A-Za-z0-9_-]{1,64}")
# A v2 `fpm` integer: no longer than a whole 4 KB session token (Clerk's cap), so never shorter
# than one Clerk can send, and within what `int` reads (4300 digits).
_BITMASK = re.compile(r"[0-9]{1,3072}")
_FEATURE_SCOPES = {"o": True, "uo": True, "ou": True, "u": False}  # scope -> an org feature?


@dataclass(frozen=True, slots=True)
class ActiveOrg:
    """The session's active organization as the token states it; `shared.rbac` decides what
    the role and permissions allow. `role` is `org:<key>`, permissions `org:<feature>:<key>`."""

    id: str
    role: str
    slug: str | None
    permissions: frozenset[str]


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    email: str
    is_admin: bool
    org: ActiveOrg | None = None


class InvalidToken(Exception):
    """The token failed verification; the reason is for logs, clients only see 401."""


class PendingSession(InvalidToken):
    """A valid token for a session with tasks left: signed out, and the 401 says why."""


class Unverifiable(InvalidToken):
    """The token could not be checked, through no fault shown of its own (the HTTP layer
    answers 503 where a session is needed, never a 401 that would sign the user out);
    `reason` is what the log line says."""

    reason = "unverifiable"


class KeysUnavailable(Unverifiable):
    """`CLERK_JWKS_URL` could not be read and no kept key verifies the token."""

    reason = "clerk_keys_unavailable"


class NotConfigured(Unverifiable):
    """Neither CLERK_JWT_KEY nor CLERK_JWKS_URL gives a usable key."""

    reason = "clerk_not_configured"


@cache
def _key_source(url: str) -> jwks.KeySource:
    """One per container and URL: its keys, and its reads, are shared by every request."""
    return jwks.KeySource(url)


# Without a usable key no token can be verified (a 503): the deployment is told, like billing's
# `*_not_configured` lines (names only, never a value).
_UNUSABLE_KEY: dict[str, dict[str, object]] = {
    "missing": {"missing": ["CLERK_JWT_KEY", "CLERK_JWKS_URL"]},
    "invalid": {"invalid": ["CLERK_JWT_KEY"], "reason": "not a PEM public key"},
}


@cache
def report_unusable_clerk_key(problem: Literal["missing", "invalid"]) -> None:
    """Log `clerk_not_configured` for `problem`, once per container."""
    log_event("clerk_not_configured", level=logging.ERROR, **_UNUSABLE_KEY[problem])


def _verification_key(token: str, settings: Settings) -> Any:
    if settings.clerk_jwt_key:
        return settings.clerk_jwt_key.replace("\\n", "\n")
    if settings.clerk_jwks_url:
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("no key id")  # Clerk names the key: no read for a forgery
        try:
            key = _key_source(settings.clerk_jwks_url).key(kid)
        except jwks.Unavailable:
            raise KeysUnavailable("the JWKS could not be read") from None
        if key is None:
            raise InvalidToken("no such signing key")
        return key
    report_unusable_clerk_key("missing")
    raise NotConfigured("CLERK_JWT_KEY or CLERK_JWKS_URL must be set")


def verify_session_token(token: str, settings: Settings) -> dict[str, Any]:
    """The token's claims, or `InvalidToken` (`KeysUnavailable` when the JWKS failed us,
    `NotConfigured` when no key is configured)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=_verification_key(token, settings),
            algorithms=["RS256"],
            leeway=settings.clerk_leeway_s,
            issuer=settings.clerk_issuer or None,
            # `aud` unchecked, as Clerk's SDKs without an audience: an instance may add one.
            options={
                "require": ["exp", "sub"],
                "verify_iss": bool(settings.clerk_issuer),
                "verify_aud": False,
            },
        )
    except jwt.InvalidKeyError:  # the key, not the token: CLERK_JWT_KEY holds no key
        report_unusable_clerk_key("invalid")
        raise NotConfigured("CLERK_JWT_KEY is not a PEM public key") from None
    except jwt.PyJWTError as error:
        raise InvalidToken(type(error).__name__) from None
    for name in _NUMERIC_DATES:  # PyJWT takes any `int()`-able value: "9999999999", true
        if name in claims and not _is_number(claims[name]):
            raise InvalidToken(f"{name} not a number")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip():
        raise InvalidToken("empty subject")  # would provision a user with an empty id
    if unstorable_kind(sub) is not None:  # NUL or a lone surrogate: no user row can hold it
        raise InvalidToken("subject PostgreSQL cannot store")
    azp = claims.get("azp")
    if "azp" in claims and not isinstance(azp, str):  # a list or object would be unhashable
        raise InvalidToken("party not a string")
    if azp and settings.authorized_parties and azp not in settings.authorized_parties:
        raise InvalidToken("unauthorised party")
    sts = claims.get("sts")
    if "sts" in claims and not isinstance(sts, str):
        raise InvalidToken("session status not a string")
    if sts == "pending":
        raise PendingSession("session has pending tasks")
    return claims


_NUMERIC_DATES = ("exp", "nbf", "iat")


def _is_number(value: object) -> bool:
    """A JSON number, as RFC 7519's NumericDate must be (a bool is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class _Malformed(Exception):
    """An org claim Clerk would not issue: the session gets no active org."""


def _text(value: Any) -> str:
    """A claim that must be a string when present (absent reads as empty), and one PostgreSQL
    can store (the slug is written to the organization's row)."""
    if value is None:
        return ""
    if not isinstance(value, str) or unstorable_kind(value) is not None:
        raise _Malformed
    return value


def _key(value: str) -> str:
    if KEY.fullmatch(value) is None:
        raise _Malformed
    return value


def _org(org_id: Any, role_key: str, slug: Any, permissions: frozenset[str]) -> ActiveOrg:
    if not is_org_id(org_id):
        raise _Malformed
    return ActiveOrg(org_id, f"org:{_key(role_key)}", _text(slug) or None, permissions)


def _org_features(fea: Any) -> list[str]:
    """The org-scoped feature keys of `fea`, in order (`fpm` is aligned with them)."""
    features = []
    for entry in filter(None, (part.strip() for part in _text(fea).split(","))):
        scope, colon, feature = entry.partition(":")
        if not colon or scope not in _FEATURE_SCOPES:
            raise _Malformed  # skipping it could shift every later feature's bitmask
        if _FEATURE_SCOPES[scope]:
            features.append(_key(feature))
    return features


def _bitmask(mask: str) -> int:
    if _BITMASK.fullmatch(mask) is None:  # `int` would take " 1", "+1", "1_0"
        raise _Malformed
    return int(mask)


def _v2_permissions(org: dict[str, Any], fea: Any) -> frozenset[str]:
    """Bit i of a feature's `fpm` integer grants the i-th `per` name for that feature; a
    feature without an integer grants nothing and extra integers are ignored (as Clerk's SDKs).
    Each of `per`, `fpm` and `fea` is checked even when another is absent or empty (so nothing
    is granted): a malformed one means no active org, whatever it is paired with."""
    names, masks = _text(org.get("per")), _text(org.get("fpm"))
    keys = [_key(name.strip()) for name in names.split(",")] if names else []
    bitmasks = [_bitmask(mask) for mask in masks.split(",")] if masks else []
    features = _org_features(fea)
    return frozenset(
        f"org:{feature}:{key}"
        for feature, bitmask in zip(features, bitmasks, strict=False)
        for bit, key in enumerate(keys)
        if bitmask >> bit & 1
    )


def _v1_permissions(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(
        isinstance(p, str) and _PERMISSION.fullmatch(p) for p in value
    ):
        raise _Malformed
    return frozenset(value)


def _active_org(claims: dict[str, Any]) -> ActiveOrg | None:
    version = claims.get("v")
    try:
        if type(version) is int and version == 2:
            org = claims.get("o")
            if org is None:
                return None
            if not isinstance(org, dict):
                raise _Malformed
            permissions = _v2_permissions(org, claims.get("fea"))
            # v2 drops the role's `org:` prefix: a role holding one is malformed
            return _org(org.get("id"), _text(org.get("rol")), org.get("slg"), permissions)
        if version is not None and not (type(version) is int and version == 1):
            raise _Malformed  # a format we cannot read: no org rather than a guess
        if claims.get("org_id") is None:
            return None
        permissions = _v1_permissions(claims.get("org_permissions"))
        role_key = _text(claims.get("org_role")).removeprefix("org:")
        return _org(claims["org_id"], role_key, claims.get("org_slug"), permissions)
    except _Malformed:
        return None


def identity_from_claims(claims: dict[str, Any], settings: Settings) -> Identity:
    user_id = str(claims["sub"])
    email = claims.get("email")
    if not isinstance(email, str) or not email or unstorable_kind(email) is not None:
        email = None  # the placeholder below: an email no row could hold is no email
    is_admin = user_id in settings.admin_ids or (
        _claim(claims, settings.admin_role_claim) == settings.admin_role_value
    )
    return Identity(
        user_id=user_id,
        email=email or f"{user_id}@keyflash.local",
        is_admin=is_admin,
        org=_active_org(claims),
    )


def provision(identity: Identity, *, again: bool = False) -> None:
    """Get-or-create the user once per warm container (`again`: even if provisioned before, the
    row having been erased since); `EmailInUseError` when another account has the email (the
    HTTP layer answers 409)."""
    if identity.user_id in _provisioned and not again:
        return
    from shared import storage  # only callers that provision load the storage layer

    storage.provision_user(identity.user_id, identity.email)
    if len(_provisioned) >= _PROVISIONED_MAX:
        _provisioned.clear()
    _provisioned.add(identity.user_id)


def forget(user_id: str) -> None:
    """After erasure: the next call by this user provisions a fresh row."""
    _provisioned.discard(user_id)


T = TypeVar("T")

# Runs of `work` in `again_if_erased`. Each repeat follows a provisioning, so another
# `UserNotFoundError` means one more erasure of the user committed in between: several
# DELETE /api/me at once (a double click, two tabs) can do that more than once.
ERASED_ATTEMPTS = 5


def again_if_erased(identity: Identity, work: Callable[[], T]) -> T:
    """`work()`; if another container erased the user since this one provisioned them
    (`UserNotFoundError`), provision again (a fresh account, as a first call would) and run
    `work` once more, as long as erasures keep landing in between (`ERASED_ATTEMPTS` runs in
    all: only the person's own erasures can, and a request rarely races more than two)."""
    for _ in range(ERASED_ATTEMPTS - 1):
        try:
            return work()
        except UserNotFoundError:
            provision(identity, again=True)
    return work()
