"""The read-your-writes token: the primary's WAL position after a caller's last write.

Only while DATABASE_READ_URL is set. A response to a request that wrote carries the position
after its last commit (`X-Consistency-Token` header and the `kf_consistency` cookie, `X/Y` in
PostgreSQL's `pg_lsn` form); a request carrying one (header, else cookie) reads from a replica
only once that replica has replayed it (`shared.replicas`), in whatever container it lands.
A token that does not parse cannot be placed, so its request reads from the primary.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser

from shared.db import UNKNOWN_POSITION, Consistency

HEADER = "X-Consistency-Token"
COOKIE = "kf_consistency"
# A replica far behind after this long is refused by the lag rule anyway; until then the token
# keeps a browser's reads consistent with its writes across containers.
COOKIE_MAX_AGE_S = 600
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def encode(position: int) -> str:
    """`position` as PostgreSQL writes a pg_lsn: high and low 32 bits in hex."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def decode(token: str) -> int:
    """The position in `token`; one that does not parse requires the primary."""
    match = _LSN.fullmatch(token.strip())
    if match is None:
        return UNKNOWN_POSITION
    return (int(match[1], 16) << 32) | int(match[2], 16)


def from_request(headers: Headers) -> Consistency:
    """The request's consistency state, with the position its token names (if any)."""
    token = headers.get(HEADER) or cookie_parser(headers.get("cookie", "")).get(COOKIE)
    return Consistency(seen=decode(token) if token else None)


def add_token(headers: MutableHeaders, state: Consistency, *, secure: bool) -> None:
    """Hand a request that wrote its token back (header and cookie)."""
    if state.written is None:
        return
    # Positions only grow, so the new write's covers the caller's earlier ones; a token that
    # did not parse is not carried forward.
    token = encode(state.written)
    headers[HEADER] = token
    flags = "; Secure" if secure else ""
    headers.append(
        "Set-Cookie",
        f"{COOKIE}={token}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Lax{flags}",
    )
