"""Audit what ships for known vulnerabilities: `python -m devkit.audit`.

What ships is requirements.txt and everything it pulls in, at the versions installed here (the
ones the test suite just ran against). That closure is pinned into a temporary requirements file
and handed to pip-audit, which asks PyPI for each release's known vulnerabilities.

Some sandboxes (ours included) reach PyPI only through a mirror that serves the per-project JSON
but not the per-release one pip-audit needs. For a package pip-audit could not audit, we read the
project JSON instead: its `vulnerabilities` list is the latest release's, so it answers for us
exactly when the installed version is the latest. Whatever neither source covers is reported as
not audited, by name, never passed off as clean.

It needs the network, so it is a step of its own in `.ci/run`, never part of the test suite.
Exit status: 0 when no known vulnerability is found outside `ACCEPTED` and at least
`MIN_AUDITED_SHARE` of what ships was audited; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements.txt"
PYPI_PROJECT_JSON = "https://pypi.org/pypi/{name}/json"

# Known vulnerabilities we ship knowingly: advisory id -> why it does not affect us. Keep empty
# unless a fix is impossible; every entry is also listed in docs/reliability-and-security.md.
ACCEPTED: dict[str, str] = {}
# An audit that could look at only a few packages proves little: below this share it fails.
MIN_AUDITED_SHARE = 0.8


@dataclass
class Finding:
    package: str
    version: str
    advisory: str
    fixed_in: list[str]


@dataclass
class AuditReport:
    """Per package: audited by pip-audit, audited from the project JSON, or not audited (why)."""

    closure: dict[str, str]
    by_pip_audit: list[str] = field(default_factory=list)
    by_project_json: list[str] = field(default_factory=list)
    not_audited: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.advisory not in ACCEPTED]

    @property
    def audited_enough(self) -> bool:
        audited = len(self.by_pip_audit) + len(self.by_project_json)
        return audited >= MIN_AUDITED_SHARE * len(self.closure)


def shipped_closure(requirements: Path = REQUIREMENTS) -> dict[str, str]:
    """{canonical name: installed version} of requirements.txt and all it depends on."""
    pending = [
        Requirement(line.split("#", 1)[0].strip())
        for line in requirements.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    closure: dict[str, str] = {}
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in closure:
            continue
        distribution = metadata.distribution(requirement.name)
        closure[name] = distribution.version
        for line in distribution.requires or []:
            dependency = Requirement(line)
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in ["", *requirement.extras]
            ):
                pending.append(dependency)
    return dict(sorted(closure.items()))


def run_pip_audit(closure: dict[str, str]) -> dict[str, dict[str, object]]:
    """pip-audit's JSON entry per package (`vulns`, or `skip_reason` when it could not audit)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="keyflash-lock-") as lock:
        lock.write("".join(f"{name}=={version}\n" for name, version in closure.items()))
        lock.flush()
        completed = subprocess.run(
            [sys.executable, "-m", "pip_audit", "--requirement", lock.name, "--no-deps",
             "--disable-pip", "--format", "json", "--progress-spinner", "off"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    if not completed.stdout.strip():
        raise RuntimeError(f"pip-audit produced no report: {completed.stderr.strip()[-500:]}")
    report = json.loads(completed.stdout)
    return {canonicalize_name(entry["name"]): entry for entry in report["dependencies"]}


def project_json(name: str) -> dict[str, object] | None:
    """PyPI's project JSON, or None when PyPI cannot be reached for it."""
    try:
        with urllib.request.urlopen(PYPI_PROJECT_JSON.format(name=name), timeout=20) as response:
            document: dict[str, object] = json.load(response)
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError):
        return None
    return document


def audit(closure: dict[str, str]) -> AuditReport:
    report = AuditReport(closure)
    for name, entry in run_pip_audit(closure).items():
        version = closure[name]
        if "skip_reason" not in entry:
            report.by_pip_audit.append(name)
            vulns = entry.get("vulns") or []
            assert isinstance(vulns, list)
            report.findings += [
                Finding(name, version, v["id"], list(v.get("fix_versions") or [])) for v in vulns
            ]
            continue
        document = project_json(name)
        info = document.get("info") if document else None
        latest = info.get("version") if isinstance(info, dict) else None
        if document is None or latest is None:
            report.not_audited[name] = f"pip-audit: {entry['skip_reason']}; PyPI unreachable"
        elif latest != version:
            report.not_audited[name] = (
                f"pip-audit: {entry['skip_reason']}; {version} is not the latest ({latest}), "
                "so PyPI's project JSON does not describe it"
            )
        else:
            report.by_project_json.append(name)
            vulns = document.get("vulnerabilities") or []
            assert isinstance(vulns, list)
            report.findings += [
                Finding(name, version, v["id"], list(v.get("fixed_in") or [])) for v in vulns
            ]
    return report


def render(report: AuditReport) -> str:
    lines = [
        f"{len(report.closure)} packages ship; audited by pip-audit: {len(report.by_pip_audit)}, "
        f"from PyPI's project JSON (installed = latest): {len(report.by_project_json)}, "
        f"not audited: {len(report.not_audited)}"
    ]
    lines += [f"  not audited: {name} {report.closure[name]}: {why}"
              for name, why in report.not_audited.items()]  # fmt: skip
    for finding in report.findings:
        accepted = ACCEPTED.get(finding.advisory)
        verdict = f"accepted: {accepted}" if accepted else "BLOCKING"
        fixed = ", ".join(finding.fixed_in) or "no fix released"
        lines.append(
            f"  {finding.package} {finding.version}: {finding.advisory} "
            f"(fixed in {fixed}) {verdict}"
        )
    lines.append(
        f"{len(report.blocking)} known vulnerabilities block"
        if report.blocking else "no known vulnerability in what was audited"
    )  # fmt: skip
    if not report.audited_enough:
        lines.append(f"FAILED: less than {MIN_AUDITED_SHARE:.0%} of what ships was audited")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.audit", description=__doc__)
    parser.parse_args(argv)
    report = audit(shipped_closure())
    print(render(report))
    return 1 if report.blocking or not report.audited_enough else 0


if __name__ == "__main__":
    sys.exit(main())
