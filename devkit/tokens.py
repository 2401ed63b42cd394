"""Dev session tokens: a local RS256 key standing in for Clerk's, so auth is real offline.

The key is generated once per state dir (`.keyflash/dev-signing-key.pem`, mode 0600) and kept,
so tokens minted by `keyflash token` stay valid across `keyflash dev` restarts. The local stack
sets CLERK_JWT_KEY to its public half and CLERK_ISSUER to `DEV_ISSUER`: the functions verify
dev tokens with exactly the code path that verifies Clerk's in production. Nothing here is
trusted anywhere else, and minting is refused when APP_ENV=production.

Clerk's webhooks get the same treatment: a Svix signing secret made once per state dir
(`.keyflash/dev-clerk-webhook-secret`, mode 0600), CLERK_WEBHOOK_SECRET on the local stack
unless the developer sets their own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devkit.console import CliError
from shared.auth import KEY
from shared.org_ids import is_org_id

KEY_FILE = "dev-signing-key.pem"
PUBLIC_KEY_FILE = "dev-signing-key.pub.pem"
WEBHOOK_SECRET_FILE = "dev-clerk-webhook-secret"
WEBHOOK_SECRET_PREFIX = "whsec_"  # Svix's: base64 of the HMAC key follows
DEV_ISSUER = "https://clerk.keyflash.localhost"
DEFAULT_TTL_S = 24 * 3600
MAX_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class DevKey:
    """The private key signs, the public PEM goes into CLERK_JWT_KEY."""

    private_pem: str
    public_pem: str
    path: Path

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the public PEM: what a running stack records, so `keyflash token` can
        tell whether that stack trusts the key it is about to sign with."""
        return hashlib.sha256(self.public_pem.encode()).hexdigest()


def _made_once(path: Path, make: Callable[[], bytes]) -> str:
    """`path`'s text, written (mode 0600) with `make()` when it does not exist yet.

    Written to a temporary file and hard-linked into place, so two commands racing on a fresh
    state dir end up with the same secret rather than one overwriting the other's.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(make())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another command won the race: use its secret
        finally:
            temporary.unlink()
    return path.read_text()


def new_private_pem() -> bytes:
    """A fresh RSA-2048 private key, PKCS#8 PEM: the dev signing key, and the tests' keys."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def dev_key(state_dir: Path) -> DevKey:
    """The state dir's signing key, generated on first use."""
    path = state_dir / KEY_FILE
    private_pem = _made_once(path, new_private_pem)
    try:
        private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    except ValueError as error:
        raise CliError(
            f"{path} is not a PEM private key ({error}); delete it to get a new one"
        ) from None
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    public_path = state_dir / PUBLIC_KEY_FILE
    if not public_path.exists() or public_path.read_text() != public_pem:
        public_path.write_text(public_pem)  # for tools that want a file (osls, curl scripts)
    return DevKey(private_pem, public_pem, path)


def _new_webhook_secret() -> bytes:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    return f"{WEBHOOK_SECRET_PREFIX}{key}\n".encode()


def dev_webhook_secret(state_dir: Path) -> str:
    """The state dir's Clerk webhook secret as Svix writes one (`whsec_` and the base64 of 32
    random bytes), made on first use and kept, so events signed with it stay valid across
    `keyflash dev` restarts."""
    path = state_dir / WEBHOOK_SECRET_FILE
    secret = _made_once(path, _new_webhook_secret).strip()
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except ValueError:
        key = b""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX) or not key:
        raise CliError(f"{path} is not a whsec_ webhook secret; delete it to get a new one")
    return secret


def require_dev_mode() -> None:
    """Dev tokens are for local stacks: refuse when this shell is configured for production."""
    if os.environ.get("APP_ENV", "").strip().lower() == "production":
        raise CliError(
            "refusing to mint a dev token with APP_ENV=production: dev tokens are only for the "
            "local stack (unset APP_ENV or set APP_ENV=development)"
        )


def _role_claim(admin: bool) -> dict[str, Any]:
    """The claim `shared.auth` reads for admins (ADMIN_ROLE_CLAIM, default `metadata.role`)."""
    if not admin:
        return {}
    path = os.environ.get("ADMIN_ROLE_CLAIM", "metadata.role").split(".")
    value: Any = os.environ.get("ADMIN_ROLE_VALUE", "admin")
    for part in reversed(path):
        value = {part: value}
    claims: dict[str, Any] = value
    return claims


def _org_permission(value: str) -> tuple[str, str]:
    """`org:<feature>:<permission>` (the `org:` may be left out) as (feature, permission)."""
    feature, colon, permission = value.removeprefix("org:").partition(":")
    if not colon or not KEY.fullmatch(feature) or not KEY.fullmatch(permission):
        raise CliError(
            f"--org-permission {value!r} must look like org:<feature>:<permission>", code=2
        )
    return feature, permission


def check_org_id(org_id: str) -> None:
    """A usage error (exit 2) unless `--org` is shaped as a Clerk org id, as the org routes and
    session tokens want it (`shared.org_ids.is_org_id`): `token` and `clerk-org` both check it."""
    if not is_org_id(org_id):
        raise CliError(
            f"--org {org_id!r} must look like a Clerk org id (org_ then letters and digits)", code=2
        )


def _org_claims(
    org_id: str, role: str, slug: str | None, permissions: Sequence[str], version: int
) -> dict[str, Any]:
    """The active-org claims as Clerk writes them in claims version 1 or 2 (`shared.auth`
    documents both; v2 packs permissions as bitmasks over the org features in `fea`)."""
    check_org_id(org_id)
    role_key = role.removeprefix("org:")
    if not KEY.fullmatch(role_key):
        raise CliError(f"--org-role {role!r} must be a role key such as admin or member", code=2)
    pairs = list(dict.fromkeys(_org_permission(p) for p in permissions))
    if version == 1:
        v1: dict[str, Any] = {
            "org_id": org_id,
            "org_role": f"org:{role_key}",
            "org_permissions": [f"org:{feature}:{name}" for feature, name in pairs],
        }
        return v1 | ({"org_slug": slug} if slug else {})
    org: dict[str, Any] = {"id": org_id, "rol": role_key} | ({"slg": slug} if slug else {})
    if not pairs:
        return {"o": org}
    features = list(dict.fromkeys(feature for feature, _ in pairs))
    names = list(dict.fromkeys(name for _, name in pairs))
    org["per"] = ",".join(names)
    org["fpm"] = ",".join(
        str(sum(1 << names.index(name) for f, name in pairs if f == feature))
        for feature in features
    )
    return {"o": org, "fea": ",".join(f"o:{feature}" for feature in features)}


def issue_token(
    key: DevKey,
    user_id: str,
    *,
    email: str | None = None,
    admin: bool = False,
    org_id: str | None = None,
    org_role: str = "member",
    org_slug: str | None = None,
    org_permissions: Sequence[str] = (),
    claims_version: int = 2,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """A Clerk-shaped session token (RS256) for `user_id`, valid for `ttl_s` seconds, with
    `org_id` as the active organization when given, in Clerk's claims version 1 or 2."""
    require_dev_mode()
    if not user_id.strip():
        raise CliError("--user must not be empty", code=2)
    if not 0 < ttl_s <= MAX_TTL_S:
        raise CliError(f"--ttl must be between 1 and {MAX_TTL_S} seconds", code=2)
    if claims_version not in (1, 2):
        raise CliError("--claims-version must be 1 or 2", code=2)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": user_id,
        "iss": DEV_ISSUER,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
        "sid": f"sess_dev_{secrets.token_hex(8)}",
        "email": email or f"{user_id}@keyflash.local",
        **_role_claim(admin),
        **({"v": 2} if claims_version == 2 else {}),
    }
    if org_id is not None:
        claims |= _org_claims(org_id, org_role, org_slug, org_permissions, claims_version)
    return jwt.encode(claims, key.private_pem, algorithm="RS256", headers={"kid": "keyflash-dev"})


def verify_token(key: DevKey, token: str) -> dict[str, Any]:
    """Decode a dev token with the public key (what the stack does; used by tests and `token`)."""
    claims: dict[str, Any] = jwt.decode(
        token, key.public_pem, algorithms=["RS256"], issuer=DEV_ISSUER
    )
    return claims
