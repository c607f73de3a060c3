"""event stream positions

Events get ``position``: their place in the live stream, assigned in commit
order by the relay (see ``gateway/stream.py``). On PostgreSQL a statement
trigger notifies ``supportgate_events`` on every insert, so relays wake at
the inserting transaction's commit instead of polling.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("position", BigId, nullable=True))
        batch_op.create_index("ix_events_position", ["position"], unique=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION supportgate_events_notify() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('supportgate_events', '');
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER events_notify AFTER INSERT ON events "
            "FOR EACH STATEMENT EXECUTE FUNCTION supportgate_events_notify()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_notify ON events")
        op.execute("DROP FUNCTION IF EXISTS supportgate_events_notify()")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_position")
        batch_op.drop_column("position")
