"""Repair: a legacy partition revision 0010 bounded far ahead ends at the period after now.

Revision 0010 first set its cutover, the legacy partition's upper bound, at the period after
the newest row. A database holding a row a bad writer dated far ahead (2999, say) got a legacy
partition that takes every new row, out of reach of partition drops: retention can only delete
its rows in batches. 0010 now cuts over at the period after now (the old form crashed on a
9999-12-31 row, so no database holding one applied it); this revision brings the databases that
applied the old form to the layout 0010 makes today.

For each partitioned log (0010's layouts) whose legacy partition ends after the period after
now, the cutover: detach it; create 0010's ranges from the cutover up to its old bound, ahead as
far as 0010 makes them (the legacy partition held that span, so no partition overlaps them and
the DEFAULT one holds none of their rows); move its rows dated at or after the cutover out
through the parent, into those ranges or the DEFAULT partition past them; attach it again FROM
(MINVALUE) TO the cutover. One statement moves the rows, found by the time index; attaching
scans the legacy partition once (as 0010 did), under the ACCESS EXCLUSIVE lock the detach took,
so writes to that table wait meanwhile. A legacy partition that already ends at or before the
cutover (every database that ran 0010 in its present form), or that retention dropped, is left
as it is: there, this revision changes nothing.

The way down changes nothing either: the repaired layout is the one 0010 makes today, which
0013's code runs on as it is.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 14:00:00.000000+00:00
"""

import re
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import context, op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "partitions"
LEGACY_BOUND = re.compile(r"FOR VALUES FROM \(MINVALUE\) TO \('([^']*)'\)")
SUFFIX = {"day": "YYYYMMDD", "month": "YYYYMM"}  # 0010's names: `<table>_p20261205`, `_p202612`


def upgrade() -> None:
    bind = op.get_bind()
    for log in context.script.get_revision("0010").module.LOGS:
        t, unit, legacy = log.table, log.unit, f"{SCHEMA}.{log.table}_legacy"
        bound = bind.execute(
            sa.text(
                "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = to_regclass(:t)"
            ),
            {"t": legacy},
        ).scalar()
        match = LEGACY_BOUND.fullmatch(bound or "")
        if match is None:  # dropped by retention
            continue
        upper = datetime.fromisoformat(match.group(1))
        this = f"date_trunc('{unit}', now() AT TIME ZONE 'UTC')"  # this period's start
        cutover, last = bind.execute(
            sa.text(
                f"SELECT {this} + interval '1 {unit}', {this} + interval '{log.ahead + 1} {unit}'"
            )
        ).one()
        if upper <= cutover:
            continue
        op.execute(f"ALTER TABLE {t} DETACH PARTITION {legacy}")
        ranges = bind.execute(
            sa.text(
                f"SELECT to_char(s, '{SUFFIX[unit]}'), s, s + interval '1 {unit}' "
                "FROM generate_series(CAST(:first AS timestamp), "
                f"CAST(:until AS timestamp) - interval '1 {unit}', interval '1 {unit}') AS s"
            ),
            {"first": cutover, "until": min(upper, last)},
        ).all()
        for suffix, start, end in ranges:
            op.execute(
                f"CREATE TABLE {SCHEMA}.{t}_p{suffix} PARTITION OF {t} "
                f"FOR VALUES FROM ('{start.isoformat(sep=' ')}') TO ('{end.isoformat(sep=' ')}')"
            )
        op.execute(
            f"WITH moved AS (DELETE FROM {legacy} "
            f"WHERE \"{log.column}\" >= '{cutover.isoformat(sep=' ')}' RETURNING *) "
            f"INSERT INTO {t} SELECT * FROM moved"
        )
        op.execute(
            f"ALTER TABLE {t} ATTACH PARTITION {legacy} "
            f"FOR VALUES FROM (MINVALUE) TO ('{cutover.isoformat(sep=' ')}')"
        )


def downgrade() -> None:
    pass
