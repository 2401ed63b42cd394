"""Tenant isolation as a hypothesis state machine on the real database, through the functions'
Lambda handlers, on both lanes.

The machine changes the webhook mirror's memberships (added, role changed, custom permission
granted, removed), the users' session tokens (no active org, or one of three orgs with a role and
maybe Clerk's `org:searches:manage`, in claims version 1 or 2), deletes an organization, and sends
every org route as any user to any org. A model written out from docs/organizations.md (the access
rule, the permission matrix, which searches belong to which team) predicts every answer: the
status, and for a 200 the searches, members and usage it must show and nothing more.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.support.http import Caller, Keys, Result

ADMIN, MEMBER = "org:admin", "org:member"
MANAGE = "org:searches:manage"
# The matrix for the routes here, written out (docs/organizations.md#permission-matrix).
MEMBER_MAY = {"read"}
ACTIONS = ["list", "create", "get", "update", "delete", "members", "usage"]
NEEDS = {
    action: "manage" if action in ("create", "update", "delete") else "read" for action in ACTIONS
}


@dataclass(frozen=True)
class Token:
    org: int  # index into the machine's orgs
    role: str
    manage: bool
    version: int


@dataclass
class Model:
    mirror: dict[tuple[int, int], tuple[str, bool] | None] = field(default_factory=dict)
    tokens: dict[int, Token | None] = field(default_factory=dict)
    searches: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # id → org, name, by
    deleted: set[int] = field(default_factory=set)

    def access(self, user: int, org: int) -> tuple[str, bool] | None:
        """(role, holds manage by custom permission) or None: the access rule."""
        if org in self.deleted:
            return None
        token = self.tokens.get(user)
        if token is not None and token.org == org:
            return token.role, token.manage
        return self.mirror.get((org, user))

    def expected(self, user: int, org: int, action: str) -> int:
        standing = self.access(user, org)
        if standing is None:
            return 404
        role, manage = standing
        needed = NEEDS[action]
        allowed = role == ADMIN or needed in MEMBER_MAY or manage
        return 200 if allowed else 403


class IsolationMachine(RuleBasedStateMachine):
    call: Caller
    admin: psycopg.Connection[Any]

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:10]
        # Orgs 0 and 1 are mirrored from the start; org 2 only ever comes from tokens.
        self.orgs = [f"org_{tag}A", f"org_{tag}B", f"org_{tag}C"]
        self.users = [f"user_{tag}_{i}" for i in range(3)]
        self.model = Model()
        for org in self.orgs[:2]:
            self.admin.execute(
                'INSERT INTO organizations (id, name, "updatedAt") VALUES (%s, %s, now())',
                (org, org),
            )

    # --- changes ------------------------------------------------------------------------------

    @rule(
        org=st.integers(0, 1),
        user=st.integers(0, 2),
        role=st.sampled_from([ADMIN, MEMBER, None]),
        manage=st.booleans(),
    )
    def mirror_membership(self, org: int, user: int, role: str | None, manage: bool) -> None:
        """What the Clerk webhook mirror writes: a membership added or changed, or removed."""
        permissions = [MANAGE] if manage else []
        self.admin.execute(
            """INSERT INTO organization_members ("organizationId", "userId", role, permissions,
                   "updatedAt", "deletedAt") VALUES (%s, %s, %s, %s, now(),
                   CASE WHEN %s THEN now() END)
               ON CONFLICT ("organizationId", "userId") DO UPDATE SET role = EXCLUDED.role,
                   permissions = EXCLUDED.permissions, "deletedAt" = EXCLUDED."deletedAt",
                   "updatedAt" = now()""",
            (self.orgs[org], self.users[user], role or MEMBER, permissions, role is None),
        )
        self.model.mirror[(org, user)] = None if role is None else (role, manage)

    @rule(
        user=st.integers(0, 2),
        org=st.one_of(st.none(), st.integers(0, 2)),
        role=st.sampled_from([ADMIN, MEMBER]),
        manage=st.booleans(),
        version=st.sampled_from([1, 2]),
    )
    def switch_token(
        self, user: int, org: int | None, role: str, manage: bool, version: int
    ) -> None:
        """The user's session now has `org` active (or none)."""
        self.model.tokens[user] = None if org is None else Token(org, role, manage, version)

    @precondition(lambda self: 1 not in self.model.deleted and len(self.model.searches) >= 3)
    @rule()
    def delete_second_org(self) -> None:
        """Clerk deleted org 1: its tombstone hides it from everyone."""
        self.admin.execute(
            'UPDATE organizations SET "deletedAt" = now() WHERE id = %s', (self.orgs[1],)
        )
        self.model.deleted.add(1)

    # --- requests -----------------------------------------------------------------------------

    def _claims(self, user: int) -> dict[str, Any]:
        token = self.model.tokens.get(user)
        if token is None:
            return {}
        org_id, key = self.orgs[token.org], token.role.removeprefix("org:")
        if token.version == 1:
            return {"org_id": org_id, "org_role": token.role,
                    "org_permissions": [MANAGE] if token.manage else []}  # fmt: skip
        per = {"per": "manage", "fpm": "1"} if token.manage else {}
        return {"v": 2, "o": {"id": org_id, "rol": key, **per}, "fea": "o:searches"}

    def _send(self, user: int, org: int, action: str, search_id: str) -> Result:
        base = f"/api/orgs/{self.orgs[org]}"
        function, method, path = {
            "list": ("org_searches", "GET", f"{base}/searches"),
            "create": ("org_searches", "POST", f"{base}/searches"),
            "get": ("org_search_item", "GET", f"{base}/searches/{search_id}"),
            "update": ("org_search_item", "PUT", f"{base}/searches/{search_id}"),
            "delete": ("org_search_item", "DELETE", f"{base}/searches/{search_id}"),
            "members": ("org_members", "GET", f"{base}/members"),
            "usage": ("org_usage", "GET", f"{base}/usage"),
        }[action]
        token = self.call.token(self.users[user], **self._claims(user))
        body: dict[str, Any] | None = None
        if action == "create":
            params = {"keywords": ["kw"], "matchType": "exact", "location": "US"}
            body = {"name": f"n{uuid.uuid4().hex[:8]}", "searchParams": params}
        elif action == "update":
            body = {"name": f"r{uuid.uuid4().hex[:8]}"}
        headers = {"authorization": f"Bearer {token}"}
        return self.call(function, method, path, json_body=body, headers=headers)

    @rule(
        user=st.integers(0, 2),
        org=st.integers(0, 2),
        action=st.sampled_from(ACTIONS),
        pick=st.integers(0, 50),
    )
    def request_anyone(self, user: int, org: int, action: str, pick: int) -> None:
        """Any user, any org: mostly outsiders, who must learn nothing."""
        self._request(user, org, action, pick)

    @precondition(lambda self: bool(self._insiders()))
    @rule(who=st.integers(0, 8), action=st.sampled_from(ACTIONS), pick=st.integers(0, 50))
    def request_as_insider(self, who: int, action: str, pick: int) -> None:
        """A user the model lets into the org (by token or mirror), whatever their role."""
        insiders = self._insiders()
        user, org = insiders[who % len(insiders)]
        self._request(user, org, action, pick)

    @precondition(lambda self: bool(self._insiders()))
    @rule(who=st.integers(0, 8))
    def insider_creates(self, who: int) -> None:
        insiders = self._insiders()
        user, org = insiders[who % len(insiders)]
        self._request(user, org, "create", 0)

    @precondition(lambda self: bool(self._insiders(with_searches=True)))
    @rule(
        who=st.integers(0, 8),
        action=st.sampled_from(["get", "update", "delete"]),
        pick=st.integers(0, 24),
    )
    def insider_touches_a_team_search(self, who: int, action: str, pick: int) -> None:
        insiders = self._insiders(with_searches=True)
        user, org = insiders[who % len(insiders)]
        self._request(user, org, action, pick)

    @precondition(lambda self: bool(self._reachers()))
    @rule(
        who=st.integers(0, 20),
        action=st.sampled_from(["get", "update", "delete"]),
    )
    def insider_reaches_for_another_teams_search(self, who: int, action: str) -> None:
        """A member of one org names another org's search in their own org's path: 404."""
        reachers = self._reachers()
        user, org, search_id = reachers[who % len(reachers)]
        self._request(user, org, action, 0, search_id=search_id)

    def _reachers(self) -> list[tuple[int, int, str]]:
        return [
            (u, o, sid)
            for u, o in self._insiders()
            for sid, (team, _, _) in sorted(self.model.searches.items())
            if team != o
        ]

    def _insiders(self, *, with_searches: bool = False) -> list[tuple[int, int]]:
        """(user, org) pairs the model lets in; `with_searches`: orgs that have searches."""
        teams = {o for o, _, _ in self.model.searches.values()}
        return [
            (u, o)
            for u in range(3)
            for o in range(3)
            if self.model.access(u, o) is not None and (o in teams or not with_searches)
        ]

    def _request(
        self, user: int, org: int, action: str, pick: int, search_id: str | None = None
    ) -> None:
        """Send; a search id of the org's own (pick < 25), of any org (< 40) or unknown."""
        if search_id is None:
            own = sorted(sid for sid, (o, _, _) in self.model.searches.items() if o == org)
            known = own if pick < 25 and own else sorted(self.model.searches)
            search_id = known[pick % len(known)] if known and pick < 40 else str(uuid.uuid4())
        answer = self._send(user, org, action, search_id)
        status = self.model.expected(user, org, action)
        if status == 200 and action in ("get", "update", "delete"):
            in_org = self.model.searches.get(search_id, (None,))[0] == org
            status = 200 if in_org else 404
        if action == "create" and status == 200:
            status = 201
        assert answer.status == status, (action, answer.text)
        if status >= 400:
            return
        self._check_answer(user, org, action, search_id, answer.json)

    def _check_answer(
        self, user: int, org: int, action: str, search_id: str, body: dict[str, Any]
    ) -> None:
        model = self.model
        if action == "list":
            shown = {(s["id"], s["name"], s["createdBy"]) for s in body["searches"]}
            assert shown == {
                (sid, name, self.users[by])
                for sid, (o, name, by) in model.searches.items()
                if o == org
            }
        elif action == "create":
            made = body["search"]
            assert made["createdBy"] == self.users[user]
            model.searches[made["id"]] = (org, made["name"], user)
        elif action in ("get", "update"):
            found = body["search"]
            o, name, by = model.searches[search_id]
            if action == "update":
                name = found["name"]
                model.searches[search_id] = (o, name, by)
            assert (found["id"], found["name"], found["createdBy"]) == (
                search_id, name, self.users[by],
            )  # fmt: skip
        elif action == "delete":
            del model.searches[search_id]
        elif action == "members":
            shown = {(m["userId"], m["role"]) for m in body["members"]}
            assert shown == {
                (self.users[u], standing[0])
                for (o, u), standing in model.mirror.items()
                if o == org and standing is not None
            }
        else:
            assert body["tier"] == "FREE" and body["usage"]["thisMonth"] == 0

    @invariant()
    def every_search_row_is_where_the_model_says(self) -> None:
        rows = self.admin.execute(
            'SELECT id, "organizationId", name FROM saved_searches'
            ' WHERE "organizationId" = ANY(%s)',
            (self.orgs,),
        ).fetchall()
        assert {(sid, org, name) for sid, org, name in rows} == {
            (sid, self.orgs[o], name) for sid, (o, name, _) in self.model.searches.items()
        }


@pytest.fixture
def lambda_call(api_env: Keys) -> Caller:
    return Caller("lambda_v2", api_env)


def test_every_answer_matches_the_model_of_who_may_see_what(
    lambda_call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    IsolationMachine.call = lambda_call
    IsolationMachine.admin = admin_conn
    run_state_machine_as_test(
        IsolationMachine,
        settings=settings(
            max_examples=20,
            stateful_step_count=30,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
