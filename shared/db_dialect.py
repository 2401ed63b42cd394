"""SQLAlchemy's psycopg dialect, initialised in one round trip instead of five.

On an engine's first connection SQLAlchemy asks the server, one statement at a time, for its
version, the current schema, the default isolation level and `standard_conforming_strings`,
then looks up the `hstore` type: five round trips on the first request of every new container
(and of every container restored from a SnapStart snapshot), each one a hop to Neon.

Here the server's own startup messages answer two of them (psycopg keeps the version and the
`standard_conforming_strings` it reported; PgBouncer passes both on), one statement answers the
schema and the isolation level together, and `hstore`, which no table uses, is not looked up.
Where a startup message did not say (a value of 0 or None), the dialect asks as SQLAlchemy does.
Each connection it opens also loads timestamps past Python's range clamped (`shared.db_timestamps`).
`shared.db` registers it as `postgresql+keyflash` for the engines it builds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from shared import db_timestamps

NAME = "keyflash"  # the URL's driver part: postgresql+keyflash://


class KeyFlashDialect(PGDialect_psycopg):
    """`PGDialect_psycopg` whose `initialize` sends one statement (see the module docstring)."""

    # It compiles exactly as its parent: SQLAlchemy caches a subclass's compilations only
    # when the subclass says so itself (else every ORM statement is compiled anew).
    supports_statement_cache = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"use_native_hstore": False, **kwargs})  # type: ignore[no-untyped-call]
        self._reported_isolation_level: str | None = None

    def on_connect(self) -> Callable[[Any], None]:
        stock: Callable[[Any], None] = super().on_connect()  # type: ignore[no-untyped-call]

        def configure(driver: psycopg.Connection[Any]) -> None:
            stock(driver)
            db_timestamps.register(driver)

        return configure

    def _get_server_version_info(self, connection: Connection) -> tuple[int, ...]:
        version = _driver(connection).info.server_version
        if not version:
            return tuple(super()._get_server_version_info(connection))  # type: ignore[no-untyped-call]
        major = version // 10000
        if major >= 10:  # 150004 is 15.4
            return (major, version % 10000)
        return (major, version // 100 % 100, version % 100)  # 90605 is 9.6.5

    def _get_default_schema_name(self, connection: Connection) -> str | None:  # type: ignore[override]
        row = connection.exec_driver_sql(
            "SELECT current_schema(), current_setting('transaction_isolation')"
        ).one()
        self._reported_isolation_level = str(row[1]).upper()
        schema: str | None = row[0]  # None (as the stock dialect says) if no schema on the path
        return schema

    def get_default_isolation_level(self, dbapi_conn: Any) -> Any:
        # `initialize` reads the schema first: the same statement returned the level, which
        # answers this call only (any later one asks the connection it is given).
        level, self._reported_isolation_level = self._reported_isolation_level, None
        if level is not None:
            return level
        return super().get_default_isolation_level(dbapi_conn)  # type: ignore[no-untyped-call]

    def _set_backslash_escapes(self, connection: Connection) -> None:
        reported = _driver(connection).info.parameter_status("standard_conforming_strings")
        if reported is None:
            super()._set_backslash_escapes(connection)  # type: ignore[no-untyped-call]
        else:
            self._backslash_escapes = reported == "off"


def _driver(connection: Connection) -> psycopg.Connection[Any]:
    driver: psycopg.Connection[Any] = connection.connection.dbapi_connection  # type: ignore[assignment]
    return driver
