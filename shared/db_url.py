"""Connection-string rules for Neon: pooler detection, TLS, startup parameters, redaction.

Pure functions with no I/O, so every rule is unit-testable and costs nothing at import.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "postgresql+psycopg"})

# The only startup parameters PgBouncer (and so Neon's pooler) accepts from clients.
POOLER_STARTUP_PARAMETERS = frozenset(
    {"application_name", "client_encoding", "datestyle", "timezone", "standard_conforming_strings"}
)
# libpq connection options that are not startup parameters (they configure the client side).
_CLIENT_SIDE_OPTIONS = frozenset(
    {
        "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslnegotiation", "sslsni",
        "channel_binding", "connect_timeout", "target_session_attrs", "gssencmode",
        "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
        "tcp_user_timeout", "passfile", "require_auth", "load_balance_hosts", "hostaddr",
        "host", "port", "dbname", "user", "password", "service",
    }
)  # fmt: skip
_WEAK_SSLMODES = frozenset({"disable", "allow", "prefer"})
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]*:)(?P<secret>[^@\s]*)(?=@)", re.I)
_PASSWORD_IN_KV = re.compile(r"(?P<head>password\s*=\s*)(?P<secret>'[^']*'|\S+)", re.I)


class DatabaseUrlError(ValueError):
    """A database URL breaks a rule; the message says which and never contains the password."""


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """What the core needs to know about where DATABASE_URL points."""

    sqlalchemy_url: str  # postgresql+psycopg://…, our own flags removed, TLS defaults applied
    host: str
    is_pooler: bool  # a transaction-mode PgBouncer: Neon's `-pooler` host or `?pgbouncer=true`
    is_neon: bool
    is_loopback: bool

    @property
    def redacted(self) -> str:
        return redact_url(self.sqlalchemy_url)


def redact_url(text: str) -> str:
    """Mask passwords in any text holding URLs or `password=` pairs (logs, error messages)."""
    masked = _PASSWORD_IN_URL.sub(lambda m: m.group("head") + "***", text)
    return _PASSWORD_IN_KV.sub(lambda m: m.group("head") + "***", masked)


def is_neon_pooler_host(host: str) -> bool:
    """Neon's pooled endpoint is the direct one with `-pooler` after the endpoint id."""
    endpoint = host.split(".", 1)[0]
    return endpoint.endswith("-pooler")


def _is_loopback(host: str) -> bool:
    if host in {"", "localhost"} or host.startswith("/"):
        return True  # empty host or a directory: a unix socket on this machine
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_database_url(url: str, *, variable: str = "DATABASE_URL") -> DatabaseTarget:
    """Validate `url` against the pooler and TLS rules and return the URL SQLAlchemy should use.

    - `?pgbouncer=true` (Prisma's flag) marks a transaction pooler and is removed before libpq
      sees it; Neon `-pooler` hosts are detected by name.
    - Through a pooler only the five PgBouncer-tracked startup parameters may be sent, so an
      `options=` parameter (e.g. `-c statement_timeout=…`) is refused up front rather than
      failing at connect time with `unsupported startup parameter`.
    - A non-loopback host gets `sslmode=require` when none is given, and a weaker mode is refused.
    """
    parts = urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES:
        raise DatabaseUrlError(f"{variable} must start with postgresql://")
    host = parts.hostname or ""
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if not host and "host" in query:
        host = query["host"]
    flagged_pooler = query.pop("pgbouncer", "false").lower() == "true"
    is_neon = host.endswith(".neon.tech") or host.endswith(".neon.build")
    is_pooler = flagged_pooler or is_neon_pooler_host(host)
    loopback = _is_loopback(host)

    if is_pooler:
        unsupported = sorted(
            key for key in query
            if key not in _CLIENT_SIDE_OPTIONS and key not in POOLER_STARTUP_PARAMETERS
        )  # fmt: skip
        if unsupported:
            raise DatabaseUrlError(
                f"{variable} points at a transaction pooler, which rejects the startup "
                f"parameter(s) {', '.join(unsupported)}; only "
                f"{', '.join(sorted(POOLER_STARTUP_PARAMETERS))} are allowed. Set session "
                "settings per transaction (SET LOCAL) or on the role (ALTER ROLE … SET …)."
            )

    sslmode = query.get("sslmode")
    if not loopback:
        if sslmode is None:
            query["sslmode"] = "require"
        elif sslmode in _WEAK_SSLMODES:
            raise DatabaseUrlError(
                f"{variable} uses sslmode={sslmode} for the remote host {host}; remote databases "
                "require TLS: use sslmode=require or verify-full."
            )

    sqlalchemy_url = urlunsplit(
        ("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), parts.fragment)
    )
    return DatabaseTarget(
        sqlalchemy_url=sqlalchemy_url,
        host=host,
        is_pooler=is_pooler,
        is_neon=is_neon,
        is_loopback=loopback,
    )
