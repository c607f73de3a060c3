"""tickets.custom_fields: a finer statistics sample (1,000 entries)

``cf.<key>=<value>`` lists filter with ``custom_fields @> {key: value}`` (the
GIN index of 0002). PostgreSQL estimates ``@>`` by testing it against the
column's statistics sample: a value that happens to be in the default sample
of 100 entries was taken to match 1 % of tickets (6,577 of 1,000,000 for a
value held by 10 tickets), and the list then walked the whole sort index for
its page: 1.2 s instead of 0.2 ms, for ~1 % of values (bench/metadata_query.py,
cf.account). With 1,000 entries such a value is estimated at ~0.1 %, where the
GIN lookup still wins at 1,000,000 tickets. (At ten times that, the same
misestimate comes back; an expression index per custom field would be next.)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 04:45:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE tickets ALTER COLUMN custom_fields SET STATISTICS 1000")
        op.execute("ANALYZE tickets (custom_fields)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE tickets ALTER COLUMN custom_fields SET STATISTICS -1")
