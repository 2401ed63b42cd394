"""Client IP from trusted proxy headers, and the reduced forms of IP and user agent we store."""

from __future__ import annotations

import contextlib
import ipaddress

from starlette.datastructures import Headers

from shared.config import IpStorage, ProxyTrust

USER_AGENT_MAX = 512

# Vercel's edge overwrites X-Real-IP and X-Forwarded-For with the client's address; Cloudflare
# sets CF-Connecting-IP. Each is client-controlled wherever that proxy is not really in front.
_PLATFORM_HEADERS = ("x-real-ip", "x-forwarded-for")
_CANDIDATE_HEADERS = {
    ProxyTrust.NONE: (),
    ProxyTrust.PLATFORM: _PLATFORM_HEADERS,
    ProxyTrust.CLOUDFLARE: ("cf-connecting-ip", *_PLATFORM_HEADERS),
}


def client_ip(headers: Headers, peer: str | None, *, trust_proxy: ProxyTrust) -> str | None:
    """The first valid IP from the headers `trust_proxy` allows (the first entry of each), in
    order, else the socket peer, in `_one_form`; None when nothing valid is known."""
    candidates: list[str] = []
    for name in _CANDIDATE_HEADERS[trust_proxy]:
        value = headers.get(name)
        if value:
            candidates.append(value.split(",")[0].strip())
    if peer:
        candidates.append(peer)
    for candidate in candidates:
        try:
            return _one_form(_address(candidate))
        except ValueError:
            continue
    return None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`text` as an address, also as a URL's authority writes one (`192.0.2.44:80`,
    `[2001:db8::44]`, `[2001:db8::44]:443`; proxies such as Azure Application Gateway put the
    client's port in X-Forwarded-For): the port says where it connected from, not who it is.
    ValueError for anything else."""
    if text.startswith("["):
        inside, bracket, port = text[1:].partition("]")
        if bracket and (not port or (port.startswith(":") and _is_port(port[1:]))):
            return ipaddress.IPv6Address(inside)
        raise ValueError("not an address")
    host, colon, port = text.partition(":")
    if colon and _is_port(port):
        return ipaddress.IPv4Address(host)
    return ipaddress.ip_address(text)


def _is_port(digits: str) -> bool:
    """A TCP port in ASCII digits."""
    return digits.isascii() and digits.isdigit() and len(digits) <= 5 and int(digits) <= 65535


def _one_form(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address one client has however it was written: an IPv4-mapped IPv6 address (what a
    dual-stack socket or proxy reports for an IPv4 client, `::ffff:192.0.2.44`) as the IPv4
    address, and an IPv6 address without its zone id (`%eth0` names the sender's interface,
    not another client). Rate-limit counters and stored addresses both use this form."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Address(int(address)))  # the integer carries no zone id
    return str(address)


def stored_ip(ip: str | None, mode: IpStorage) -> str | None:
    """What we may store: the /24 (IPv4) or /48 (IPv6) network address by default."""
    if ip is None or mode is IpStorage.NONE:
        return None
    if mode is IpStorage.FULL:
        return ip
    address = ipaddress.ip_address(ip)
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def stored_user_agent(value: str | None) -> str | None:
    """The User-Agent as stored: read as UTF-8 (invalid bytes as U+FFFD), at most USER_AGENT_MAX
    characters, without NUL (a header a Lambda event can carry, which PostgreSQL text cannot
    hold); None when nothing is left. `value` is the header as Starlette gives it, its bytes
    decoded as Latin-1 (`café` arrives as `cafÃ©`): those bytes are decoded again as UTF-8."""
    text = value or ""
    if not text.isascii():
        with contextlib.suppress(UnicodeEncodeError):  # not Starlette's Latin-1 text: as given
            text = text.encode("latin-1").decode("utf-8", "replace")
    return text.replace("\x00", "")[:USER_AGENT_MAX] or None
