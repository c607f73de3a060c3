"""Migrations and models agree, on both backends, and downgrade cleanly."""

from __future__ import annotations

import warnings

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from gateway.migrations import alembic_config, include_object, upgrade
from gateway.models import Base


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # alembic notes that it skips expression indexes
            ctx = MigrationContext.configure(conn, opts={"include_object": include_object})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def test_sqlite_schema_matches_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert _diff(url) == []
    command.downgrade(alembic_config(url), "base")
    upgrade(url)


def test_postgres_schema_matches_models(pg_url):
    assert _diff(pg_url) == []


def test_postgres_has_metadata_statistics(pg_url):
    """The planner's frequencies for metadata.<key>=<value> lists (migration 0007)."""
    from sqlalchemy import text

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            found = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_statistic_ext "
                    "WHERE stxname = 'st_ticket_metadata_key_value'"
                )
            )
    finally:
        engine.dispose()
    assert found == 1


def test_postgres_custom_fields_statistics_target(pg_url):
    """cf.<key> lists need the finer sample of migration 0009."""
    from sqlalchemy import text

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            target = conn.scalar(
                text(
                    "SELECT attstattarget FROM pg_attribute "
                    "WHERE attrelid = 'tickets'::regclass AND attname = 'custom_fields'"
                )
            )
    finally:
        engine.dispose()
    assert target == 1000
