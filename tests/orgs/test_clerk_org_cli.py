"""The local team: the seed's demo team, and `keyflash clerk-org` replaying Clerk's signed
organization webhooks against a running `keyflash dev` (subprocesses, as a developer runs them)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.dev_stack import (
    Stack,
    assert_one_line_failure,
    keyflash,
    make_state_dir,
    remove_state_dir,
    running_dev,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_dev() as running:
        yield running


@pytest.fixture
def empty_state_dir() -> Iterator[Path]:
    state_dir = make_state_dir()
    yield state_dir
    remove_state_dir(state_dir)


def team(stack: Stack, org_id: str) -> tuple[Any, list[tuple[Any, ...]]]:
    """(the organization's (name, deleted), its members' (user, role, deleted)), read from the
    stack's own database."""
    holder = json.loads((stack.state_dir / "stack.lock").read_text())
    with psycopg.connect(holder["direct_database_url"], autocommit=True) as conn:
        org = conn.execute(
            'SELECT name, "deletedAt" IS NOT NULL FROM organizations WHERE id = %s', [org_id]
        ).fetchone()
        members = conn.execute(
            """SELECT "userId", role, "deletedAt" IS NOT NULL FROM organization_members
               WHERE "organizationId" = %s ORDER BY "userId\"""",
            [org_id],
        ).fetchall()
    return org, members


def test_the_seed_makes_a_two_person_demo_team(stack: Stack) -> None:
    assert team(stack, "org_demo") == (
        ("KeyFlash Demo Team", False),
        [("demo", "org:admin", False), ("demo_trial", "org:member", False)],
    )


def test_clerk_org_makes_changes_and_deletes_a_team_through_the_webhook(stack: Stack) -> None:
    made = keyflash(
        "clerk-org", "--org", "org_cli", "--admin", "ada", "--member", "bob",
        state_dir=stack.state_dir,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == [
        'organization.created: 200 {"received": true}',
        'organizationMembership.created: 200 {"received": true}',
        'organizationMembership.created: 200 {"received": true}',
    ]
    assert team(stack, "org_cli") == (
        ("Cli", False),
        [("ada", "org:admin", False), ("bob", "org:member", False)],
    )
    # Run again later: newer events, so bob is promoted and the team renamed.
    again = keyflash(
        "clerk-org", "--org", "org_cli", "--name", "CLI team", "--admin", "bob",
        state_dir=stack.state_dir,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert team(stack, "org_cli") == (
        ("CLI team", False),
        [("ada", "org:admin", False), ("bob", "org:admin", False)],
    )
    gone = keyflash("clerk-org", "--org", "org_cli", "--delete", state_dir=stack.state_dir)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.splitlines() == ['organization.deleted: 200 {"received": true}']
    assert team(stack, "org_cli") == (
        ("", True),
        [("ada", "org:admin", True), ("bob", "org:admin", True)],
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--org", "org_x"), "give at least one --admin or --member"),
        (("--org", "org_x", "--delete", "--admin", "ada"), "--delete takes no"),
        (("--org", " ", "--admin", "ada"), "ids must not be empty"),
        (("--admin", "ada"), "the following arguments are required: --org"),
    ],
)
def test_clerk_org_usage_mistakes_are_one_line_and_exit_2(
    empty_state_dir: Path, args: tuple[str, ...], fragment: str
) -> None:
    result = keyflash("clerk-org", *args, state_dir=empty_state_dir)
    assert result.returncode == 2, result.stderr
    assert_one_line_failure(result, fragment)


def test_clerk_org_is_refused_in_production(empty_state_dir: Path) -> None:
    result = keyflash(
        "clerk-org", "--org", "org_x", "--admin", "ada", state_dir=empty_state_dir,
        APP_ENV="production",
    )  # fmt: skip
    assert result.returncode == 1
    assert_one_line_failure(result, "production")
