"""Connection-string rules: pooler detection, TLS, startup parameters, redaction (no database)."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import make_url

from shared.config import PreparedStatements
from shared.db import prepared_statements_enabled
from shared.db_url import DatabaseUrlError, parse_database_url, redact_url

NEON_POOLED = "postgresql://app:s3cret@ep-cool-name-123-pooler.eu-central-1.aws.neon.tech/keyflash"
NEON_DIRECT = "postgresql://app:s3cret@ep-cool-name-123.eu-central-1.aws.neon.tech/keyflash"
LOCAL_BOUNCER = "postgresql://postgres@127.0.0.1:6432/keyflash?pgbouncer=true"


def test_neon_pooler_host_is_detected_and_gets_tls() -> None:
    target = parse_database_url(NEON_POOLED)
    assert target.is_pooler and target.is_neon and not target.is_loopback
    assert target.sqlalchemy_url.startswith("postgresql+psycopg://")
    assert "sslmode=require" in target.sqlalchemy_url


def test_neon_direct_host_is_not_a_pooler() -> None:
    target = parse_database_url(NEON_DIRECT)
    assert not target.is_pooler and target.is_neon


def test_pgbouncer_flag_marks_a_pooler_and_is_stripped_before_libpq_sees_it() -> None:
    target = parse_database_url(LOCAL_BOUNCER)
    assert target.is_pooler and not target.is_neon and target.is_loopback
    assert "pgbouncer" not in target.sqlalchemy_url
    assert "sslmode" not in target.sqlalchemy_url  # loopback keeps whatever the server offers


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_weak_tls_to_a_remote_host_is_refused(mode: str) -> None:
    with pytest.raises(DatabaseUrlError, match="require TLS") as caught:
        parse_database_url(f"{NEON_DIRECT}?sslmode={mode}")
    assert "s3cret" not in str(caught.value)


def test_explicit_strong_tls_is_kept() -> None:
    target = parse_database_url(f"{NEON_DIRECT}?sslmode=verify-full&channel_binding=require")
    assert "sslmode=verify-full" in target.sqlalchemy_url
    assert "channel_binding=require" in target.sqlalchemy_url


def test_pooler_refuses_startup_parameters_pgbouncer_does_not_track() -> None:
    with pytest.raises(DatabaseUrlError, match="options") as caught:
        parse_database_url(f"{NEON_POOLED}?options=-c%20statement_timeout%3D5000")
    assert "application_name" in str(caught.value)  # names what is allowed
    assert "s3cret" not in str(caught.value)


def test_pooler_accepts_the_five_tracked_startup_parameters() -> None:
    url = f"{NEON_POOLED}?application_name=kf&timezone=UTC&client_encoding=UTF8"
    assert parse_database_url(url).is_pooler


def test_direct_connection_may_use_options() -> None:
    assert not parse_database_url(f"{NEON_DIRECT}?options=-c%20work_mem%3D64MB").is_pooler


def test_non_postgres_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(DatabaseUrlError, match="postgresql://") as caught:
        parse_database_url("mysql://root:hunter2@db/x")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (NEON_POOLED, NEON_POOLED.replace("s3cret", "***")),
        (
            "could not connect: host=db password=hunter2 user=x",
            "could not connect: host=db password=*** user=x",
        ),
        ("password='with space' dbname=x", "password=*** dbname=x"),
        ("postgresql://nopassword@host/db", "postgresql://nopassword@host/db"),
        # unencoded passwords: everything up to the last '@' goes, even across spaces
        ("postgresql://alex:My@Pass-word1@host/db", "postgresql://alex:***@host/db"),
        (
            "keyflash db migrate: postgresql://special:P@ss:w/rd?#%&=+$;é !@127.0.0.1:5432/n",
            "keyflash db migrate: postgresql://special:***@127.0.0.1:5432/n",
        ),
        ("postgresql://u:a@b@h/db\nas x@y", "postgresql://u:***@h/db\nas x@y"),  # line by line
    ],
)
def test_redaction_masks_passwords(text: str, expected: str) -> None:
    assert redact_url(text) == expected


# Passwords as pasted from a dashboard, unencoded (Neon: special characters must be
# percent-encoded). Parsers split them at different places, so each is refused up front.
RAW_PASSWORDS = [
    "Kx7@Qz9-Vb1",  # libpq and SQLAlchemy end the password at the first '@'
    "Kx7@Qz9:Wq4/Rd8?Tp2#Zn5%&=+$;é !Vb1",
    "Kx7/Qz9",
    "4567/Qz9",  # before the '/', `alex:4567` reads as a host and port
    "4567?Qz9",
    "4567#Qz9",
    "Kx7%Qz9",  # a '%' that starts no escape
    "Kx7 Qz9",
    "Kx7[Qz9]",
]


def pieces(password: str) -> list[str]:
    """The password's runs of letters and digits: none may show in a message."""
    return re.findall(r"[^\W_]{3,}", password)


@pytest.mark.parametrize("password", RAW_PASSWORDS)
def test_an_unencoded_password_is_refused_showing_no_part_of_it(password: str) -> None:
    url = f"postgresql://alex:{password}@ep-cool-name-123.eu-central-1.aws.neon.tech/keyflash"
    with pytest.raises(DatabaseUrlError, match="percent-encode") as caught:
        parse_database_url(url, variable="DIRECT_DATABASE_URL")
    message = str(caught.value)
    assert message.startswith("DIRECT_DATABASE_URL ")
    assert [piece for piece in pieces(password) if piece in message] == []


@pytest.mark.parametrize("password", RAW_PASSWORDS)
def test_the_percent_encoded_password_reaches_every_parser_whole(password: str) -> None:
    """What the refusal asks for works: SQLAlchemy (the engine) and libpq (the CLI's tools)
    read the same password and host."""
    url = f"postgresql://alex:{quote(password, safe='')}@db.example.com:5432/keyflash"
    target = parse_database_url(url)
    engine_url = make_url(target.sqlalchemy_url)
    assert (engine_url.password, engine_url.host) == (password, "db.example.com")
    assert target.host == "db.example.com"  # the host the pooler and TLS rules judged
    libpq = conninfo_to_dict(target.sqlalchemy_url.replace("+psycopg", ""))
    assert (libpq["password"], libpq["host"]) == (password, "db.example.com")


def test_an_at_sign_anywhere_after_the_host_must_be_encoded_too() -> None:
    """The password ends at the URL's only '@': a second one, even in a parameter, is refused."""
    with pytest.raises(DatabaseUrlError, match="percent-encode"):
        parse_database_url(f"{NEON_DIRECT}?sslrootcert=/etc/k@y/root.crt")
    encoded = parse_database_url(f"{NEON_DIRECT}?sslrootcert=/etc/k%40y/root.crt")
    assert "k%40y" in encoded.sqlalchemy_url


def test_whitespace_pasted_around_a_url_is_dropped() -> None:
    """Dashboards and .env editors add a trailing space or line break (or a leading space)."""
    target = parse_database_url(f" {NEON_POOLED}?channel_binding=require \r\n")
    assert target.is_pooler
    assert target.sqlalchemy_url.endswith("?channel_binding=require&sslmode=require")


@pytest.mark.parametrize(
    ("url", "mode", "enabled"),
    [
        (NEON_POOLED, PreparedStatements.AUTO, True),  # Neon runs PgBouncer >= 1.22
        (LOCAL_BOUNCER, PreparedStatements.AUTO, False),  # Debian's 1.18 cannot
        (NEON_DIRECT, PreparedStatements.AUTO, True),
        (LOCAL_BOUNCER, PreparedStatements.ON, True),
        (NEON_POOLED, PreparedStatements.OFF, False),
    ],
)
def test_prepared_statement_mode(url: str, mode: PreparedStatements, enabled: bool) -> None:
    assert prepared_statements_enabled(parse_database_url(url), mode) is enabled
