"""Settings: read once, explained on failure, never echoing a secret."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from shared.config import (
    ConfigurationError,
    PreparedStatements,
    Settings,
    every_spelling,
    get_settings,
    read_variable,
)


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("DATABASE_URL", "PREPARED_STATEMENTS", "SLOW_QUERY_MS", "DB_POOL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_missing_database_url_names_the_variable_and_shows_an_example() -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    message = str(caught.value)
    assert "DATABASE_URL is required" in message
    assert "example: DATABASE_URL=postgresql://" in message


def test_malformed_value_is_explained_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://root:hunter2@db/x")
    monkeypatch.setenv("SLOW_QUERY_MS", "soon")
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    message = str(caught.value)
    assert "DATABASE_URL is invalid" in message and "SLOW_QUERY_MS is invalid" in message
    assert "hunter2" not in message


def test_defaults_and_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@localhost/db")
    monkeypatch.setenv("PREPARED_STATEMENTS", "off")
    settings = get_settings()
    assert settings.prepared_statements is PreparedStatements.OFF
    assert settings.slow_query_ms == 500
    assert settings.db_pool_size == 1  # one connection per warm Lambda container


def test_settings_are_read_once_per_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@localhost/one")
    first = get_settings()
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@localhost/two")
    assert get_settings() is first


BASE = {"DATABASE_URL": "postgresql://u:p@localhost/db"}
JWKS = "https://clerk.example.com/.well-known/jwks.json"
LOCAL_JWKS = "http://127.0.0.1:8123/.well-known/jwks.json"


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        # pydantic's lax forms, which deployments may already use
        ("BILLING_ENABLED", "yes", True),
        ("BILLING_ENABLED", "TRUE", True),
        ("BILLING_ENABLED", "t", True),
        ("BILLING_ENABLED", "Off", False),
        ("BILLING_ENABLED", "0", False),
        ("SLOW_QUERY_MS", " 750 ", 750),
        ("SLOW_QUERY_MS", "1_000", 1000),
        ("SLOW_QUERY_MS", "+5", 5),
        ("SLOW_QUERY_MS", "10.00", 10),
        ("DB_RETRY_BUDGET_S", "2.5", 2.5),
        ("DB_RETRY_BUDGET_S", "1e1", 10.0),
        ("TRUST_PROXY", "cloudflare", "cloudflare"),
        ("TRUST_PROXY", "no", False),
        ("PREPARED_STATEMENTS", "on", PreparedStatements.ON),
        ("STORAGE_MODE", "postgres", "postgres"),
        ("MOCK_PROVIDER_SEED", "42", 42),
        ("CLERK_JWT_KEY", "", ""),  # text is kept as given
        ("DATABASE_READ_URL", "", None),  # an empty URL is an unset one
        # whitespace pasted around a URL is dropped (inside one it must be percent-encoded)
        (
            "DATABASE_URL",
            " postgresql://u:p@h/db?channel_binding=require \r\n",
            "postgresql://u:p@h/db?channel_binding=require",
        ),
        ("DATABASE_READ_URL", " \n", None),
        ("UPSTASH_REDIS_REST_URL", "https://eu1-cat.upstash.io\t\n", "https://eu1-cat.upstash.io"),
        # Clerk's JWKS over https; http only on this machine (keyflash dev, the tests)
        ("CLERK_JWKS_URL", "https://clerk.example.com/.well-known/jwks.json ", JWKS),
        ("CLERK_JWKS_URL", "http://127.0.0.1:8123/.well-known/jwks.json", LOCAL_JWKS),
        ("CLERK_JWKS_URL", "http://localhost:8123/jwks", "http://localhost:8123/jwks"),
        ("CLERK_JWKS_URL", "", ""),
        ("DB_APPLICATION_NAME", "x" * 63, "x" * 63),
        ("REPLICA_MAX_LAG_MS", "3600000", 3_600_000),  # bounds are inclusive where they say so
        ("DB_STATEMENT_TIMEOUT_MS", "2147483647", 2_147_483_647),  # PostgreSQL's largest
        ("DB_RETRY_BUDGET_S", "900", 900.0),  # Lambda's longest timeout
    ],
)
def test_values_parse_as_deployments_write_them(name: str, text: str, value: object) -> None:
    settings = Settings.from_environ({**BASE, name: text})
    assert getattr(settings, name.lower()) == value
    assert type(getattr(settings, name.lower())) is type(value)


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("BILLING_ENABLED", " true", "must be true or false"),
        ("BILLING_ENABLED", "2", "must be true or false"),
        ("SLOW_QUERY_MS", "10.5", "must be a whole number"),
        ("SLOW_QUERY_MS", "1e3", "must be a whole number"),
        ("SLOW_QUERY_MS", "10.", "must be a whole number"),
        ("SLOW_QUERY_MS", "१२", "must be a whole number"),  # int() would read Devanagari digits
        ("SLOW_QUERY_MS", "", "must be a whole number"),
        ("SLOW_QUERY_MS", "-1", "must be at least 0"),
        ("DB_POOL_SIZE", "101", "must be at most 100"),
        ("DB_RETRY_BUDGET_S", "0", "must be greater than 0"),
        ("DB_RETRY_BUDGET_S", "900.5", "must be at most 900"),  # past every platform's limit
        ("DB_STATEMENT_TIMEOUT_MS", "0", "must be at least 1"),  # 0 is PostgreSQL's "no limit"
        ("DB_STATEMENT_TIMEOUT_MS", "2147483648", "must be at most 2147483647"),
        ("DB_RETRY_BUDGET_S", "inf", "must be a number"),  # pydantic took an endless budget
        ("DB_IDLE_CHECK_S", "nan", "must be a number"),
        ("REPLICA_MAX_LAG_MS", "3600001", "must be at most 3600000"),
        ("TRUST_PROXY", "Cloudflare", "must be one of cloudflare"),
        ("PREPARED_STATEMENTS", "ON", "must be one of auto, on, off"),
        ("STORAGE_MODE", "redis", "must be one of dual, fallback, postgres"),
        ("APP_ENV", "prod", "must be one of development, test, production"),
        ("MOCK_PROVIDER_SEED", "", "must be a whole number"),
        ("DB_APPLICATION_NAME", "", "must be at least 1 characters"),
        ("DB_APPLICATION_NAME", "x" * 64, "must be at most 63 characters"),
        ("DIRECT_DATABASE_URL", "POSTGRESQL://h/db", "must be a postgresql:// URL"),
        ("DIRECT_DATABASE_URL", "postgresql:/h/db", "must be a postgresql:// URL"),
        # urllib took these as an exception per request (a 500) or read them as files, over FTP
        *(
            ("CLERK_JWKS_URL", url, "must be an https:// URL (http:// only for localhost")
            for url in (
                "clerk.example.com/.well-known/jwks.json",
                "http://clerk.example.com/.well-known/jwks.json",
                "file:///etc/jwks.json",
                "ftp://clerk.example.com/jwks.json",
                "https:///.well-known/jwks.json",
                "https://clerk.example.com:443x/.well-known/jwks.json",
                "https://[clerk.example.com/.well-known/jwks.json",
            )
        ),
    ],
)
def test_a_bad_value_names_its_variable_and_the_rule(name: str, text: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environ({**BASE, name: text})
    assert f"{name} is invalid ({reason}" in str(caught.value)


# The read URLs are checked when a read is routed: one breaking a rule is not used (below).
URL_SETTINGS = [
    "DATABASE_URL",
    "DIRECT_DATABASE_URL",
    "UPSTASH_REDIS_REST_URL",
    "APP_URL",
    "CLERK_JWKS_URL",
    "STRIPE_API_BASE",
    "DATAFORSEO_API_BASE_URL",
    "GOOGLE_ADS_API_BASE_URL",
    "GOOGLE_ADS_TOKEN_URL",
]


@pytest.mark.parametrize("name", URL_SETTINGS)
@pytest.mark.parametrize("password", ["Kx7@Qz9-Vb1", "Kx7@Qz9:Wq4/Rd8?Tp2#Zn5%&=+$;é !Vb1"])
def test_a_url_with_an_unencoded_password_is_refused_showing_no_part_of_it(
    name: str, password: str
) -> None:
    """Parsers split such a password at different places: the driver then tries a host made
    of its tail and logs it in every retry; urllib's errors quote pieces of it."""
    scheme = "postgresql" if "DATABASE" in name else "https"
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environ({**BASE, name: f"{scheme}://alex:{password}@db.example.com/x"})
    message = str(caught.value)
    assert f"{name} is invalid (must have its user name and password percent-encoded" in message
    shown = [piece for piece in re.findall(r"[^\W_]{3,}", password) if piece in message]
    assert shown == []


@pytest.mark.parametrize("name", ["DATABASE_READ_URL", "ANALYTICS_DATABASE_URL"])
def test_a_read_url_with_an_unencoded_password_is_no_settings_error(name: str) -> None:
    """A read URL is optional: the routed read refuses it (`url_refused`, tests/core/
    test_read_routing.py) and the primary reads, rather than every function answering 500."""
    url = "postgresql://alex:Kx7@Qz9@db.example.com/x"
    assert getattr(Settings.from_environ({**BASE, name: url}), name.lower()) == url


@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("STRIPE_SECRET_KEY", "stripe_secret_key"),
        ("STRIPE_WEBHOOK_SECRET", "stripe_webhook_secret"),
        ("CLERK_WEBHOOK_SECRET", "clerk_webhook_secret"),
        ("UPSTASH_REDIS_REST_TOKEN", "upstash_redis_rest_token"),
        ("KV_REST_API_TOKEN", "upstash_redis_rest_token"),
    ],
)
@pytest.mark.parametrize(
    "pasted",
    ["sk_or_whsec_x1\n", "sk_or_whsec_x1\r\n", '"sk_or_whsec_x1"', " 'sk_or_whsec_x1' \n"],
)
def test_a_vendor_secret_pasted_with_whitespace_or_its_quotes_is_the_secret(
    name: str, setting: str, pasted: str
) -> None:
    """No vendor secret holds surrounding whitespace or quotes; Stripe's and Svix's libraries
    would fail on them as an outage or a forged signature, Upstash's as every call refused."""
    assert getattr(Settings.from_environ({**BASE, name: pasted}), setting) == "sk_or_whsec_x1"


@pytest.mark.parametrize("name", ["CRON_SECRET", "RATE_LIMIT_HMAC_SECRET"])
def test_secrets_we_compare_or_key_with_are_taken_as_given(name: str) -> None:
    """Vercel sends CRON_SECRET exactly as stored; an HMAC secret changed keys what is written."""
    assert getattr(Settings.from_environ({**BASE, name: '"s3cret" '}), name.lower()) == '"s3cret" '


def test_an_empty_database_url_is_a_missing_one() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_URL is required"):
        Settings.from_environ({"DATABASE_URL": ""})


def test_names_are_read_case_insensitively_and_unknown_ones_ignored() -> None:
    settings = Settings.from_environ(
        {"database_url": "postgresql://u:p@h/db", "Slow_Query_Ms": "9", "UNRELATED": "x"}
    )
    assert (settings.database_url, settings.slow_query_ms) == ("postgresql://u:p@h/db", 9)


@pytest.mark.parametrize("documented_first", [True, False])
def test_two_spellings_of_a_name_with_different_values_are_refused(documented_first: bool) -> None:
    """Which spelling a process environment lists last is an accident: a stale `database_url`
    beside `DATABASE_URL` silently won when it came later."""
    spellings = [
        ("DATABASE_URL", "postgresql://u:p@h/current_db"),
        ("database_url", "postgresql://u:p@h/stale_db"),
    ]
    environ = dict(spellings if documented_first else reversed(spellings))
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environ(environ)
    message = str(caught.value)
    expected = "DATABASE_URL is set as DATABASE_URL and database_url, with different values"
    assert expected in message
    assert "current_db" not in message and "stale_db" not in message


def test_two_spellings_of_a_name_with_the_same_value_are_one_setting() -> None:
    settings = Settings.from_environ({**BASE, "database_url": BASE["DATABASE_URL"]})
    assert settings.database_url == BASE["DATABASE_URL"]


# What Vercel's marketplace integrations write: Neon (DATABASE_URL_UNPOOLED), Upstash and the
# retired Vercel KV (KV_REST_API_URL, KV_REST_API_TOKEN).
VERCEL_NAMES = [
    ("DATABASE_URL_UNPOOLED", "DIRECT_DATABASE_URL", "postgresql://u:p@ep-x.neon.tech/db"),
    ("KV_REST_API_URL", "UPSTASH_REDIS_REST_URL", "https://eu1-cat-1.upstash.io"),
    ("KV_REST_API_TOKEN", "UPSTASH_REDIS_REST_TOKEN", "AX1cAAIjcDE"),
]


@pytest.mark.parametrize(("alternate", "name", "text"), VERCEL_NAMES)
def test_a_vercel_integrations_name_sets_its_setting(alternate: str, name: str, text: str) -> None:
    assert getattr(Settings.from_environ({**BASE, alternate: text}), name.lower()) == text
    same = Settings.from_environ({**BASE, alternate: text, name: text})
    assert getattr(same, name.lower()) == text


def test_redis_is_configured_from_the_kv_names_alone() -> None:
    """The other names the integrations write are never the REST URL or token: KV_URL and
    REDIS_URL are redis:// URLs, the read-only token cannot write."""
    others = {
        "KV_URL": "rediss://default:x@eu1-cat-1.upstash.io:6379",
        "REDIS_URL": "rediss://default:x@eu1-cat-1.upstash.io:6379",
        "KV_REST_API_READ_ONLY_TOKEN": "read-only",
    }
    assert not Settings.from_environ({**BASE, **others}).redis_configured
    kv = {"KV_REST_API_URL": "https://eu1-cat-1.upstash.io", "KV_REST_API_TOKEN": "AX1c"}
    settings = Settings.from_environ({**BASE, **others, **kv})
    assert settings.redis_configured
    assert (settings.upstash_redis_rest_url, settings.upstash_redis_rest_token) == (
        "https://eu1-cat-1.upstash.io",
        "AX1c",
    )


@pytest.mark.parametrize(("alternate", "name", "text"), VERCEL_NAMES)
def test_a_vercel_integrations_name_disagreeing_with_ours_is_refused_naming_both(
    alternate: str, name: str, text: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environ({**BASE, name: text + "0", alternate.lower(): text})
    message = str(caught.value)
    names = " and ".join(sorted([name, alternate.lower()]))
    assert f"{name} is set as {names}, with different values: keep one" in message
    assert text not in message


def test_a_bad_value_under_another_name_says_which_name_it_came_from() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environ({**BASE, "DATABASE_URL_UNPOOLED": "mysql://u:hunter2@h/db"})
    message = str(caught.value)
    assert "DIRECT_DATABASE_URL (set as DATABASE_URL_UNPOOLED) is invalid" in message
    assert "hunter2" not in message


def test_the_tools_read_a_variable_as_the_settings_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """`read_variable`: the one way the dev tools read a setting's variable (which spelling
    set it, and its text), refusing as the settings would."""
    assert read_variable("KV_REST_API_URL", {}) is None
    environ = {"KV_REST_API_URL": "https://a.upstash.io", "UPSTASH_REDIS_REST_URL": ""}
    with pytest.raises(ConfigurationError, match="KV_REST_API_URL and UPSTASH_REDIS_REST_URL"):
        read_variable("UPSTASH_REDIS_REST_URL", environ)
    environ["UPSTASH_REDIS_REST_URL"] = "https://a.upstash.io"
    assert read_variable("UPSTASH_REDIS_REST_URL", environ) == (
        "UPSTASH_REDIS_REST_URL",
        "https://a.upstash.io",
    )
    assert read_variable("upstash_redis_rest_url", {"KV_REST_API_URL": "https://a"}) == (
        "KV_REST_API_URL",
        "https://a",
    )
    assert read_variable("DIRECT_DATABASE_URL", {"DIRECT_DATABASE_URL": ""}) is None  # empty: unset
    monkeypatch.delenv("DIRECT_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL_UNPOOLED", "postgresql://h/db")
    assert read_variable("DIRECT_DATABASE_URL") == ("DATABASE_URL_UNPOOLED", "postgresql://h/db")


def test_the_tools_set_a_variable_under_every_spelling_the_environment_has() -> None:
    """What the dev tools export for the functions never disagrees with a spelling already
    exported (the settings would refuse both)."""
    environ = {"KV_REST_API_URL": "https://theirs.upstash.io", "database_url": "x", "HOME": "/"}
    assert every_spelling({"UPSTASH_REDIS_REST_URL": "http://127.0.0.1:1"}, environ) == {
        "UPSTASH_REDIS_REST_URL": "http://127.0.0.1:1",
        "KV_REST_API_URL": "http://127.0.0.1:1",
    }
    assert every_spelling({"DATABASE_URL": "y", "APP_ENV": "test"}, environ) == {
        "DATABASE_URL": "y",
        "database_url": "y",
        "APP_ENV": "test",
    }


def test_every_bad_variable_is_listed_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environ({"SLOW_QUERY_MS": "soon", "DB_POOL_SIZE": "0"})
    problems = str(caught.value).split("; ")
    assert [p.split(" ", 1)[0] for p in problems if " is " in p] == [
        "DATABASE_URL",
        "SLOW_QUERY_MS",
        "DB_POOL_SIZE",
    ]


def test_rules_across_variables_hold_however_settings_are_built() -> None:
    production = {**BASE, "APP_ENV": "production", "EXPORT_PREFIX": "keyflash/exports/"}
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environ(production)
    message = str(caught.value)
    assert "EXPORT_PREFIX must be a non-empty prefix outside BACKUP_PREFIX" in message
    assert "ACCOUNT_HMAC_SECRET (or RATE_LIMIT_HMAC_SECRET)" in message
    with pytest.raises(ConfigurationError, match="STORAGE_MODE=dual keeps the original Redis"):
        Settings(database_url="postgresql://u:p@h/db", storage_mode="dual")
    secret = "s" * 32
    assert Settings.from_environ(
        {**BASE, "APP_ENV": "production", "RATE_LIMIT_HMAC_SECRET": secret}
    ).is_production
