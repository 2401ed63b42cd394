"""Our JSON log lines as the platforms' runtimes write them.

Each case runs a fresh interpreter (`tests.support.lambda_runtime`): the runtime sets up logging
before it imports a handler, and `shared.telemetry` reads that set-up when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lambda_runtime import AWS_REQUEST_ID

ROOT = Path(__file__).resolve().parents[2]


def lambda_run(**env: str) -> list[str]:
    """The lines a function logs under the Lambda runtime with these variables."""
    runtime = {key: value for key, value in os.environ.items() if not key.startswith("AWS_LAMBDA_")}
    runtime.update(AWS_LAMBDA_FUNCTION_NAME="keyflash-dev-expire-trials", **env)
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.lambda_runtime"],
        cwd=ROOT,
        env=runtime,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stderr == ""
    return done.stdout.splitlines()


def ours(lines: list[str], event: str) -> list[str]:
    return [line for line in lines if f'"event":"{event}"' in line or f'"{event}"' in line]


@pytest.mark.parametrize("log_format", ["Text", "JSON"])
def test_our_info_events_are_logged_on_lambda_at_its_default_level(log_format: str) -> None:
    """Lambda leaves Python's root at WARNING unless a log level is set; Vercel sets INFO. Our
    INFO events (`cron_job`, webhook outcomes) are logged on both; libraries' INFO lines are not."""
    lines = lambda_run(AWS_LAMBDA_LOG_FORMAT=log_format)
    assert len(ours(lines, "cron_job")) == 1, lines
    assert not ours(lines, "probe_debug")
    assert not [line for line in lines if "library" in line]


@pytest.mark.parametrize(
    ("level", "logged"),
    [("TRACE", {"cron_job", "probe_debug"}), ("DEBUG", {"cron_job", "probe_debug"}),
     ("INFO", {"cron_job"}), ("WARN", set()), ("ERROR", set())],
)  # fmt: skip
def test_lambdas_log_level_is_our_level_too(level: str, logged: set[str]) -> None:
    lines = lambda_run(AWS_LAMBDA_LOG_FORMAT="JSON", AWS_LAMBDA_LOG_LEVEL=level)
    assert {event for event in ("cron_job", "probe_debug") if ours(lines, event)} == logged


def test_libraries_that_log_credentials_stay_at_info_at_debug() -> None:
    """botocore's DEBUG lines hold the request's headers: the session token, the key id."""
    lines = lambda_run(AWS_LAMBDA_LOG_FORMAT="JSON", AWS_LAMBDA_LOG_LEVEL="DEBUG")
    assert [json.loads(line)["message"] for line in lines if "library" in line] == ["library info"]


def test_under_lambdas_json_format_our_fields_are_fields() -> None:
    """Logs Insights queries `keyflash.event`, `keyflash.requestId`…: the line's object is
    the runtime's, with ours in it as an object, not as a string in `message`."""
    lines = lambda_run(AWS_LAMBDA_LOG_FORMAT="JSON", AWS_LAMBDA_LOG_LEVEL="DEBUG")
    records = [json.loads(line) for line in lines if "library" not in line]
    assert [record["message"] for record in records] == ["cron_job", "probe_debug"]
    job, probe = (record["keyflash"] for record in records)
    assert (job["event"], job["job"], job["processed"]) == ("cron_job", "expire_trials", 0)
    assert (probe["event"], probe["day"]) == ("probe_debug", "2026-12-06")
    assert {record["requestId"] for record in records} == {AWS_REQUEST_ID}


def test_under_lambdas_text_format_the_message_is_our_json() -> None:
    """Logs Insights discovers the fields of the first JSON object in a text line."""
    [line] = ours(lambda_run(AWS_LAMBDA_LOG_FORMAT="Text"), "cron_job")
    level, _, request_id, message = line.split("\t")
    assert (level, request_id) == ("[INFO]", AWS_REQUEST_ID)
    assert json.loads(message)["job"] == "expire_trials"
