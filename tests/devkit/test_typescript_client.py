"""The committed TypeScript client (clients/typescript/) is in step with the API it types.

Offline and without Node: the committed openapi.json must be the merged document the functions
produce now, and client.ts the wrapper in devkit/typescript/ with its statuses filled in. CI also
regenerates schema.d.ts from the committed openapi.json and compiles everything (a step of
.ci/run, which installs the pinned tools with `npm ci`); where those tools are installed, a test
here regenerates the whole client through the CLI and compares it with the committed files, and
another runs client.test.ts against the client.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devkit import cli, gateway, typescript_client
from devkit.typescript_client import CLIENT_DIR, render
from tests.support.ci import missing_tool

REGENERATE = "run `keyflash openapi --typescript clients/typescript` and commit the result"
ERROR_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}
# Error statuses documented with a body of their own (the client types them as that body).
OWN_ERROR_BODIES = {"GET /api/health 503"}  # health's report, with status `unhealthy`


def committed(name: str) -> str:
    return (CLIENT_DIR / name).read_text()


def test_the_committed_openapi_json_is_the_live_merged_document() -> None:
    live = render(gateway.merged_openapi(gateway.load_all()))
    assert committed("openapi.json") == live, f"clients/typescript/ is out of date: {REGENERATE}"


def test_the_committed_client_is_the_wrapper_with_the_documented_statuses() -> None:
    document = json.loads(committed("openapi.json"))
    assert committed("client.ts") == typescript_client.render_client(document), REGENERATE
    assert '"GET /api/health": { statuses: [200, 207, 400, 429, 500, 503], own: [503] },' in (
        committed("client.ts")
    )


def test_every_documented_error_is_the_envelope_but_the_few_listed() -> None:
    document: dict[str, Any] = json.loads(committed("openapi.json"))
    envelope = document["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error", "message", "statusCode", "timestamp"]
    loose = [
        f"{method.upper()} {path} {status}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if status[:1] in "45"
        and response.get("content", {}).get("application/json", {}).get("schema") != ERROR_REF
    ]
    assert loose == sorted(OWN_ERROR_BODIES)
    health = document["paths"]["/api/health"]["get"]["responses"]
    own = health["503"]["content"]["application/json"]["schema"]
    assert own == health["200"]["content"]["application/json"]["schema"]


def test_the_npm_tools_are_pinned_exactly_and_locked() -> None:
    package = json.loads(committed("package.json"))
    lock = json.loads(committed("package-lock.json"))["packages"]
    wanted = package["devDependencies"]
    assert {"openapi-typescript", "typescript"} <= set(wanted)
    for name, version in wanted.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version} is not exact"
        assert lock[""]["devDependencies"][name] == version, name
        assert lock[f"node_modules/{name}"]["version"] == version, name
    assert package["scripts"]["generate"] == "openapi-typescript openapi.json -o schema.d.ts"


def test_the_client_is_checked_under_the_strictest_flags_an_app_may_use() -> None:
    """Apps copy client.ts, so their own tsconfig applies to it: we check under strict flags."""
    tsconfig = json.loads(committed("tsconfig.json"))
    options = tsconfig["compilerOptions"]
    strict = (
        "strict",
        "noUncheckedIndexedAccess",
        "exactOptionalPropertyTypes",
        "erasableSyntaxOnly",
    )
    assert {flag: options.get(flag) for flag in strict} == dict.fromkeys(strict, True)
    assert "client.ts" in tsconfig["include"]


def test_typescript_and_output_together_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["openapi", "-o", str(tmp_path / "x.json"), "--typescript", str(tmp_path)])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_generator_is_one_line_that_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(typescript_client, "GENERATOR", tmp_path / "no-such-openapi-typescript")
    target = tmp_path / "client"
    assert cli.main(["openapi", "--typescript", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "npm ci" in err and "Traceback" not in err
    # s53t8 F3: `npm ci` in DIR did not help; the line says the generator is never DIR's
    assert f"whatever DIR is ({target})" in err, err
    assert not target.exists()  # nothing half-written


def test_without_node_it_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cli.main(["openapi", "--typescript", str(tmp_path / "client")]) == 1
    assert "node is not installed" in capsys.readouterr().err


def test_the_cli_regenerates_exactly_the_committed_client(tmp_path: Path) -> None:
    if shutil.which("node") is None or not typescript_client.GENERATOR.exists():
        missing_tool("node and clients/typescript/node_modules (`npm ci` there) are needed")
    target = tmp_path / "client"
    assert cli.main(["openapi", "--typescript", str(target)]) == 0
    assert sorted(path.name for path in target.iterdir()) == [
        "client.ts",
        "openapi.json",
        "schema.d.ts",
    ]
    for path in target.iterdir():
        assert path.read_text() == committed(path.name), f"{path.name}: {REGENERATE}"


def test_a_failing_generator_is_one_line_with_its_last_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "openapi-typescript"
    broken.write_text(
        "#!/bin/sh\necho 'noise' >&2\necho 'Error: cannot parse openapi.json' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(typescript_client, "GENERATOR", broken)
    assert cli.main(["openapi", "--typescript", str(tmp_path / "client")]) == 1
    err = capsys.readouterr().err
    assert err == "keyflash: openapi-typescript failed: Error: cannot parse openapi.json\n"


def test_an_unwritable_directory_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(typescript_client, "GENERATOR", Path(__file__))  # exists; never runs
    occupied = tmp_path / "a-file"
    occupied.write_text("")
    assert cli.main(["openapi", "--typescript", str(occupied / "client")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("keyflash: cannot write into") and err.count("\n") == 1


def test_the_client_throws_what_the_api_does_not_document_with_its_headers(tmp_path: Path) -> None:
    """clients/typescript/client.test.ts, compiled with the committed client under --strict and run
    with a fake fetch: a platform's own JSON (API Gateway's `{"message": …}`), an envelope on an
    undocumented status and text all throw `UnexpectedResponse`, which keeps the headers."""
    tsc = CLIENT_DIR / "node_modules" / ".bin" / "tsc"
    if shutil.which("node") is None or not tsc.exists():
        missing_tool("node and clients/typescript/node_modules (`npm ci` there) are needed")
    (tmp_path / "package.json").write_text('{"type": "module"}\n')
    compiled = subprocess.run(
        [str(tsc), "-p", str(CLIENT_DIR), "--outDir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    ran = subprocess.run(
        ["node", str(tmp_path / "client.test.js")], capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
