"""Shared fixtures: a real PostgreSQL database per test worker, built by Alembic.

Each xdist worker gets its own database (``sg_test_<worker>_<pid>``), migrated once;
every test starts from empty tables (TRUNCATE, fast on PostgreSQL). The
server is ``SUPPORTGATE_TEST_PG`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432``).
With ``CI=true`` an unreachable PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from gateway.config import Settings
from gateway.db import Database
from gateway.migrations import upgrade
from gateway.users.services import add_user_cli
from web.app import create_app

PG_SERVER = os.environ.get("SUPPORTGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() == "true"
TABLES = (
    "slack_events, slack_posts, slack_threads, slack_users, "
    "outbound_mail, inbound_mail, imap_checkpoints, ticket_participants, "
    "audit_log, events, outbox_tasks, ticket_history, attachments, messages, ticket_metadata, "
    "ticket_tags, tickets, api_tokens, users, custom_field_definitions, deletion_policy"
)


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _admin_dsn() -> str:
    return PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    # The pid keeps concurrent runs on one server (two checkouts, two developers) apart.
    name = f"sg_test_{_worker()}_{os.getpid()}"
    try:
        with psycopg.connect(_admin_dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    url = f"{PG_SERVER}/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database(pg_url: str) -> Iterator[Database]:
    db = Database(pg_url, pool_size=4)
    yield db
    db.dispose()


def reset(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        conn.execute(text("ALTER SEQUENCE ticket_number_seq RESTART WITH 1"))
        conn.execute(
            text(
                "INSERT INTO deletion_policy (id, require_soft_delete_before_purge, updated_at) "
                "VALUES (1, true, now())"
            )
        )


@pytest.fixture
def db(database: Database) -> Database:
    reset(database)
    return database


@pytest.fixture
def settings(db: Database, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db.url,
        data_dir=tmp_path / "data",
        rate_limit_per_minute=0,
        auth_failures_per_minute=0,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def app(settings: Settings, db: Database) -> Flask:
    return create_app(settings, database=db)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass
class Caller:
    """A test client speaking as one user."""

    client: FlaskClient
    token: str
    id: str
    email: str
    role: str

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(headers or {})}

    def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.client.get(path, headers=self._headers(headers), **kw)

    def post(
        self, path: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        return self.client.post(path, json=json, headers=self._headers(headers), **kw)

    def patch(
        self, path: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        return self.client.patch(path, json=json, headers=self._headers(headers), **kw)

    def put(
        self, path: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        return self.client.put(path, json=json, headers=self._headers(headers), **kw)

    def delete(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.client.delete(path, headers=self._headers(headers), **kw)


@pytest.fixture
def make_caller(client: FlaskClient, db: Database):
    def make(role: str, email: str | None = None, name: str | None = None) -> Caller:
        email = email or f"{role}-{os.urandom(3).hex()}@example.com"
        with db.transaction() as session:
            user, secret = add_user_cli(session, email, role, name, None)
            uid, role_ = str(user.id), user.role
        return Caller(client, secret, uid, email, role_)

    return make


@pytest.fixture
def admin(make_caller) -> Caller:
    return make_caller("admin", "admin@example.com", "Ada Admin")


@pytest.fixture
def agent(make_caller) -> Caller:
    return make_caller("agent", "agent@example.com", "Alan Agent")


@pytest.fixture
def customer_a(make_caller) -> Caller:
    return make_caller("customer", "alice@example.org", "Alice")


@pytest.fixture
def customer_b(make_caller) -> Caller:
    return make_caller("customer", "bob@example.org", "Bob")


@pytest.fixture
def make_ticket(admin: Caller):
    def make(**fields: Any) -> dict[str, Any]:
        body = {"title": "Printer on fire", "description": "It smokes.", **fields}
        response = admin.post("/api/v1/tickets", json=body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return make


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[tuple[Flask, Database]]:
    """The API on a fresh, migrated SQLite file (the embedded default), without rate limits."""
    url = f"sqlite:///{tmp_path / 'sg.db'}"
    upgrade(url)
    db = Database(url)
    settings = Settings(
        data_dir=tmp_path,
        database_url=url,
        rate_limit_per_minute=0,
        auth_failures_per_minute=0,
        _env_file=None,  # type: ignore[call-arg]
    )
    yield create_app(settings, database=db), db
    db.dispose()
