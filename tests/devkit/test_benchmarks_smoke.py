"""The benchmarks cannot rot: a smoke-sized run (`python -m benchmarks --quick`) completes.

It starts its own stack (embedded PostgreSQL or DATABASE_URL, PgBouncer, the Upstash emulator)
in a subprocess and writes its report into the test's temporary directory. Only the shape of
the report is checked: valid JSON with every section, none crashed, and every target marked
pass or fail. Timings are never asserted on: the machine decides them. One test, so that a
parallel run (`-n auto`) starts the stack once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.ci import in_ci

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "cold_start",
    "warm",
    "roundtrips",
    "connections",
    "throughput",
    "scale",
    "memory",
    "migration",
    "export",
    "core_ops",
    "latency",
    "capacity",
    "ramp",
    "replica",
    "indexes",
}
# About a minute on two idle cores; a machine busy with the rest of the suite gets headroom.
TIMEOUT_S = 600


def test_a_quick_benchmark_run_writes_a_complete_report(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(tmp_path)],
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
    written = sorted(tmp_path.glob("*.json"))
    assert len(written) == 1, f"expected one report; stderr:\n{completed.stderr[-2000:]}"
    assert written[0].with_suffix(".md").exists(), "the Markdown report is missing"
    report = json.loads(written[0].read_text())

    sections = report["sections"]
    assert set(sections) == SECTIONS
    crashed = {name: data.get("error") for name, data in sections.items() if "traceback" in data}
    assert not crashed, crashed
    latency = sections["latency"]
    failed = [
        (name, delay)
        for name, by_delay in latency["endpoints"].items()
        for delay, row in by_delay.items()
        if isinstance(row, dict) and "error" in row
    ] + [pool for pool, levels in latency["fluid"].items() if isinstance(levels, dict)]
    assert not failed, (failed, latency)

    targets = report["targets"]
    assert len(targets) >= 8, targets
    for verdict in targets:
        assert verdict["measured"], verdict
        if verdict["status"] == "not_run":  # only what this machine cannot measure
            assert "pgbouncer" in verdict.get("reason", "").lower() and not in_ci(), verdict
        else:
            assert verdict["status"] in {"pass", "fail"}, verdict

    meta = report["meta"]
    assert meta["quick"] is True and meta["complete"] is True
    assert meta["machine"]["nproc"]
    assert "python -m benchmarks --quick" in meta["command"]
