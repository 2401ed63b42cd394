"""The deployed artifact: what each function's Lambda package holds, and that it holds bytecode.

`keyflash package` builds the trees the deploy zips (devkit/package.py reads serverless.yml's
patterns and the requirements plugin's settings), compiled by a Python of the Lambda runtime's
version (3.12), as devkit/serverless/bytecode.js compiles the real zips. Checked here: every
shipped `.py` has its `.pyc` for that version, hash-based and unchecked (a read-only /var/task
would otherwise compile it at every cold start), that its compiled extensions are that
version's, and nothing else but the code ships. No AWS, no Docker, no network: dependencies come
from the test's own environment, so the trees are built only where it is the runtime's Python
(CI's 3.12 lane); elsewhere a build is refused. A build replaces only the folders it made.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from devkit.cli import main as keyflash
from devkit.package import (
    BYTECODE,
    MARKER,
    ROOT,
    build,
    closure,
    dependency_files,
    lambda_markers,
    read_descriptor,
    read_requirements,
    runtime_python,
)
from tests.support.ci import missing_tool

RUNTIME = read_descriptor().runtime
RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"
TAG = "cpython-" + RUNTIME.replace(".", "")
UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source not checked
NEVER_SHIPPED = {"tests", "devkit", "benchmarks", "docs", "migrations", "boto3", "botocore"}
# boto3's own dependencies: the deploy drops the boto3 requirement before pip runs (noDeploy).
RUNTIME_ONLY = {"s3transfer", "jmespath"}
SAMPLE = ["health", "searches", "cron_prune"]  # plain, authenticated, cron


@pytest.fixture(scope="module")
def python() -> str:
    """The Lambda runtime's Python (3.12): CI has it under pyenv; a laptop without it skips."""
    try:
        return runtime_python(RUNTIME)
    except RuntimeError as error:
        missing_tool(str(error))


@pytest.fixture(scope="module")
def magic(python: str) -> bytes:
    done = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.MAGIC_NUMBER.hex())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return bytes.fromhex(done.stdout.strip())


# What `--out` may already hold: a project (or a home folder) whose files are no package's.
THEIRS = {"README.md": "mine\n", "src/app.py": "code\n", ".git/HEAD": "ref\n", ".bashrc": "rc\n"}


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder beside `--out` that a symbolic link in a previous build points to."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "keep.txt").write_text("keep\n")
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Path:
    """`--out .` run in a project that holds its own files and a previous build of `health`
    (marked, with a stale file and a symbolic link out of the folder)."""
    if RUNNING != RUNTIME:
        pytest.skip(f"a package is built from a Python {RUNTIME} environment, this is {RUNNING}")
    folder = tmp_path_factory.mktemp("project")
    for relative, text in THEIRS.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    previous = folder / "health"
    previous.mkdir()
    (previous / MARKER).write_text("built by keyflash package\n")
    (previous / "stale.py").write_text("STALE = True\n")
    (previous / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert keyflash(["package", *SAMPLE, "--out", "."]) == 0
    return folder


@pytest.fixture(scope="module")
def trees(project: Path) -> dict[str, Path]:
    return {name: project / name for name in SAMPLE}


def _files(tree: Path) -> set[str]:
    return {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}


@pytest.mark.parametrize("function", SAMPLE)
def test_every_shipped_module_has_the_runtimes_unchecked_bytecode(
    function: str, trees: dict[str, Path], magic: bytes
) -> None:
    tree = trees[function]
    modules = sorted(tree.rglob("*.py"))
    assert len(modules) > 500, "the dependencies are missing from the package"
    missing, wrong = [], []
    for module in modules:
        pyc = module.parent / "__pycache__" / f"{module.stem}.{TAG}.pyc"
        if not pyc.exists():
            missing.append(module.relative_to(tree).as_posix())
            continue
        head_magic, flags = struct.unpack("<4sI", pyc.read_bytes()[:8])
        if (head_magic, flags) != (magic, UNCHECKED_HASH):
            wrong.append(pyc.relative_to(tree).as_posix())
    assert not missing, f"{len(missing)} modules ship without {TAG} bytecode: {missing[:10]}"
    assert not wrong, f"{len(wrong)} .pyc are not {RUNTIME}'s unchecked hash-based: {wrong[:10]}"
    stray = [f for f in _files(tree) if f.endswith(".pyc") and f".{TAG}." not in f]
    assert not stray, f"bytecode of another Python ships: {stray[:10]}"


@pytest.mark.parametrize("function", SAMPLE)
def test_every_compiled_extension_is_the_runtimes(function: str, trees: dict[str, Path]) -> None:
    """s49t5 F2: a tree built from a 3.11 venv held 3.12 bytecode beside pydantic_core's,
    psycopg_binary's and mmh3's 3.11 extensions, and could not be imported on 3.12."""
    extensions = [p.name for p in trees[function].rglob("*.so")]
    tagged = [name for name in extensions if re.search(r"\.cpython-\d+-", name)]
    assert len(tagged) >= 3, f"pydantic_core, psycopg_binary and mmh3 should ship: {extensions}"
    wrong = [name for name in tagged if f".{TAG}-" not in name]
    assert not wrong, f"extensions of another Python ship: {wrong[:10]}"


def test_a_build_replaces_only_the_folders_it_built(project: Path, outside: Path) -> None:
    """s49t5 F1: `keyflash package --out DIR` deleted everything in DIR (a README, src/, .git/)
    before building. Now the project's files stay, the previous build of `health` (marked) is
    replaced, and its symbolic link is removed, not followed."""
    for relative, text in THEIRS.items():
        assert (project / relative).read_text() == text, relative
    assert {p.name for p in project.iterdir()} == {"README.md", "src", ".git", ".bashrc", *SAMPLE}
    health = project / "health"
    assert not (health / "stale.py").exists() and not (health / "escape").is_symlink()
    assert (outside / "keep.txt").read_text() == "keep\n"
    assert all((project / name / MARKER).is_file() for name in SAMPLE)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (symbolic links not followed): file text or link target."""
    entries = {}
    for directory, subdirs, files in os.walk(folder):
        for name in subdirs + files:
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                entries[relative] = f"-> {os.readlink(path)}"
            elif path.is_file():
                entries[relative] = path.read_text()
            else:
                entries[relative] = "/"
    return entries


@pytest.mark.parametrize("kind", ["folder", "file", "symlink"])
def test_a_function_folder_it_did_not_build_is_refused(tmp_path: Path, kind: str) -> None:
    """`--out` already holds `health` that no build made (a folder of the user's, a file, or a
    symbolic link, even to a marked build elsewhere): refused, exit 1, nothing touched."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    (out / "README.md").write_text("mine\n")
    if kind == "folder":
        (out / "health").mkdir()
        (out / "health" / "notes.txt").write_text("mine\n")
    elif kind == "file":
        (out / "health").write_text("mine\n")
    else:
        elsewhere.mkdir()
        (elsewhere / MARKER).write_text("built by keyflash package\n")
        (elsewhere / "keep.txt").write_text("keep\n")
        (out / "health").symlink_to(elsewhere, target_is_directory=True)
    before = _snapshot(tmp_path)
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = keyflash(["package", "searches", "health", "--out", str(out)])
    assert code == 1
    said = stderr.getvalue()
    assert f"{out / 'health'}" in said and "nothing was changed" in said, said
    assert _snapshot(tmp_path) == before


def test_a_tree_is_refused_from_another_python_than_the_runtimes(tmp_path: Path) -> None:
    """s49t5 F2: built from a venv of another Python the tree's compiled extensions are that
    Python's, and the runtime cannot import them: refused, with the way to build it."""
    target = RUNTIME if RUNNING != RUNTIME else "3.99"  # what this environment is not
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=rf"this environment is Python {RUNNING}\b") as error:
        build(out, ["health"], runtime=target)
    assert f".venv-{target}/bin/keyflash package" in str(error.value)
    assert not out.exists()


@pytest.mark.parametrize("function", SAMPLE)
def test_only_code_ships(function: str, trees: dict[str, Path]) -> None:
    tree = trees[function]
    top = {p.name.removesuffix(".py") for p in tree.iterdir()}
    assert not top & NEVER_SHIPPED, sorted(top & NEVER_SHIPPED)
    assert not {p for p in top if p.endswith(".md") or p.endswith((".yml", ".json", ".toml"))}
    ours = {f for f in _files(tree) if f.split("/")[0] in ("shared", "functions")}
    sources = {f for f in ours if not f.endswith(".pyc")}
    module = read_descriptor().functions[function][-1]  # the function's own module, listed last
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "shared").rglob("*.py")}
    expected |= {"functions/__init__.py", module}
    if function.startswith("cron_"):
        expected.add("functions/cron/__init__.py")
    assert sources == expected


def test_the_dependencies_metadata_ships(trees: dict[str, Path]) -> None:
    """psycopg reads its version from its .dist-info, and SQLAlchemy refuses a psycopg whose
    version it cannot read: slim's default patterns, which delete .dist-info, broke every
    database call of the deployed functions."""
    shipped = {
        dist.metadata["Name"].lower(): dist.version
        for dist in importlib.metadata.distributions(path=[str(trees["health"])])
    }
    for name in ("psycopg", "sqlalchemy", "pydantic", "fastapi"):
        assert shipped.get(name) == importlib.metadata.version(name), (name, shipped.get(name))
    assert not {"boto3", "botocore"} & set(shipped), "noDeploy: the runtime has its own"


def _pins() -> dict[str, str]:
    """The deploy's requirements file (serverless.yml `fileName`): {name: pinned version}."""
    pins = {}
    for requirement in read_requirements(ROOT / read_descriptor().requirements):
        (spec,) = requirement.specifier
        assert spec.operator == "==" and not requirement.extras, f"not a pin: {requirement}"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_tree_holds_exactly_the_pinned_distributions(trees: dict[str, Path]) -> None:
    """s45t2 F4: the deploy resolved requirements.txt's ranges again, without boto3, and shipped
    python-dateutil 4 where the tested tree had 2.9; the tree had boto3's own dependencies,
    which the deploy never installs. Both now hold the pinned set, at its versions."""
    shipped = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions(path=[str(trees["health"])])
    }
    assert shipped == _pins()
    assert not RUNTIME_ONLY & {p.name for p in trees["health"].iterdir()}


def test_the_pins_are_requirements_txts_closure_on_the_lambda() -> None:
    """What requirements.txt pulls in on the Lambda (its markers: CPython 3.12 on aarch64
    Linux), less the noDeploy requirements, each at the version installed here: the tests ran
    against exactly what ships. run.py installs every venv under these pins."""
    descriptor = read_descriptor()
    assert descriptor.requirements != "requirements.txt", "the deploy must install the pins"
    roots = [
        requirement
        for requirement in read_requirements(ROOT / "requirements.txt")
        if canonicalize_name(requirement.name) not in descriptor.no_deploy
    ]
    expected = {
        name: dist.version
        for name, dist in closure(roots, lambda_markers(descriptor.runtime)).items()
    }
    assert _pins() == expected, "\n".join(
        ["the pins should read:", *(f"{name}=={v}" for name, v in sorted(expected.items()))]
    )


def test_a_tree_is_refused_from_an_environment_without_the_pins(tmp_path: Path) -> None:
    descriptor = read_descriptor()
    markers = lambda_markers(descriptor.runtime)
    pins = (ROOT / descriptor.requirements).read_text()
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(pins.replace(f"six=={importlib.metadata.version('six')}", "six==0.1"))
    with pytest.raises(RuntimeError, match=r"six 1\.\d+\.\d+ installed, six==0\.1 pinned") as error:
        dependency_files(wrong, descriptor.no_deploy, descriptor.slim, markers)
    assert f"pip install -c {wrong}" in str(error.value)
    unpinned = tmp_path / "unpinned.txt"
    unpinned.write_text("".join(line + "\n" for line in pins.splitlines() if "six==" not in line))
    with pytest.raises(RuntimeError, match=r"not pinned in unpinned\.txt: six"):
        dependency_files(unpinned, descriptor.no_deploy, descriptor.slim, markers)


def test_a_zip_gets_bytecode_that_is_loaded_without_its_source_checked(
    tmp_path: Path, python: str
) -> None:
    """What the deploy does to each function's zip: entries keep their dates and modes, a `.pyc`
    is added per module, and the runtime loads it without comparing the source."""
    artifact = tmp_path / "fn.zip"
    fixed = (1980, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(artifact, "w") as zf:
        for name, text in [("pkg/__init__.py", ""), ("pkg/mod.py", "VALUE = 'compiled'\n")]:
            info = zipfile.ZipInfo(name, date_time=fixed)
            info.external_attr = 0o100755 << 16
            zf.writestr(info, text)
    done = subprocess.run(
        [python, str(BYTECODE), "--runtime", RUNTIME, "--zip", str(artifact)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(artifact) as zf:
        entries = {info.filename: info for info in zf.infolist()}
        zf.extractall(tmp_path / "task")
    assert set(entries) == {
        "pkg/__init__.py",
        "pkg/mod.py",
        f"pkg/__pycache__/__init__.{TAG}.pyc",
        f"pkg/__pycache__/mod.{TAG}.pyc",
    }
    assert entries["pkg/mod.py"].date_time == fixed
    assert entries["pkg/mod.py"].external_attr >> 16 == 0o100755
    # The source changes after compilation: an unchecked .pyc still answers.
    (tmp_path / "task" / "pkg" / "mod.py").write_text("VALUE = 'source'\n")
    loaded = subprocess.run(
        [python, "-c", "import pkg.mod; print(pkg.mod.VALUE)"],
        cwd=tmp_path / "task", env={"PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert loaded.stdout.strip() == "compiled"


def test_bytecode_of_another_python_is_refused(tmp_path: Path) -> None:
    artifact = tmp_path / "fn.zip"
    with zipfile.ZipFile(artifact, "w") as zf:
        zf.writestr("mod.py", "X = 1\n")
    done = subprocess.run(
        [sys.executable, str(BYTECODE), "--runtime", "3.99", "--zip", str(artifact)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "the runtime is Python 3.99" in done.stderr
    with zipfile.ZipFile(artifact) as zf:
        assert zf.namelist() == ["mod.py"]


# devkit/serverless/bytecode.js driven as osls drives it: one function whose zip exists.
_RUN_PLUGIN = """
const Plugin = require(process.argv[1]);
const fn = {package: {artifact: process.argv[2]}};
const serverless = {
  service: {
    provider: {runtime: 'python3.12'}, getAllFunctions: () => ['fn'], getFunction: () => fn,
  },
  config: {servicePath: process.argv[3]},
  classes: {Error},
};
try { new Plugin(serverless, {}).compile(); console.log('compiled'); }
catch (error) { console.log(error.message); }
"""


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("kill -TERM $$", "was killed by SIGTERM"),
        ("exit 3", "failed (exit 3); set LAMBDA_PYTHON to a Python 3.12 interpreter."),
    ],
)
def test_the_bytecode_plugin_says_why_the_compiler_stopped(
    tmp_path: Path, script: str, said: str
) -> None:
    """s45t2: a compiler stopped by a signal (a deploy's timeout) was reported as "failed (exit
    null); set LAMBDA_PYTHON …", sending the user after the wrong interpreter."""
    node = shutil.which("node")
    if node is None:
        missing_tool("node is needed to load the osls plugin devkit/serverless/bytecode.js")
    artifact = tmp_path / "fn.zip"
    zipfile.ZipFile(artifact, "w").close()
    python = tmp_path / "python3.12"
    python.write_text(f"#!/bin/sh\n{script}\n")
    python.chmod(0o755)
    plugin = ROOT / "devkit" / "serverless" / "bytecode.js"
    done = subprocess.run(
        [node, "-e", _RUN_PLUGIN, str(plugin), str(artifact), str(ROOT)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "LAMBDA_PYTHON": str(python)},
    )  # fmt: skip
    assert done.stdout.strip() == f"Compiling the packages' bytecode with {python} {said}"


def test_package_command_refuses_an_unknown_function(tmp_path: Path) -> None:
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = keyflash(["package", "--out", str(tmp_path / "out"), "no_such_function"])
    assert code == 1
    assert "not a function in serverless.yml: no_such_function" in stderr.getvalue()
    assert len(stderr.getvalue().strip().splitlines()) == 1
