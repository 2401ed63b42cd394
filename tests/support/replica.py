"""The replica lane's handle on its servers (fixtures: tests/replica/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

from devkit.replica import LocalReplica, primary_position


@dataclass
class ReplicaPair:
    """The primary's test database (direct URL), its replica, and where the lane reaches them."""

    database: str
    primary_direct: str
    replica: LocalReplica
    primary_url: str = ""  # this lane's DATABASE_URL
    read_url: str = ""  # this lane's DATABASE_READ_URL

    def caught_up(self) -> None:
        """Block until the replica has replayed everything the primary wrote so far."""
        self.replica.wait_until_replayed(primary_position(self.primary_direct))
