"""ticket_metadata: extended statistics on (key, value, md5(value))

A ``metadata.<key>=<value>`` filter matches on ``key``, ``value`` and
``md5(value)`` (the index of 0002). PostgreSQL multiplies the selectivities of
those three conditions as if they were independent and so expects a handful of
rows where a common value (one ticket in five) has hundreds of thousands; it
then sorts them all instead of walking the list's sort index. These
statistics (PostgreSQL 14+) give it the real frequencies: at 1,000,000 tickets
a list filtered on a common value went from a sort of 200,000 rows to a probe
of ~130 (bench/metadata_query.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 03:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _postgresql_14() -> bool:
    bind = op.get_bind()
    return bind.dialect.name == "postgresql" and (bind.dialect.server_version_info or (0,)) >= (14,)


def upgrade() -> None:
    if _postgresql_14():
        op.execute(
            "CREATE STATISTICS IF NOT EXISTS st_ticket_metadata_key_value "
            "ON key, value, md5(value) FROM ticket_metadata"
        )
        op.execute("ANALYZE ticket_metadata")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_ticket_metadata_key_value")
