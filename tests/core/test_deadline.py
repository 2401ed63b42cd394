"""`shared.deadline`: work bounded by a deadline runs in a thread of its own."""

from __future__ import annotations

import json
import logging
import time

import pytest

from shared import telemetry
from shared.deadline import run_within


def test_a_line_logged_by_bounded_work_carries_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker thread runs in a copy of the caller's context: a line it logs names the
    request it serves, as every other line of that request does."""
    caplog.set_level(logging.INFO, logger="keyflash")
    token = telemetry.request_id.set("req_0123456789abcdef")
    try:

        def work(_left: float) -> int:
            telemetry.log_event("bounded_work")
            return 7

        assert run_within(time.monotonic() + 30, work, "Test service") == 7
    finally:
        telemetry.request_id.reset(token)
    [line] = [
        json.loads(r.getMessage()) for r in caplog.records if "bounded_work" in r.getMessage()
    ]
    assert line["requestId"] == "req_0123456789abcdef"
