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
# A password runs to the line's last '@': an unencoded one may hold '@', '/' and spaces, and
# masking a host too is better than showing the rest of a password.
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]*:)(?P<secret>[^\r\n]*)(?=@)", re.I)
# What must be percent-encoded in a user name or password (RFC 3986 userinfo): libpq and
# SQLAlchemy end the password at its first '@', urllib at the host's '/', '?' or '#', and
# urllib drops tabs and line breaks anywhere; '%' starts an escape.
_UNENCODED_IN_USERINFO = re.compile(r"[@/?#\[\]\s]|%(?![0-9a-f]{2})", re.I)
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


def unencoded_userinfo(url: str) -> str | None:
    """Why `url`'s user name or password is not percent-encoded as every parser needs, or None.

    The user info runs from `://` to the URL's only '@', so a second '@' anywhere (a raw one in
    the password, or in a parameter) is refused too. The reason never holds any of `url`.
    """
    userinfo, at, rest = url.partition("://")[2].partition("@")
    if at and ("@" in rest or _UNENCODED_IN_USERINFO.search(userinfo)):
        return (
            "must have its user name and password percent-encoded, and no other '@': "
            "percent-encode @ / ? # % [ ] and spaces (e.g. @ as %40, / as %2F, # as %23, "
            "% as %25, a space as %20)"
        )
    return None


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
    - Whitespace around the URL (pasted from a dashboard) is dropped; a user name or password
      that is not percent-encoded is refused (`unencoded_userinfo`), before anything parses it.
    """
    url = url.strip()
    problem = unencoded_userinfo(url)  # first: urllib's own errors may quote the password
    if problem is not None:
        raise DatabaseUrlError(f"{variable} {problem}")
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
