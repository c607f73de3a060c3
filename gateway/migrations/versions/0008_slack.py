"""slack: stored events, thread mapping, mirrored posts, user cache

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "slack_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=True),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=300), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slack_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_slack_events_event_id")),
    )
    op.create_table(
        "slack_threads",
        sa.Column("ticket_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=80), nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("posting_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rendered", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"],
            ["tickets.id"],
            name=op.f("fk_slack_threads_ticket_id_tickets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("ticket_id", name=op.f("pk_slack_threads")),
    )
    with op.batch_alter_table("slack_threads", schema=None) as batch_op:
        batch_op.create_index("ix_slack_threads_channel_ts", ["channel", "ts"], unique=True)
    op.create_table(
        "slack_posts",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("ticket_id", sa.Uuid(), nullable=False),
        sa.Column("origin", sa.String(length=8), nullable=False),
        sa.Column("channel", sa.String(length=80), nullable=True),
        sa.Column("ts", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("posting_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_slack_posts_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"],
            ["tickets.id"],
            name=op.f("fk_slack_posts_ticket_id_tickets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_slack_posts")),
    )
    with op.batch_alter_table("slack_posts", schema=None) as batch_op:
        batch_op.create_index("ix_slack_posts_channel_ts", ["channel", "ts"], unique=True)
        batch_op.create_index(
            "ix_slack_posts_ticket", ["ticket_id", "state", "created_at"], unique=False
        )
    op.create_table(
        "slack_users",
        sa.Column("slack_user_id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("is_bot", sa.Boolean(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_slack_users_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("slack_user_id", name=op.f("pk_slack_users")),
    )


def downgrade() -> None:
    op.drop_table("slack_users")
    with op.batch_alter_table("slack_posts", schema=None) as batch_op:
        batch_op.drop_index("ix_slack_posts_ticket")
        batch_op.drop_index("ix_slack_posts_channel_ts")
    op.drop_table("slack_posts")
    with op.batch_alter_table("slack_threads", schema=None) as batch_op:
        batch_op.drop_index("ix_slack_threads_channel_ts")
    op.drop_table("slack_threads")
    op.drop_table("slack_events")
