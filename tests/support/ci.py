"""What a test does when a tool the machine lacks is missing: skip on a laptop, fail in CI.

CI (`CI=true`, set by `.ci/run`'s runner) installs every tool the suite uses, so a missing one
there is a broken install, never a reason to pass on less.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def missing_tool(message: str) -> NoReturn:
    """Skip with `message` on a laptop; fail with it in CI."""
    if in_ci():
        pytest.fail(f"{message} (CI must not skip this lane)", pytrace=False)
    pytest.skip(message)
