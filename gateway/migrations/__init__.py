"""Alembic migrations, run with ``supportgate db upgrade`` (and by ``serve``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent

# Indexes created by migrations only (expression or backend-specific), which
# autogenerate must neither drop nor compare.
MIGRATION_ONLY_INDEXES = frozenset(
    {
        "ix_ticket_metadata_key_value_md5",
        "ix_ticket_metadata_key_value",
        "ix_tickets_custom_fields",
        "ix_tickets_metadata_doc",
    }
)


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    return not (type_ == "index" and name in MIGRATION_ONLY_INDEXES)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(url), revision)
