"""The permission matrix (shared.rbac): every role against every permission, Clerk custom
permissions on top, unknown roles, and the docs' table kept equal to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import rbac

DOCS = Path(__file__).resolve().parents[2] / "docs" / "organizations.md"

# The matrix, written out: admins everything, members everything but the two manages.
EXPECTED = {
    ("org:admin", rbac.SEARCHES_READ): True,
    ("org:admin", rbac.SEARCHES_MANAGE): True,
    ("org:admin", rbac.MEMBERS_READ): True,
    ("org:admin", rbac.USAGE_READ): True,
    ("org:admin", rbac.KEYWORDS_SEARCH): True,
    ("org:admin", rbac.BILLING_MANAGE): True,
    ("org:member", rbac.SEARCHES_READ): True,
    ("org:member", rbac.SEARCHES_MANAGE): False,
    ("org:member", rbac.MEMBERS_READ): True,
    ("org:member", rbac.USAGE_READ): True,
    ("org:member", rbac.KEYWORDS_SEARCH): True,
    ("org:member", rbac.BILLING_MANAGE): False,
}


def test_permission_names_are_clerks_full_form() -> None:
    assert {
        "org:searches:read",
        "org:searches:manage",
        "org:members:read",
        "org:usage:read",
        "org:keywords:search",
        "org:billing:manage",
    } == rbac.PERMISSIONS
    assert {role for role, _ in EXPECTED} == set(rbac.ROLE_PERMISSIONS)


@pytest.mark.parametrize(("role", "needed"), EXPECTED.keys())
def test_every_role_against_every_permission(role: str, needed: str) -> None:
    assert rbac.allows(role, frozenset(), needed) is EXPECTED[role, needed]


@pytest.mark.parametrize("needed", [rbac.SEARCHES_MANAGE, rbac.BILLING_MANAGE])
def test_custom_permissions_from_the_token_add_to_the_role(needed: str) -> None:
    assert not rbac.allows("org:member", frozenset(), needed)
    assert rbac.allows("org:member", frozenset({needed}), needed)
    (other,) = rbac.PERMISSIONS - {needed, *rbac.ROLE_PERMISSIONS["org:member"]}
    assert not rbac.allows("org:member", frozenset({needed}), other)  # only what it names


@pytest.mark.parametrize("role", ["org:viewer", "org:billing_lead", "admin", "org:ADMIN", ""])
def test_unknown_roles_grant_only_custom_permissions(role: str) -> None:
    for needed in rbac.PERMISSIONS:
        assert not rbac.allows(role, frozenset({"org:other:read"}), needed)
    assert rbac.allows(role, frozenset({rbac.USAGE_READ}), rbac.USAGE_READ)


def test_a_permission_outside_the_matrix_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="org:searches:write"):
        rbac.allows("org:admin", frozenset({"org:searches:write"}), "org:searches:write")


def test_the_matrix_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        rbac.ROLE_PERMISSIONS["org:viewer"] = frozenset()  # type: ignore[index]


def matrix_table() -> str:
    """The docs' table, rendered from ROLE_PERMISSIONS."""
    roles = list(rbac.ROLE_PERMISSIONS)
    lines = [
        "| permission | " + " | ".join(f"`{role}`" for role in roles) + " |",
        "|---" * (len(roles) + 1) + "|",
    ]
    for permission in sorted(rbac.PERMISSIONS):
        cells = ("yes" if permission in rbac.ROLE_PERMISSIONS[role] else "no" for role in roles)
        lines.append(f"| `{permission}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_docs_show_the_matrix_the_code_enforces() -> None:
    section = DOCS.read_text().split("## Permission matrix", 1)[1]
    table = re.search(r"^\|.*(?:\n\|.*)*", section, re.MULTILINE)
    assert table is not None, "docs/organizations.md: no table under ## Permission matrix"
    assert table.group(0) == matrix_table(), f"replace the table with:\n{matrix_table()}"
