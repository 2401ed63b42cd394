"""Settings: every environment variable the core reads, validated once per container.

A warm container keeps the parsed settings for its lifetime (`get_settings` is cached), so a
request never pays for parsing the environment again. Errors name the variable, show an example
and never echo the value itself: a malformed DATABASE_URL would otherwise leak its password.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EXAMPLES = {
    "DATABASE_URL": "postgresql://user:password@ep-cool-name-123-pooler.eu-central-1.aws.neon.tech/keyflash",
    "DIRECT_DATABASE_URL": "postgresql://user:password@ep-cool-name-123.eu-central-1.aws.neon.tech/keyflash",
    "PREPARED_STATEMENTS": "auto (or on, off)",
    "SLOW_QUERY_MS": "500",
    "DB_CONNECT_TIMEOUT_S": "10",
    "DB_STATEMENT_TIMEOUT_MS": "15000 (0 leaves the server's setting)",
    "DB_RETRY_BUDGET_S": "8",
    "DB_POOL_SIZE": "1",
    "DB_IDLE_CHECK_S": "30",
    "DB_APPLICATION_NAME": "keyflash",
}


class PreparedStatements(StrEnum):
    """Whether psycopg may prepare statements server-side (see `shared.db`)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed; the message says which one and how to fix it."""


PositiveFloat = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """The core's configuration, read from the environment (names are the upper-case fields)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: str
    direct_database_url: str | None = None
    prepared_statements: PreparedStatements = PreparedStatements.AUTO
    slow_query_ms: Annotated[int, Field(ge=0)] = 500
    db_connect_timeout_s: Annotated[int, Field(ge=1, le=120)] = 10
    db_statement_timeout_ms: Annotated[int, Field(ge=0)] = 15_000
    db_retry_budget_s: PositiveFloat = 8.0
    db_pool_size: Annotated[int, Field(ge=1, le=100)] = 1
    db_idle_check_s: Annotated[float, Field(ge=0)] = 30.0
    db_application_name: Annotated[str, Field(min_length=1, max_length=63)] = "keyflash"

    @field_validator("database_url", "direct_database_url")
    @classmethod
    def _postgres_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in {"postgres", "postgresql", "postgresql+psycopg"}:
            raise ValueError("must be a postgresql:// URL")
        return value


def _explain(error: ValidationError) -> str:
    """One line per bad variable, naming it and showing an example, never the value."""
    lines = []
    for issue in error.errors():
        name = str(issue["loc"][0]).upper() if issue["loc"] else "settings"
        reason = "is required" if issue["type"] == "missing" else f"is invalid ({issue['msg']})"
        example = EXAMPLES.get(name)
        hint = f"; example: {name}={example}" if example else ""
        lines.append(f"{name} {reason}{hint}")
    return "; ".join(lines)


@cache
def get_settings() -> Settings:
    """The container's settings, parsed on first use."""
    try:
        return Settings()  # values come from the environment
    except ValidationError as error:
        raise ConfigurationError(_explain(error)) from None
