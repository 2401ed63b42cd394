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

ROOT = Path(__file__).resolve().parents[2]

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


# A Markdown link `[text](target)` or a citation `docs/<page>.md#anchor` in code.
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
DOC_CITATION = re.compile(r"\bdocs/[a-z0-9-]+\.md(?:#[A-Za-z0-9_-]+)?")


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings, plus its explicit `<a id=…>` ones."""
    text = page.read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def broken(target: str, base: Path) -> str | None:
    """Why a repository-relative link is broken, or None when page and anchor exist."""
    path, _, anchor = target.partition("#")
    page = (base / path).resolve() if path else base
    if not page.exists():
        return "no such file"
    if anchor and page.suffix == ".md" and anchor not in heading_anchors(page):
        return "no such heading"
    return None


def test_every_link_in_the_docs_and_every_doc_cited_in_code_resolves() -> None:
    # The manual is split into pages that link to one another and that code comments cite: a
    # renamed heading or page must fail here rather than leave a reader at a dead link.
    problems = []
    for path in tracked_text_files():
        text = path.read_bytes().decode("utf-8", errors="replace")
        if path.suffix == ".md":
            for target in MARKDOWN_LINK.findall(text):
                if re.match(r"[a-z]+:", target):
                    continue  # http:, https:, mailto:
                why = broken(target, path.parent if target.split("#")[0] else path)
                if why:
                    problems.append(f"{path.relative_to(ROOT)}: {target}: {why}")
        for citation in DOC_CITATION.findall(text):
            why = broken(citation, ROOT)
            if why:
                problems.append(f"{path.relative_to(ROOT)}: {citation}: {why}")
    assert problems == [], "\n".join(problems)


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('# A heading\n<a id="d1"></a>\n', encoding="utf-8")
    assert broken("page.md#a-heading", tmp_path) is None
    assert broken("page.md#d1", tmp_path) is None
    assert broken("page.md#another-heading", tmp_path) == "no such heading"
    assert broken("gone.md", tmp_path) == "no such file"
