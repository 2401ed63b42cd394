"""The benchmarks cannot rot: a smoke-sized run (`python -m benchmarks --quick`) completes.

It starts its own stack (embedded PostgreSQL or DATABASE_URL, PgBouncer, the Upstash emulator),
so it runs once per suite, in a subprocess, and asserts only the shape of what it wrote: valid
JSON with every section, and every target marked pass or fail. Timings are never asserted on:
the machine decides them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = {"cold_start", "warm", "roundtrips", "connections", "throughput", "scale", "memory"}
# Sized for about a minute on two idle cores; a loaded CI machine gets headroom.
TIMEOUT_S = 600


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


@pytest.fixture(scope="module")
def quick_run() -> dict[str, object]:
    before = set(RESULTS.glob("*.json")) if RESULTS.exists() else set()
    env = dict(os.environ)
    env.pop("PYTEST_XDIST_WORKER", None)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, (
        f"python -m benchmarks --quick exited {completed.returncode}:\n{completed.stderr[-4000:]}"
    )
    written = sorted(set(RESULTS.glob("*.json")) - before)
    assert written, f"no results/*.json written; stderr:\n{completed.stderr[-2000:]}"
    report: dict[str, object] = json.loads(written[-1].read_text())
    markdown = written[-1].with_suffix(".md")
    assert markdown.exists(), "the Markdown report is missing"
    for path in (written[-1], markdown):  # smoke results are not worth keeping
        path.unlink()
    return report


def test_every_section_ran_without_crashing(quick_run: dict[str, object]) -> None:
    sections = quick_run["sections"]
    assert isinstance(sections, dict)
    assert set(sections) == SECTIONS
    crashed = {name: data.get("error") for name, data in sections.items() if "traceback" in data}
    assert not crashed, crashed


def test_every_target_is_marked_pass_or_fail(quick_run: dict[str, object]) -> None:
    targets = quick_run["targets"]
    assert isinstance(targets, list) and len(targets) >= 8
    for verdict in targets:
        assert verdict["measured"], verdict
        if verdict["status"] == "not_run":  # only what this machine cannot measure
            assert verdict.get("reason"), verdict
            assert "pgbouncer" in verdict["reason"].lower() and not _in_ci(), verdict
        else:
            assert verdict["status"] in {"pass", "fail"}, verdict


def test_the_report_describes_the_machine_and_the_run(quick_run: dict[str, object]) -> None:
    meta = quick_run["meta"]
    assert isinstance(meta, dict)
    assert meta["quick"] is True
    assert meta["machine"]["nproc"]
    assert "python -m benchmarks --quick" in meta["command"]
