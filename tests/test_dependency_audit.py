"""The dependency audit of what ships (`python -m devkit.audit`), run for real against PyPI."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit import audit
from devkit.audit import AuditReport, Finding

ROOT = Path(__file__).resolve().parent.parent


def test_the_closure_holds_every_requirement_and_what_they_pull_in() -> None:
    closure = audit.shipped_closure()
    direct = {"psycopg", "sqlalchemy", "fastapi", "mangum", "upstash-redis", "stripe", "boto3"}
    assert direct <= closure.keys()
    assert {"starlette", "pydantic-core", "botocore", "psycopg-binary"} <= closure.keys()
    assert not {"pytest", "alembic", "uvicorn", "moto"} & closure.keys(), "dev tools do not ship"


def test_what_ships_has_no_known_vulnerability(capsys: pytest.CaptureFixture[str]) -> None:
    """Every shipped package is audited or named as not audited; nothing known blocks."""
    closure = audit.shipped_closure()
    report = audit.audit(closure)
    with capsys.disabled():
        print("\n" + audit.render(report))
    accounted = [*report.by_pip_audit, *report.by_project_json, *report.not_audited]
    assert sorted(accounted) == sorted(closure)
    audited = len(report.by_pip_audit) + len(report.by_project_json)
    assert audited >= 0.8 * len(closure), f"only {audited} of {len(closure)} packages audited"
    assert report.blocking == []


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
