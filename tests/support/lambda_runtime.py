"""The AWS Lambda Python runtime's logging, reproduced to run our code under it.

What awslambdaric (4.x, `bootstrap._setup_logging` and `lambda_runtime_log_utils.JsonFormatter`)
does before it imports a handler: one handler on the root logger, stamping each record with the
invocation's `aws_request_id`; the root's level set only when `AWS_LAMBDA_LOG_LEVEL` names one
(else Python's WARNING stays). Text format: `[LEVEL]\\t<time>\\t<request id>\\t<message>`. JSON
format: one object per record, `message` being `record.getMessage()` (always a string), then
every attribute of the record that is not a standard one (`extra=`) as a key of its own,
None values dropped, encoded by a plain `json.JSONEncoder` (no `default`).

Run as `python -m tests.support.lambda_runtime` with the runtime's variables set: it sets up
logging so, imports `shared.telemetry` and logs what the test needs (see `main`).
"""

from __future__ import annotations

import json
import logging
import os
import sys

AWS_REQUEST_ID = "8f5e2c1a-0000-4000-8000-000000000001"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class _Stamp(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = AWS_REQUEST_ID
        return True


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        result = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%SZ"),
            "level": logging.getLevelName(min(50, max(0, record.levelno)) // 10 * 10),
            "message": record.getMessage(),
            "logger": record.name,
            "requestId": getattr(record, "aws_request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "aws_request_id" and key not in result:
                result[key] = value
        return json.JSONEncoder(ensure_ascii=False).encode(
            {k: v for k, v in result.items() if v is not None}
        )


def setup() -> None:
    """The runtime's root handler, format and level, from its environment variables."""
    handler = logging.StreamHandler(sys.stdout)
    if os.environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON":
        handler.setFormatter(_Json())
    else:
        handler.setFormatter(
            logging.Formatter("[%(levelname)s]\t%(asctime)s\t%(aws_request_id)s\t%(message)s")
        )
    handler.addFilter(_Stamp())
    root = logging.getLogger()
    level = {"TRACE": "DEBUG"}.get(*[os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()] * 2)
    if level in logging.getLevelNamesMapping():
        root.setLevel(level)
    root.addHandler(handler)


def main() -> None:
    """An INFO and a DEBUG event of ours (the DEBUG with a value JSON cannot encode), and a
    library's INFO and DEBUG line, as a function would log them after INIT."""
    setup()
    from datetime import date

    from shared.telemetry import log_event

    log_event("cron_job", job="expire_trials", processed=0)
    log_event("probe_debug", level=logging.DEBUG, day=date(2026, 12, 6))
    logging.getLogger("httpx").info("library info")
    logging.getLogger("botocore.endpoint").debug("library debug")


if __name__ == "__main__":
    main()
