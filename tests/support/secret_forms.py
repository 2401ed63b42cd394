"""How upstream text can carry our secrets, and what the structured logs say once decoded: for
the tests that no provider log line carries a secret in any form."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

import pytest


def secret_forms(*secrets: str) -> list[str]:
    """Every way upstream text can carry `secrets`: as they are, percent-encoded (URLs and form
    bodies: either hex case, `+` for a space, `/` kept), JSON-escaped (ASCII-only or not, `\\/`
    for `/`, any character as `\\uXXXX` in either hex case, or only those that are not letters
    or digits)."""
    forms: list[str] = []
    for secret in secrets:
        encoded = quote(secret, safe="")
        escaped = json.dumps(secret)[1:-1]
        every = "".join(_unicode_escaped(char) for char in secret)
        forms += [
            secret,
            encoded,
            re.sub("%[0-9A-F]{2}", lambda hexed: hexed.group().lower(), encoded),
            quote_plus(secret, safe=""),
            quote(secret),
            escaped,
            escaped.replace("/", "\\/"),
            json.dumps(secret, ensure_ascii=False)[1:-1],
            every,
            every.upper().replace("\\U", "\\u"),
            "".join(char if char.isalnum() else _unicode_escaped(char) for char in secret),
        ]
    return list(dict.fromkeys(forms))


def _unicode_escaped(char: str) -> str:
    """`char` as JSON's `\\uXXXX` (a surrogate pair beyond U+FFFF), lower-case hex."""
    units = char.encode("utf-16-be").hex()
    return "".join("\\u" + units[i : i + 4] for i in range(0, len(units), 4))


def logged_values(caplog: pytest.LogCaptureFixture) -> str:
    """Every string in the captured structured log lines, decoded from their JSON (so an escaped
    secret is found as the secret), one per line."""
    values: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            values.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    for record in caplog.records:
        collect(json.loads(record.getMessage()))
    return "\n".join(values)
