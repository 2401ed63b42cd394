"""Defects at the HTTP edge found by an outside test (report t1): each test here failed before
its fix. Through the Caller, so the platforms' payload limits apply as deployed."""

from __future__ import annotations

from typing import Any

from shared.http.app import validation_message
from tests.support.http import Caller

ENVELOPE_KEYS = {"error", "message", "statusCode", "timestamp"}


def _validation_400(result: Any) -> str:
    assert result.status == 400, (result.status, result.text[:300])
    assert set(result.json) == ENVELOPE_KEYS and result.json["error"] == "Validation Error"
    message: str = result.json["message"]
    return message


# --- finding 2: a small invalid body must not make a multi-megabyte 400 -----------------------


def test_many_invalid_keywords_get_a_short_validation_message(call: Caller) -> None:
    """150,000 invalid items (300 KB, no sign-in needed) made a 7.2 MB 400: a platform 500."""
    body = {"keywords": [1] * 150_000, "matchType": "phrase"}
    result = call("keywords", "POST", "/api/keywords", json_body=body)
    message = _validation_400(result)
    assert len(result.raw) < 4_000
    shown = ", ".join(f"keywords.{i}: Input should be a valid string" for i in range(10))
    assert message == f"{shown}, and 149990 more"


def test_many_invalid_saved_results_get_a_short_validation_message(call: Caller) -> None:
    body = {
        "name": "n",
        "searchParams": {"keywords": ["x"], "matchType": "phrase", "location": "US"},
        "results": [{}] * 20_000,
    }
    result = call("searches", "POST", "/api/searches", user="user_edges", json_body=body)
    message = _validation_400(result)
    assert len(result.raw) < 4_000
    assert message.startswith("results.0.keyword: Field required, ")
    assert message.endswith(f", and {20_000 * 6 - 10} more")


def test_the_validation_message_keeps_the_original_format_below_the_cap() -> None:
    custom = [{"type": "kf_x", "msg": "Keyword cannot be empty", "loc": ("keywords", i)}
              for i in range(50)]  # fmt: skip
    issues = [*custom, {"type": "missing", "msg": "Field required", "loc": ("body", "matchType")}]
    assert validation_message(issues) == "Keyword cannot be empty, matchType: Field required"
    many = [{"type": "kf_x", "msg": f"m{i}", "loc": ()} for i in range(12)]
    assert validation_message(many * 3) == ", ".join(f"m{i}" for i in range(10)) + ", and 2 more"
