"""GET requests run on a :class:`gateway.db.ReadSession`: a pooled connection in a
transaction, and an ORM Session only when a view asks for one.

The hot reads (a ticket, a list, the token lookup) open no Session; a read
that needs the ORM gets one on the same transaction; writes of a read (the
token's ``last_used_at``) are committed; ``after_commit`` listeners run after
the data is committed; an exception rolls everything back and returns the
connection to the pool. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, text

from gateway.db import Database, ReadSession
from tests.conftest import Caller


class CountingSessions:
    """Wraps a Database's session factory, counting the Sessions it makes."""

    def __init__(self, db: Database) -> None:
        self.factory = db.sessions
        self.made = 0

    def __call__(self, **kw: Any) -> Any:
        self.made += 1
        return self.factory(**kw)


@pytest.fixture
def counted(db: Database, monkeypatch: pytest.MonkeyPatch) -> CountingSessions:
    counter = CountingSessions(db)
    monkeypatch.setattr(db, "sessions", counter)
    return counter


def test_ticket_reads_and_lists_open_no_orm_session(
    admin: Caller, make_ticket: Any, counted: CountingSessions
) -> None:
    assert (
        admin.post(
            "/api/v1/custom-fields", json={"key": "seats", "label": "Seats", "type": "number"}
        ).status_code
        == 201
    )
    ticket = make_ticket(tags=["x"], metadata={"plan": "gold"}, custom_fields={"seats": 3})
    counted.made = 0
    for path in (
        f"/api/v1/tickets/{ticket['id']}",
        f"/api/v1/tickets/{ticket['number']}",
        "/api/v1/tickets",
        "/api/v1/tickets?status=new&priority=normal",
        "/api/v1/tickets?tag=x",
        "/api/v1/tickets?metadata.plan=gold",
        "/api/v1/tickets?cf.seats=3",
        "/api/v1/tickets?cf.seats=3&metadata.plan=gold",
    ):
        response = admin.get(path)
        assert response.status_code == 200, (path, response.get_json())
        assert [t["id"] for t in response.get_json().get("items", [response.get_json()])] == [
            ticket["id"]
        ], path
    assert admin.get("/api/v1/tickets?cf.seats=lots").status_code == 422
    assert counted.made == 0
    # A write still runs in an ORM Session (Database.transaction).
    assert (
        admin.patch(
            f"/api/v1/tickets/{ticket['id']}",
            json={"priority": "high"},
            headers={"If-Match": f'"{ticket["version"]}"'},
        ).status_code
        == 200
    )
    assert counted.made >= 1


def test_a_read_that_needs_the_orm_gets_one_session(
    admin: Caller, make_ticket: Any, counted: CountingSessions
) -> None:
    ticket = make_ticket()
    posted = admin.post(f"/api/v1/tickets/{ticket['id']}/messages", json={"body": "Hello"})
    assert posted.status_code == 201, posted.get_json()
    counted.made = 0
    response = admin.get(f"/api/v1/tickets/{ticket['id']}/messages")
    assert response.status_code == 200
    assert [m["body_text"] for m in response.get_json()["items"]][-1] == "Hello"
    assert counted.made == 1


def test_a_read_commits_the_token_touch(admin: Caller, db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET last_used_at = NULL"))
    assert admin.get("/api/v1/tickets").status_code == 200
    with db.engine.connect() as conn:
        used = conn.execute(text("SELECT last_used_at FROM api_tokens")).scalars().all()
    assert used and all(value is not None for value in used)


def test_an_unknown_ticket_is_a_404_and_releases_the_connection(
    admin: Caller, db: Database
) -> None:
    response = admin.get("/api/v1/tickets/999999")
    assert response.status_code == 404
    assert response.get_json()["status"] == 404
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.fixture(params=["postgresql", "sqlite"])
def any_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Database]:
    if request.param == "postgresql":
        db: Database = request.getfixturevalue("db")
        owned = False
    else:
        db = Database(f"sqlite:///{tmp_path / 'read.db'}")
        owned = True
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS read_session_probe"))
        conn.execute(text("CREATE TABLE read_session_probe (x integer)"))
    yield db
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE read_session_probe"))
    if owned:
        db.dispose()


def _count(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM read_session_probe")).scalar_one())


def test_connection_and_orm_writes_commit_before_after_commit_listeners(
    any_db: Database,
) -> None:
    seen: list[int] = []

    def listener(_session: Any) -> None:
        seen.append(_count(any_db))

    event.listen(any_db.sessions, "after_commit", listener)
    try:
        with any_db.read_transaction() as session:
            assert isinstance(session, ReadSession)
            session.connection().execute(text("INSERT INTO read_session_probe VALUES (1)"))
            assert session.orm_session is None
            session.execute(text("INSERT INTO read_session_probe VALUES (2)"))
            assert session.orm_session is not None
            assert session.get_bind().dialect.name == any_db.dialect
    finally:
        event.remove(any_db.sessions, "after_commit", listener)
    assert seen == [2]  # the listener ran once, after both rows were committed
    assert _count(any_db) == 2


def test_an_exception_rolls_back_both_ways_of_writing(any_db: Database) -> None:
    with pytest.raises(RuntimeError), any_db.read_transaction() as session:
        session.connection().execute(text("INSERT INTO read_session_probe VALUES (1)"))
        session.execute(text("INSERT INTO read_session_probe VALUES (2)"))
        raise RuntimeError("view failed")
    assert _count(any_db) == 0
    with pytest.raises(RuntimeError), any_db.read_transaction() as session:
        session.connection().execute(text("INSERT INTO read_session_probe VALUES (3)"))
        raise RuntimeError("view failed before any ORM use")
    assert _count(any_db) == 0
    assert any_db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_reads_through_the_sqlite_app_open_no_session(
    sqlite_app: tuple[Flask, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, db = sqlite_app
    from gateway.users.services import add_user_cli

    with db.transaction() as session:
        _, secret = add_user_cli(session, "root@example.com", "admin", "Root", None)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {secret}"}
    created = client.post(
        "/api/v1/tickets", json={"title": "T", "description": "D"}, headers=headers
    )
    assert created.status_code == 201
    counter = CountingSessions(db)
    monkeypatch.setattr(db, "sessions", counter)
    assert (
        client.get(f"/api/v1/tickets/{created.get_json()['id']}", headers=headers).status_code
        == 200
    )
    assert client.get("/api/v1/tickets", headers=headers).status_code == 200
    assert client.get("/api/v1/tickets?cf.seats=3", headers=headers).status_code == 200
    assert counter.made == 0
