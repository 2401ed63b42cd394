"""The dependency audit of what ships (`python -m devkit.audit`): its closure and its verdicts.

The audit itself asks PyPI, so `.ci/run` runs it as a step of its own; the suite stays offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit import audit
from devkit.audit import AuditReport, Finding

ROOT = Path(__file__).resolve().parents[2]


def test_the_closure_holds_every_requirement_and_what_they_pull_in() -> None:
    closure = audit.shipped_closure()
    direct = {"psycopg", "sqlalchemy", "fastapi", "mangum", "upstash-redis", "stripe", "boto3"}
    assert direct <= closure.keys()
    assert {"starlette", "pydantic-core", "botocore", "psycopg-binary"} <= closure.keys()
    assert not {"pytest", "alembic", "uvicorn", "moto"} & closure.keys(), "dev tools do not ship"


def test_an_audit_that_covered_too_little_fails() -> None:
    closure = {f"package{i}": "1.0" for i in range(10)}
    thin = AuditReport(closure, by_pip_audit=[f"package{i}" for i in range(7)])
    assert not thin.audited_enough and "FAILED" in audit.render(thin)
    enough = AuditReport(closure, by_pip_audit=[f"package{i}" for i in range(8)])
    assert enough.audited_enough and "FAILED" not in audit.render(enough)


def test_a_finding_blocks_unless_accepted_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    report = AuditReport(
        {"example": "1.0"},
        by_pip_audit=["example"],
        findings=[Finding("example", "1.0", "PYSEC-0000-1", ["1.1"])],
    )
    assert report.blocking and "BLOCKING" in audit.render(report)
    monkeypatch.setitem(audit.ACCEPTED, "PYSEC-0000-1", "code path not reachable from ours")
    assert report.blocking == []
    assert "accepted: code path not reachable" in audit.render(report)
