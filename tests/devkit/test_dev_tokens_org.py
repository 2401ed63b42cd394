"""Dev tokens with an active organization: minted by `devkit.tokens.issue_token` in either
Clerk claims version and read back by the production reader (`shared.auth`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devkit.console import CliError
from devkit.tokens import DEV_ISSUER, DevKey, dev_key, issue_token
from shared.auth import ActiveOrg, Identity, identity_from_claims, verify_session_token
from shared.config import Settings

ORG = "org_2team"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> DevKey:
    return dev_key(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def settings(key: DevKey) -> Settings:
    """Configured as `keyflash dev` configures the functions: trusting the dev key."""
    return Settings(
        database_url="postgresql://u:p@localhost/db",
        clerk_jwt_key=key.public_pem,
        clerk_issuer=DEV_ISSUER,
        clerk_authorized_parties="",
        admin_user_ids="",
    )


def read(token: str, settings: Settings) -> Identity:
    return identity_from_claims(verify_session_token(token, settings), settings)


@pytest.mark.parametrize("version", [1, 2])
def test_minted_org_reads_back_in_both_claim_versions(
    version: int, key: DevKey, settings: Settings
) -> None:
    token = issue_token(
        key,
        "user_a",
        org_id=ORG,
        org_role="admin",
        org_slug="team",
        org_permissions=("org:billing:manage", "searches:manage", "org:searches:read"),
        claims_version=version,
    )
    assert read(token, settings).org == ActiveOrg(
        ORG,
        "org:admin",
        "team",
        frozenset({"org:billing:manage", "org:searches:manage", "org:searches:read"}),
    )


@pytest.mark.parametrize("version", [1, 2])
def test_defaults_member_role_and_no_org_without_one(
    version: int, key: DevKey, settings: Settings
) -> None:
    member = read(issue_token(key, "u", org_id=ORG, claims_version=version), settings).org
    assert member == ActiveOrg(ORG, "org:member", None, frozenset())
    assert read(issue_token(key, "u", claims_version=version), settings).org is None


KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=12)


@given(
    version=st.sampled_from([1, 2]),
    role=KEYS,
    permissions=st.lists(st.tuples(KEYS, KEYS), max_size=8),
)
def test_any_role_and_permissions_round_trip(
    version: int, role: str, permissions: list[tuple[str, str]], key: DevKey, settings: Settings
) -> None:
    """v2's bitmask packing loses nothing, whatever the features and names share."""
    full = tuple(f"org:{feature}:{name}" for feature, name in permissions)
    token = issue_token(
        key, "u", org_id=ORG, org_role=role, org_permissions=full, claims_version=version
    )
    assert read(token, settings).org == ActiveOrg(ORG, f"org:{role}", None, frozenset(full))


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"org_id": "team_1"}, "--org"),
        ({"org_id": "org_"}, "--org"),
        ({"org_id": ORG, "org_role": "ad min"}, "--org-role"),
        ({"org_id": ORG, "org_role": ""}, "--org-role"),
        ({"org_id": ORG, "org_permissions": ("billing",)}, "--org-permission"),
        ({"org_id": ORG, "org_permissions": ("org:a:b:c",)}, "--org-permission"),
        ({"claims_version": 3}, "--claims-version"),
    ],
)
def test_bad_org_options_are_refused(options: dict[str, object], flag: str, key: DevKey) -> None:
    with pytest.raises(CliError, match=flag) as refused:
        issue_token(key, "u", **options)  # type: ignore[arg-type]
    assert refused.value.code == 2
