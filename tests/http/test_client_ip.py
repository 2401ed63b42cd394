"""Whose address a request is: the socket peer, or what a trusted proxy in front says
(TRUST_PROXY), seen where it ends up — the api_usage row — on a Lambda event and over HTTP."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import psycopg
import pytest

from shared import config
from shared.config import ConfigurationError, get_settings
from tests.support.http import Caller, Keys, fresh_ip

CLIENT = "192.0.2.10"  # what Cloudflare saw connecting to it
EDGE = "198.51.100.23"  # what the platform's edge reports
PEER = "203.0.113.77"  # the socket peer, on Lambda API Gateway's sourceIp
FORWARDED = {"cf-connecting-ip": CLIENT, "x-real-ip": EDGE, "x-forwarded-for": f"{EDGE}, 10.0.0.1"}


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in ("TRUST_PROXY", "VERCEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"IP_STORAGE": "full", **env}.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()


def recorded_ip(
    style: str, api_env: Keys, conn: psycopg.Connection[Any], headers: dict[str, str]
) -> str:
    result = Caller(style, api_env)(
        "searches", "GET", "/api/searches", user="ip_rule", headers=headers, source_ip=PEER
    )
    assert result.status == 200, result.body
    (ip,) = [ip for (ip,) in conn.execute('SELECT "ipAddress" FROM api_usage')]
    return str(ip)


@pytest.mark.parametrize("style", ["lambda_v2", "asgi"])
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, PEER),  # Lambda: forwarding headers are whatever the client wrote
        ({"VERCEL": "1"}, EDGE),  # Vercel's edge overwrites X-Real-IP; CF-Connecting-IP is not its
        ({"TRUST_PROXY": "true"}, EDGE),
        ({"TRUST_PROXY": "false", "VERCEL": "1"}, PEER),
        ({"TRUST_PROXY": "cloudflare"}, CLIENT),  # the original's order, for Cloudflare in front
    ],
    ids=["lambda", "vercel", "true", "false-on-vercel", "cloudflare"],
)
def test_the_client_address_follows_trust_proxy(
    style: str,
    env: dict[str, str],
    expected: str,
    api_env: Keys,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, **env)
    assert recorded_ip(style, api_env, admin_conn, FORWARDED) == expected


def fresh_ipv4() -> str:
    """An address in 198.18.0.0/15 (benchmarking) no other test uses: a fresh rate-limit bucket."""
    return str(ipaddress.IPv4Address((198 << 24 | 18 << 16) + uuid.uuid4().int % 2**17))


def reduced(ipv4: str) -> str:
    return str(ipaddress.ip_network(f"{ipv4}/24", strict=False).network_address)


@pytest.mark.parametrize(
    ("env", "forms", "stored"),
    [
        # A dual-stack proxy or socket writes an IPv4 client as ::ffff:a.b.c.d: reduced to its /48,
        # that was `::`, one bucket shared with no one and a stored address that says nothing.
        ({"TRUST_PROXY": "true"}, ("::ffff:{v4}", "{v4}"), "{v4/24}"),
        ({}, ("::ffff:{v4}", "{v4}"), "{v4/24}"),  # the socket peer, TRUST_PROXY off
        # A zone id names the sender's interface, not another client: one address, one bucket.
        ({"TRUST_PROXY": "true", "IP_STORAGE": "full"}, ("{v6}%eth0", "{v6}%eth1"), "{v6}"),
        # A port or URL brackets (`ip:port` from Azure Application Gateway or IIS ARR) say where
        # the client connected from, not who it is: they fell back to the socket peer's bucket.
        ({"TRUST_PROXY": "true"}, ("{v4}:80", "{v4}"), "{v4/24}"),
        ({"TRUST_PROXY": "true", "IP_STORAGE": "full"}, ("[{v6}]", "{v6}"), "{v6}"),
        ({"TRUST_PROXY": "true", "IP_STORAGE": "full"}, ("[{v6}]:443", "{v6}"), "{v6}"),
    ],
    ids=[
        "ipv4-mapped-header",
        "ipv4-mapped-peer",
        "zone-id-header",
        "ipv4-port-header",
        "ipv6-brackets-header",
        "ipv6-brackets-port-header",
    ],
)
def test_one_address_written_two_ways_is_one_client(
    env: dict[str, str],
    forms: tuple[str, str],
    stored: str,
    api_env: Keys,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, **{"IP_STORAGE": "reduced", "RATE_LIMIT_ENABLED": "true", **env})
    v4, v6 = fresh_ipv4(), fresh_ip()
    sent = [form.format(v4=v4, v6=v6) for form in forms]
    http = Caller("asgi", api_env)

    def from_client(address: str) -> dict[str, Any]:
        if "TRUST_PROXY" in env:
            return {"headers": {"x-real-ip": address}, "source_ip": PEER}
        return {"source_ip": address}

    answers = [http("health", "GET", "/api/health", **from_client(each)) for each in sent]
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["59", "58"]
    result = http("searches", "GET", "/api/searches", user="ip_form", **from_client(sent[0]))
    assert result.status == 200, result.text
    (ip,) = [ip for (ip,) in admin_conn.execute('SELECT "ipAddress" FROM api_usage')]
    assert str(ip) == stored.format(v6=v6, **{"v4/24": reduced(v4)})


def test_anonymous_ipv6_clients_share_a_budget_per_64(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One IPv6 client is usually handed a whole /64 and may send from any address in it: per
    address, each was a fresh budget. The next /64 is another client."""
    configure(monkeypatch, RATE_LIMIT_ENABLED="true")
    network = ipaddress.IPv6Network(f"{fresh_ip()}/64", strict=False)
    neighbour = network.broadcast_address + 1
    http = Caller("asgi", api_env)
    sent = [network[1], network[-1], neighbour, network[0x77]]
    answers = [http("health", "GET", "/api/health", source_ip=str(each)) for each in sent]
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["59", "58", "59", "57"]


@pytest.mark.parametrize("header", ["cf-connecting-ip", "x-real-ip", "x-forwarded-for"])
@pytest.mark.parametrize(
    "written",
    ["{v4}:80", "{v4}:65535", "[{v6}]", "[{v6}]:443", "[{v6}%eth0]:443", "[::ffff:{v4}]:80"],
)
def test_a_client_address_with_a_port_or_brackets_is_that_address(
    header: str,
    written: str,
    api_env: Keys,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each header the proxy trust reads: not the socket peer's address, nor the next header's."""
    configure(monkeypatch, TRUST_PROXY="cloudflare")
    v4, v6 = fresh_ipv4(), fresh_ip()
    headers = {"cf-connecting-ip": "", "x-real-ip": "", "x-forwarded-for": f"{EDGE}, 10.0.0.1"}
    headers[header] = written.format(v4=v4, v6=v6)
    if header == "x-forwarded-for":
        headers[header] += ", 10.0.0.1"
    expected = v6 if "{v6}" in written else v4
    assert recorded_ip("lambda_v2", api_env, admin_conn, headers) == expected


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "not-an-ip",
        "999.1.1.1",
        "192.0.2.10\x00",
        "\u0661\u0662\u0663.1.1.1",
        # Ports and brackets as a URL writes them, and nothing looser:
        "192.0.2.10:",
        "192.0.2.10:65536",
        "192.0.2.10:+80",
        "192.0.2.10:\uff18\uff10",  # fullwidth digits
        "192.0.2.10:80:80",
        "[192.0.2.10]",
        "[192.0.2.10]:80",
        "[2001:db8::1",
        "2001:db8::1]",
        "[2001:db8::1]:",
        "[2001:db8::1]80",
        "[[2001:db8::1]]",
    ],
)
def test_an_unusable_cf_connecting_ip_falls_back_to_the_next_header(
    forged: str,
    api_env: Keys,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, TRUST_PROXY="cloudflare")
    headers = {**FORWARDED, "cf-connecting-ip": forged}
    assert recorded_ip("lambda_v2", api_env, admin_conn, headers) == EDGE


@pytest.mark.parametrize("value", ["Cloudflare", "cf", "edge"])
def test_an_unknown_trust_proxy_is_a_configuration_error(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@localhost/db")
    configure(monkeypatch, TRUST_PROXY=value)
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    assert "TRUST_PROXY is invalid" in str(caught.value)
    assert "cloudflare" in str(caught.value)  # the example names the accepted values


@pytest.mark.parametrize("style", ["lambda_v2", "lambda_v1", "asgi"])
def test_a_non_ascii_user_agent_is_stored_as_sent(
    style: str, api_env: Keys, admin_conn: psycopg.Connection[Any]
) -> None:
    """The header's UTF-8 bytes were stored read as Latin-1 (`CurlUA-cafÃ©-ð\\x9f\\x94¥`)."""
    agent = "CurlUA-café-🔥"
    sent: Any = agent.encode() if style == "asgi" else agent  # bytes on the wire over HTTP
    result = Caller(style, api_env)(
        "searches", "GET", "/api/searches", user="ua_rule", headers={"user-agent": sent}
    )
    assert result.status == 200, result.text
    (stored,) = [ua for (ua,) in admin_conn.execute('SELECT "userAgent" FROM api_usage')]
    assert stored == agent
