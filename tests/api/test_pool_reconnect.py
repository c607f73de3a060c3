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


@pytest.mark.parametrize("path", ["/api/v1/tickets", "/api/v1/tickets/{id}", "/api/v1/users"])
def test_a_connection_lost_mid_request_is_a_503_and_the_next_request_works(
    admin, make_ticket, db, monkeypatch, path
):
    """The server ends the request's own backend just before its statement: that request is
    answered 503 with Retry-After (a restart is not a bug), the pool drops the connection, and
    the next request is served. Covers both the driver's fast path and SQLAlchemy's."""
    ticket = make_ticket()
    path = path.format(id=ticket["id"])
    assert admin.get(path).status_code == 200
    dsn = db.url.replace("postgresql+psycopg://", "postgresql://")
    original = psycopg.Cursor.execute
    killed: list[int] = []

    def execute_after_a_restart(self: psycopg.Cursor, query: object, *a: object, **k: object):
        text = query if isinstance(query, str) else str(query)
        if not killed and "api_tokens" not in text and text.lstrip().upper().startswith("SELECT"):
            pid = self.connection.info.backend_pid
            killed.append(pid)  # first: the statements below go through this function too
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", [pid])
                for _ in range(100):
                    gone = other.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
                    ).fetchone()
                    if gone and gone[0] == 0:
                        break
                    time.sleep(0.02)
        return original(self, query, *a, **k)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute_after_a_restart)
    response = admin.get(path)
    assert killed, "the request ran no statement after authenticating"
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Retry-After"] == "1"
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["type"].endswith("/service-unavailable") and "Traceback" not in str(body)
    monkeypatch.setattr(psycopg.Cursor, "execute", original)
    assert admin.get(path).status_code == 200


def test_an_unreachable_database_is_a_503(settings, monkeypatch):
    from web.app import create_app

    down = Database("postgresql+psycopg://postgres@127.0.0.1:9/nowhere?connect_timeout=2")
    app = create_app(settings, database=down)
    try:
        response = app.test_client().get(
            "/api/v1/tickets", headers={"Authorization": "Bearer sg_whatever"}
        )
    finally:
        down.dispose()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["status"] == 503
