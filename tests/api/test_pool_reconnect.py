"""Without ``pool_pre_ping``, pooled connections that PostgreSQL ended (a restart,
``pg_terminate_backend``) are replaced at checkout: no request sees them."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import event

import gateway.db
from gateway.db import Database


def terminate_backends(db: Database) -> int:
    """End every other backend of the test database, as a restart would; wait until gone."""
    dsn = db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        for _ in range(100):
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            if left and left[0] == 0:
                break
            time.sleep(0.02)
    return int(ended[0]) if ended else 0


@pytest.fixture
def connects(db: Database):
    made: list[int] = []

    def on_connect(*_: object) -> None:
        made.append(1)

    event.listen(db.engine, "connect", on_connect)
    yield made
    event.remove(db.engine, "connect", on_connect)


def test_no_request_fails_after_the_backends_are_terminated(admin, make_ticket, db, connects):
    ticket = make_ticket(tags=["x"], metadata={"k": "v"})
    for _ in range(8):
        assert admin.get("/api/v1/tickets").status_code == 200
    assert terminate_backends(db) >= 1
    codes = [admin.get(f"/api/v1/tickets/{ticket['id']}").status_code for _ in range(10)]
    codes += [admin.get("/api/v1/tickets").status_code for _ in range(10)]
    assert codes == [200] * 20
    assert connects, "the pool never connected afresh"


def test_a_long_idle_connection_is_pinged(admin, db, connects, monkeypatch):
    assert admin.get("/api/v1/tickets").status_code == 200
    pings: list[int] = []
    real_ping = db.engine.dialect.do_ping

    def counting_ping(dbapi_conn: object) -> bool:
        pings.append(1)
        return real_ping(dbapi_conn)

    monkeypatch.setattr(db.engine.dialect, "do_ping", counting_ping)
    assert admin.get("/api/v1/tickets").status_code == 200
    assert pings == [], "a connection in use was pinged"
    monkeypatch.setattr(gateway.db, "IDLE_PING_SECONDS", 0.0)
    assert admin.get("/api/v1/tickets").status_code == 200
    assert pings, "an idle connection was not pinged"


def test_a_down_server_still_fails_cleanly(db, monkeypatch):
    """A ping that fails replaces the connection; when connecting fails too, that error
    reaches the caller (the request's 500/503 path), not a hang or a dead connection."""
    with db.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    monkeypatch.setattr(gateway.db, "IDLE_PING_SECONDS", 0.0)

    def failing_ping(_dbapi_conn: object) -> bool:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(db.engine.dialect, "do_ping", failing_ping)
    with db.engine.connect() as conn:  # the pool replaced the connection: fresh, works
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
