"""Settings: read once, explained on failure, never echoing a secret."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.config import ConfigurationError, PreparedStatements, get_settings


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
