"""Metadata lookups, custom field lifecycle, admin audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Indexes that exist only here, not in the models (expression or backend-specific):
# see gateway/metadata/models.py and gateway/tickets/models.py.


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("ticket_metadata") as batch:
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    if postgres:
        # Values reach 4 KiB, past a btree entry's limit: index their md5 instead.
        op.execute(
            "CREATE INDEX ix_ticket_metadata_key_value_md5 ON ticket_metadata (key, md5(value))"
        )
        op.execute(
            "CREATE INDEX ix_tickets_custom_fields ON tickets "
            "USING gin (custom_fields jsonb_path_ops)"
        )
    else:
        op.execute("CREATE INDEX ix_ticket_metadata_key_value ON ticket_metadata (key, value)")

    with op.batch_alter_table("custom_field_definitions") as batch:
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_target", "audit_log", ["target_type", "target_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_target", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("custom_field_definitions") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("updated_at")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_tickets_custom_fields")
        op.execute("DROP INDEX IF EXISTS ix_ticket_metadata_key_value_md5")
    else:
        op.execute("DROP INDEX IF EXISTS ix_ticket_metadata_key_value")
    with op.batch_alter_table("ticket_metadata") as batch:
        batch.drop_column("updated_at")
