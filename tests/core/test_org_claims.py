"""The active organization read from Clerk session tokens: both claim versions, signed and
verified as in production, and malformed org claims reading as no active org."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.auth import ActiveOrg, Identity, identity_from_claims, verify_session_token
from shared.config import Settings
from tests.support.http import ISSUER, Keys, make_token

ORG = "org_2Z5Tgd3v6U1OeQXQ5Ijn7bqq3pK"


@pytest.fixture(scope="module")
def settings(rsa_keys: Keys) -> Settings:
    return Settings(
        database_url="postgresql://u:p@localhost/db",
        clerk_jwt_key=rsa_keys.public_pem,
        clerk_issuer=ISSUER,
        clerk_authorized_parties="",
        admin_user_ids="",
    )


def identity(keys: Keys, settings: Settings, **claims: Any) -> Identity:
    """What the HTTP layer does with a bearer token: verify it, then read who it names."""
    token = make_token(keys, "user_1", **claims)
    return identity_from_claims(verify_session_token(token, settings), settings)


def org_of(keys: Keys, settings: Settings, **claims: Any) -> ActiveOrg | None:
    return identity(keys, settings, **claims).org


def test_v2_org_claim_decodes_role_slug_and_feature_permissions(
    rsa_keys: Keys, settings: Settings
) -> None:
    """Clerk's documented example: `fea=o:dashboard,o:teams`, `per=manage,read`, `fpm=3,2`."""
    org = org_of(
        rsa_keys,
        settings,
        v=2,
        fea="o:dashboard,o:teams",
        o={"id": ORG, "rol": "admin", "slg": "acme", "per": "manage,read", "fpm": "3,2"},
    )
    assert org == ActiveOrg(
        id=ORG,
        role="org:admin",
        slug="acme",
        permissions=frozenset({"org:dashboard:manage", "org:dashboard:read", "org:teams:read"}),
    )


def test_v2_aligns_bitmasks_with_the_org_features_only(rsa_keys: Keys, settings: Settings) -> None:
    org = org_of(
        rsa_keys,
        settings,
        v=2,
        fea="u:export, o:searches, uo:billing",
        o={"id": ORG, "rol": "member", "per": "manage,read", "fpm": "1,2"},
    )
    assert org is not None
    assert org.permissions == {"org:searches:manage", "org:billing:read"}
    assert (org.role, org.slug) == ("org:member", None)


def test_v2_feature_without_bitmask_grants_nothing_and_extra_bits_are_ignored(
    rsa_keys: Keys, settings: Settings
) -> None:
    org = org_of(
        rsa_keys,
        settings,
        v=2,
        fea="o:searches,o:billing",
        o={"id": ORG, "rol": "member", "per": "read", "fpm": "7"},  # 7: bits past `per` too
    )
    assert org is not None and org.permissions == {"org:searches:read"}
    extra = org_of(
        rsa_keys,
        settings,
        v=2,
        fea="o:searches",
        o={"id": ORG, "rol": "x", "per": "read", "fpm": "0,1"},
    )
    assert extra is not None and extra.permissions == frozenset()


def test_v2_bitmasks_reach_every_permission_a_clerk_token_can_name(
    rsa_keys: Keys, settings: Settings
) -> None:
    """A 4 KB session token can name hundreds of permissions: the 500th one's bit makes a
    151-digit `fpm`, granted. Only an integer no 4 KB token could hold is malformed."""
    names = ",".join(f"p{i}" for i in range(499)) + ",manage"
    claims = {"id": ORG, "rol": "member", "per": names}
    org = org_of(rsa_keys, settings, v=2, fea="o:searches", o=claims | {"fpm": str(2**499)})
    assert org is not None and org.permissions == {"org:searches:manage"}
    too_long = claims | {"fpm": "1" * 3073}
    assert org_of(rsa_keys, settings, v=2, fea="o:searches", o=too_long) is None


def test_v2_org_without_permission_claims(rsa_keys: Keys, settings: Settings) -> None:
    org = org_of(rsa_keys, settings, v=2, o={"id": ORG, "rol": "billing_lead"})
    assert org == ActiveOrg(ORG, "org:billing_lead", None, frozenset())


def test_v1_org_claims(rsa_keys: Keys, settings: Settings) -> None:
    org = org_of(
        rsa_keys,
        settings,
        org_id=ORG,
        org_role="org:member",
        org_slug="acme",
        org_permissions=["org:searches:manage", "org:billing:manage"],
    )
    assert org == ActiveOrg(
        ORG, "org:member", "acme", frozenset({"org:searches:manage", "org:billing:manage"})
    )


def test_no_active_org_in_either_version(rsa_keys: Keys, settings: Settings) -> None:
    assert org_of(rsa_keys, settings) is None
    assert org_of(rsa_keys, settings, v=2) is None
    assert org_of(rsa_keys, settings, v=2, fea="u:export") is None
    assert Identity("user_1", "a@b.c", False).org is None  # existing constructor calls


GOOD_V2 = {"id": ORG, "rol": "admin", "slg": "acme", "per": "read", "fpm": "1"}
NO_PER = {key: value for key, value in GOOD_V2.items() if key != "per"}
NO_FPM = {key: value for key, value in GOOD_V2.items() if key != "fpm"}
MALFORMED: dict[str, dict[str, Any]] = {
    "v2 o not an object": {"v": 2, "o": [ORG]},
    "v2 id missing": {"v": 2, "o": {"rol": "admin"}},
    "v2 empty id": {"v": 2, "o": GOOD_V2 | {"id": ""}},
    "v2 id not org_": {"v": 2, "o": GOOD_V2 | {"id": "user_2Z5Tgd3v"}},
    "v2 id with junk": {"v": 2, "o": GOOD_V2 | {"id": "org_abc/../x"}},
    "v2 id a number": {"v": 2, "o": GOOD_V2 | {"id": 42}},
    "v2 role missing": {"v": 2, "o": {"id": ORG}},
    "v2 role empty": {"v": 2, "o": GOOD_V2 | {"rol": ""}},
    "v2 role a list": {"v": 2, "o": GOOD_V2 | {"rol": ["admin"]}},
    "v2 role with spaces": {"v": 2, "o": GOOD_V2 | {"rol": "ad min"}},
    "v2 role prefixed": {"v": 2, "o": GOOD_V2 | {"rol": "org:admin"}},
    "v2 slug a number": {"v": 2, "o": GOOD_V2 | {"slg": 7}},
    "v2 slug with NUL": {"v": 2, "o": GOOD_V2 | {"slg": "ac\x00me"}},
    "v2 slug with a lone surrogate": {"v": 2, "o": GOOD_V2 | {"slg": "acme\udfff"}},
    "v2 per a list": {"v": 2, "fea": "o:searches", "o": GOOD_V2 | {"per": ["read"]}},
    "v2 fpm a number": {"v": 2, "fea": "o:searches", "o": GOOD_V2 | {"fpm": 1}},
    "v2 fpm not decimal": {"v": 2, "fea": "o:searches", "o": GOOD_V2 | {"fpm": "0x1"}},
    "v2 fpm negative": {"v": 2, "fea": "o:searches", "o": GOOD_V2 | {"fpm": "-1"}},
    "v2 fpm empty entry": {"v": 2, "fea": "o:searches", "o": GOOD_V2 | {"fpm": "1,,1"}},
    "v2 fpm with a space": {"v": 2, "fea": "o:searches", "o": GOOD_V2 | {"fpm": " 1"}},
    "v2 per key with colon": {"v": 2, "fea": "o:searches", "o": GOOD_V2 | {"per": "a:b"}},
    # Each claim is checked even when another one it pairs with is absent (grants nothing).
    "v2 fpm negative, no per": {"v": 2, "fea": "o:searches", "o": NO_PER | {"fpm": "-1"}},
    "v2 fpm not decimal, no per": {"v": 2, "fea": "o:searches", "o": NO_PER | {"fpm": "x"}},
    "v2 fpm not decimal, no per or fea": {"v": 2, "o": NO_PER | {"fpm": "x"}},
    "v2 per key with colon, no fpm": {"v": 2, "fea": "o:searches", "o": NO_FPM | {"per": "a:b"}},
    "v2 fea unknown scope, no per": {"v": 2, "fea": "x:other", "o": NO_PER},
    "v2 fea a list": {"v": 2, "fea": ["o:searches"], "o": GOOD_V2},
    "v2 fea without scope": {"v": 2, "fea": "searches", "o": GOOD_V2},
    "v2 fea unknown scope": {"v": 2, "fea": "x:other,o:searches", "o": GOOD_V2},
    "v2 fea empty feature": {"v": 2, "fea": "o:", "o": GOOD_V2},
    "v1 empty id": {"org_id": "", "org_role": "org:admin"},
    "v1 id not org_": {"org_id": "team_1", "org_role": "org:admin"},
    "v1 role missing": {"org_id": ORG},
    "v1 role a number": {"org_id": ORG, "org_role": 1},
    "v1 slug with NUL": {"org_id": ORG, "org_role": "org:admin", "org_slug": "x\x00y"},
    "v1 permissions a string": {"org_id": ORG, "org_role": "org:admin", "org_permissions": "x"},
    "v1 permission not org:": {
        "org_id": ORG,
        "org_role": "org:admin",
        "org_permissions": ["searches:manage"],
    },
    "v1 permission a number": {"org_id": ORG, "org_role": "org:admin", "org_permissions": [1]},
    "unknown version": {"v": 3, "o": GOOD_V2, "org_id": ORG, "org_role": "org:admin"},
    "version a string": {"v": "2", "o": GOOD_V2},
    "version true": {"v": True, "org_id": ORG, "org_role": "org:admin"},
}


@pytest.mark.parametrize("claims", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_org_claims_mean_no_active_org(
    claims: dict[str, Any], rsa_keys: Keys, settings: Settings
) -> None:
    found = identity(rsa_keys, settings, **claims)
    assert (found.user_id, found.org) == ("user_1", None)


def test_the_well_formed_bases_of_the_malformed_cases_do_have_an_org(
    rsa_keys: Keys, settings: Settings
) -> None:
    """So each malformed case fails for its one defect, not for something shared."""
    assert org_of(rsa_keys, settings, v=2, fea="o:searches", o=GOOD_V2) == ActiveOrg(
        ORG, "org:admin", "acme", frozenset({"org:searches:read"})
    )
    for partial in (NO_PER, NO_FPM):
        assert org_of(rsa_keys, settings, v=2, fea="o:searches", o=partial) == ActiveOrg(
            ORG, "org:admin", "acme", frozenset()
        )
    assert org_of(rsa_keys, settings, org_id=ORG, org_role="org:admin", org_permissions=[]) == (
        ActiveOrg(ORG, "org:admin", None, frozenset())
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
CLAIM_TEXT = st.text(alphabet="org_:,0123456789abAZ -", max_size=24)
FIELD = JSON | CLAIM_TEXT | st.just(ORG)


@given(
    version=st.sampled_from([None, 1, 2]) | JSON,
    o=st.dictionaries(st.sampled_from(["id", "rol", "slg", "per", "fpm"]), FIELD) | JSON,
    fea=FIELD,
    v1=st.dictionaries(
        st.sampled_from(["org_id", "org_role", "org_slug", "org_permissions"]),
        FIELD | st.lists(CLAIM_TEXT, max_size=3),
    ),
)
def test_any_org_claims_give_a_well_formed_org_or_none(
    version: Any, o: Any, fea: Any, v1: dict[str, Any]
) -> None:
    """The claims as they come out of a verified token (JSON), without the signing cost."""
    claims = json.loads(json.dumps({"sub": "user_1", "v": version, "o": o, "fea": fea, **v1}))
    settings = Settings(database_url="postgresql://u:p@localhost/db", admin_user_ids="")
    org = identity_from_claims(claims, settings).org
    if org is not None:
        assert org.id.startswith("org_") and org.role.startswith("org:")
        assert org.slug is None or isinstance(org.slug, str)
        assert all(p.startswith("org:") and p.count(":") == 2 for p in org.permissions)
