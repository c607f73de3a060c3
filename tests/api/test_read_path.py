"""The Core read path of GET /tickets and GET /tickets/{ref} answers byte for byte
what the ORM path (``list_tickets`` / ``get_ticket`` + ``tickets_out``) answers.

On PostgreSQL and on SQLite; for an admin, an agent and two customers; for
tickets with and without tags, metadata, custom fields, assignee, messages
and internal notes, archived and deleted; for every sort, cursor pages and
the filters.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, json
from flask.testing import FlaskClient

from gateway.db import Database
from gateway.errors import GatewayError
from gateway.permissions import Principal
from gateway.tickets.listing import ExtraFilters, list_tickets
from gateway.tickets.schemas import TicketListQuery
from gateway.tickets.services import get_ticket, tickets_out
from gateway.users.services import add_user_cli, find_user_by_email
from web.spec import parse_query

ROLES = {
    "admin": ("admin", "root@example.com", "Root Admin"),
    "agent": ("agent", "agent@example.com", "Alan Agent"),
    "alice": ("customer", "alice@example.org", "Alice"),
    "bob": ("customer", "bob@example.org", "Bob Ünicode"),
}

LIST_QUERIES = [
    "",
    "include_archived=true",
    "include_deleted=true",
    "include_archived=true&include_deleted=true",
    "limit=2",
    "sort=-created_at&limit=3",
    "sort=created_at&limit=4&include_archived=true",
    "sort=priority&limit=2",
    "sort=-priority&limit=3",
    "sort=status&limit=2&include_archived=true&include_deleted=true",
    "sort=-status&limit=3",
    "sort=number&limit=3",
    "sort=-number&limit=2&include_archived=true",
    "sort=-updated_at&limit=1",
    "tag=x",
    "tag=x&tag=zeta",
    "status=new,open",
    "priority=high,urgent",
    "assignee=none",
    "assignee=me",
    "metadata.plan=gold",
    "cf.size=3",
    "cf.flag=true",
    "q=printer",
    "q=smokes",
    "customer=alice@example.org",
]


class World:
    def __init__(self, app: Flask, db: Database) -> None:
        self.app, self.db = app, db
        self.client: FlaskClient = app.test_client()
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        for who, (role, email, name) in ROLES.items():
            with db.transaction() as s:
                user, secret = add_user_cli(s, email, role, name, None)
                self.ids[who] = str(user.id)
            self.tokens[who] = secret

    def call(self, who: str, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        response = self.client.open(path, method=method, json=body, headers=headers)
        assert response.status_code < 300, (path, response.get_json())
        return response.get_json()

    def populate(self) -> list[dict[str, Any]]:
        for key, kind in (
            ("size", "number"),
            ("flag", "boolean"),
            ("due", "date"),
            ("note", "text"),
        ):
            self.call(
                "admin", "POST", "/api/v1/custom-fields", {"key": key, "label": key, "type": kind}
            )
        made = []
        made.append(
            self.call(
                "admin",
                "POST",
                "/api/v1/tickets",
                {
                    "title": "Printer on fire",
                    "description": 'It smokes. \u00e9\u00e8 "quoted" <b>',
                    "priority": "urgent",
                    "tags": ["zeta", "Alpha", "x", "\u00e4-umlaut", "b_2", "b-1", "B"],
                    "metadata": {"zz": "last", "aa": 'first \u00fc "q"', "plan": "gold", "m.k": ""},
                    "custom_fields": {"size": 3, "flag": True, "due": "2026-01-02", "note": "n"},
                    "assignee_id": self.ids["agent"],
                    "customer_email": "alice@example.org",
                },
            )
        )
        made.append(
            self.call(
                "admin",
                "POST",
                "/api/v1/tickets",
                {"title": "Bare", "description": "", "customer_email": "alice@example.org"},
            )
        )
        made.append(
            self.call(
                "admin",
                "POST",
                "/api/v1/tickets",
                {
                    "title": "Bob's",
                    "priority": "high",
                    "tags": ["x"],
                    "custom_fields": {"size": 2.5, "flag": False},
                    "assignee_id": self.ids["admin"],
                    "customer_email": "bob@example.org",
                },
            )
        )
        made.append(self.call("alice", "POST", "/api/v1/tickets", {"title": "From Alice"}))
        made.append(
            self.call(
                "admin",
                "POST",
                "/api/v1/tickets",
                {"title": "To archive", "tags": ["x"], "customer_email": "alice@example.org"},
            )
        )
        made.append(
            self.call(
                "admin",
                "POST",
                "/api/v1/tickets",
                {
                    "title": "To delete",
                    "metadata": {"plan": "gold"},
                    "customer_email": "alice@example.org",
                },
            )
        )
        made.append(
            self.call(
                "admin",
                "POST",
                "/api/v1/tickets",
                {"title": "Archived, then deleted", "customer_email": "bob@example.org"},
            )
        )
        first = made[0]["id"]
        self.call("agent", "POST", f"/api/v1/tickets/{first}/messages", {"body": "public"})
        self.call(
            "agent", "POST", f"/api/v1/tickets/{first}/messages", {"body": "note", "internal": True}
        )
        self.call("alice", "POST", f"/api/v1/tickets/{first}/messages", {"body": "thanks"})
        self.call("admin", "PATCH", f"/api/v1/tickets/{made[2]['id']}", {"status": "open"})
        self.call("admin", "POST", f"/api/v1/tickets/{made[4]['id']}/archive")
        self.call("admin", "DELETE", f"/api/v1/tickets/{made[5]['id']}")
        self.call("admin", "POST", f"/api/v1/tickets/{made[6]['id']}/archive")
        self.call("admin", "DELETE", f"/api/v1/tickets/{made[6]['id']}")
        return made

    def principal(self, session: Any, who: str) -> Principal:
        user = find_user_by_email(session, ROLES[who][1])
        assert user is not None
        return Principal.of(user)

    def orm_list(self, who: str, query: str) -> tuple[int, bytes]:
        """What GET /tickets answered before the Core read path."""
        with self.app.test_request_context(f"/api/v1/tickets?{query}"):
            from flask import request

            try:
                with self.db.transaction() as s:
                    principal = self.principal(s, who)
                    q = parse_query(TicketListQuery)
                    assert isinstance(q, TicketListQuery)
                    extra = ExtraFilters.from_params(request.args.to_dict())
                    rows, cursor = list_tickets(s, principal, q, extra)
                    body = {"items": tickets_out(s, rows, principal), "next_cursor": cursor}
            except GatewayError as exc:
                return exc.status, b""
            return 200, json.dumps(body).encode()

    def orm_show(self, who: str, ref: str) -> tuple[int, bytes, str | None]:
        """What GET /tickets/{ref} answered before the Core read path."""
        with self.app.app_context():
            try:
                with self.db.transaction() as s:
                    principal = self.principal(s, who)
                    ticket = get_ticket(s, principal, ref)
                    body = tickets_out(s, [ticket], principal)[0]
                    etag = f'"{ticket.version}"'
            except GatewayError as exc:
                return exc.status, b"", None
            return 200, json.dumps(body).encode(), etag

    def get(self, who: str, path: str) -> Any:
        return self.client.get(path, headers={"Authorization": f"Bearer {self.tokens[who]}"})


@pytest.fixture(params=["postgresql", "sqlite"])
def world(request: pytest.FixtureRequest) -> Any:
    if request.param == "postgresql":
        yield World(request.getfixturevalue("app"), request.getfixturevalue("db"))
        return
    app, db = request.getfixturevalue("sqlite_app")
    yield World(app, db)


def test_lists_match_the_orm_path(world: World) -> None:
    world.populate()
    compared = 0
    for who in ROLES:
        for query in LIST_QUERIES:
            cursor: str | None = None
            for _page in range(20):
                q = query + (f"&cursor={cursor}" if cursor else "")
                response = world.get(who, f"/api/v1/tickets?{q}")
                status, expected = world.orm_list(who, q)
                assert response.status_code == status, (who, q, response.get_json())
                if status != 200:
                    break
                assert response.data == expected, (who, q)
                compared += 1
                cursor = response.get_json()["next_cursor"]
                if cursor is None:
                    break
    assert compared > 100


def test_by_id_and_number_match_the_orm_path(world: World) -> None:
    made = world.populate()
    refs = [t["id"] for t in made] + [str(t["number"]) for t in made]
    refs += ["00000000-0000-0000-0000-000000000000", "999", "not-a-ref", "1234567890"]
    found = 0
    for who in ROLES:
        for ref in refs:
            response = world.get(who, f"/api/v1/tickets/{ref}")
            status, expected, etag = world.orm_show(who, ref)
            assert response.status_code == status, (who, ref, response.get_json())
            if status == 200:
                assert response.data == expected, (who, ref)
                assert response.headers["ETag"] == etag
                found += 1
    # Admin and agent see all 7 (by id and number); Alice her 4 live ones, Bob his 1.
    assert found == 2 * (7 + 7 + 4 + 1)


def test_rows_carry_what_the_orm_path_shows(world: World) -> None:
    """A spot check of the values themselves, beyond the comparison."""
    made = world.populate()
    body = world.get("admin", f"/api/v1/tickets/{made[0]['id']}").get_json()
    assert body["tags"] == sorted(["zeta", "alpha", "x", "\u00e4-umlaut", "b_2", "b-1", "b"])
    assert list(body["metadata"]) == ["aa", "m.k", "plan", "zz"]
    assert body["custom_fields"] == {"size": 3, "flag": True, "due": "2026-01-02", "note": "n"}
    assert body["assignee"]["email"] == "agent@example.com"
    assert body["message_count"] == 3
    as_alice = world.get("alice", f"/api/v1/tickets/{made[0]['id']}").get_json()
    assert as_alice["message_count"] == 2
    bare = world.get("admin", f"/api/v1/tickets/{made[1]['id']}").get_json()
    assert (bare["tags"], bare["metadata"], bare["custom_fields"], bare["assignee"]) == (
        [],
        {},
        {},
        None,
    )


def test_by_id_is_utc_whatever_the_database_session_zone(world: World) -> None:
    """The driver's fast way gets timestamps in the session's time zone: still UTC out."""
    from sqlalchemy import text

    from gateway.tickets.services import read_ticket

    made = world.populate()
    ref = made[0]["id"]
    expected = world.get("admin", f"/api/v1/tickets/{ref}").get_json()
    with world.app.app_context(), world.db.transaction() as s:
        if world.db.dialect == "postgresql":
            s.execute(text("SET LOCAL TIME ZONE 'Asia/Kolkata'"))
        body = read_ticket(s, world.principal(s, "admin"), ref)
    assert body == expected
    assert body["created_at"].endswith("+00:00")
