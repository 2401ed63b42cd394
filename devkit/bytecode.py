"""Bytecode for the deployed runtime: every module of a Lambda package compiled ahead of time.

Lambda unpacks a function's zip into a read-only `/var/task`, so a module shipped without its
`.pyc` is compiled from source at every cold start and the result thrown away. The `.pyc` files
written here are hash-based and unchecked (PEP 552): the zip keeps no usable modification times
(the Serverless Framework writes every entry with one fixed date), so a timestamp-based `.pyc`
would never match its source, while an unchecked one is loaded without reading the source.

Standard library only, because the deploy runs it with the target runtime's bare interpreter
(devkit/serverless/bytecode.js): `python3.12 devkit/bytecode.py --runtime 3.12 --zip A.zip …`;
`keyflash package` runs it on a directory (`--tree DIR`).
"""

from __future__ import annotations

import argparse
import compileall
import os
import py_compile
import sys
import tempfile
import zipfile
from pathlib import Path

# A fixed date for the entries added to a zip, as the framework does: same input, same zip.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
REGULAR_FILE = 0o100644 << 16  # zip external attributes: a regular file, rw-r--r--


def compile_tree(root: Path) -> None:
    """Write `__pycache__/<module>.<this interpreter's tag>.pyc` for every `.py` under `root`.

    Raises RuntimeError when a file does not compile: it would be compiled (and fail) at import.
    """
    compiled = compileall.compile_dir(
        str(root),
        quiet=1,
        force=True,  # a stale or timestamp-based .pyc from elsewhere is replaced
        workers=0,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not compiled:
        raise RuntimeError(f"some modules under {root} do not compile (listed above)")


def compile_zip(path: Path) -> int:
    """Add (or replace) the bytecode of every module in the zip at `path`; how many `.pyc`."""
    with tempfile.TemporaryDirectory(prefix="keyflash-bytecode-") as scratch:
        root = Path(scratch)
        with zipfile.ZipFile(path) as source:
            entries = source.infolist()
            source.extractall(root)
        compile_tree(root)
        known = {entry.filename for entry in entries}
        added = sorted(
            pyc.relative_to(root).as_posix()
            for pyc in root.rglob("*.pyc")
            if pyc.relative_to(root).as_posix() not in known
        )
        rewritten = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
            for entry in entries:  # same names, dates and modes; a .pyc gets its new bytes
                target.writestr(
                    entry, b"" if entry.is_dir() else (root / entry.filename).read_bytes()
                )
            for name in added:
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.external_attr = REGULAR_FILE
                info.compress_type = zipfile.ZIP_DEFLATED
                target.writestr(info, (root / name).read_bytes())
        os.replace(rewritten, path)
    return sum(1 for entry in entries if entry.filename.endswith(".pyc")) + len(added)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bytecode.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", required=True, help="the Lambda runtime's version, e.g. 3.12")
    parser.add_argument("--zip", nargs="*", default=[], type=Path, help="function artifacts")
    parser.add_argument("--tree", nargs="*", default=[], type=Path, help="package directories")
    args = parser.parse_args(argv)
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if running != args.runtime:
        print(
            f"bytecode.py: the runtime is Python {args.runtime} but this is {running} "
            f"({sys.executable}); its .pyc would be ignored there",
            file=sys.stderr,
        )
        return 1
    for tree in args.tree:
        compile_tree(tree)
    for artifact in args.zip:
        count = compile_zip(artifact)
        print(f"bytecode.py: {artifact.name}: {count} modules compiled for Python {running}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
