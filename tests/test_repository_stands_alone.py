"""The repository stands alone: nothing in it reads or cites material that lives beside it.

A fresh clone with nothing next to it must build, test and explain itself, so no tracked file may
name a path outside the repository (the team's source notes in a sibling folder included) or cite
sections of a document that is not in it: the original app's behaviour is cited from
`docs/original-app.md`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A path that climbs out of the repository, or names the team's notes that live outside it.
OUTSIDE = re.compile(
    r"\.\./shared|shared/reference|reference/(?:keyflash-spec|platform-facts|style-review|prisma-)"
    r"|keyflash-spec\.md|platform-facts\.md|style-review\.md|prisma-schema\.sql|DESIGN\.md"
    r"|\b[Ss]pec §"  # the section numbers of a document that is not here
)


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    files = [ROOT / name.decode() for name in listed if name]
    return [path for path in files if path.is_file() and path.suffix != ".wasm"]


def test_no_tracked_file_refers_to_material_outside_the_repository() -> None:
    offenders = []
    this_file = Path(__file__).resolve()  # it names the patterns it looks for
    for path in tracked_text_files():
        if path == this_file:
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        offenders += [
            f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
            for number, line in enumerate(text.splitlines(), start=1)
            if OUTSIDE.search(line)
        ]
    assert offenders == [], "\n".join(offenders)


def test_the_pattern_catches_what_it_must() -> None:
    # Built from pieces, so this file holds none of the citations it looks for.
    sibling, spec = "../" + "shared/x", "(spec" + " §4.5)"
    for line in (sibling, "reference/keyflash-spec.md §2", "DESIGN.md §3", spec):
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search("tests/fixtures/prisma/original-ddl.sql")
    assert not OUTSIDE.search("UTF-8 (RFC 8259 §8.1)")
