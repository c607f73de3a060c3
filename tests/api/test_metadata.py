from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.events import Event


def test_metadata_put_get_delete_with_history_and_events(admin, make_ticket, db):
    t = make_ticket()
    base = f"/api/v1/tickets/{t['id']}/metadata"
    r = admin.put(f"{base}/crm.id", json={"value": "A-17"})
    assert r.status_code == 200
    assert r.get_json() == {"crm.id": "A-17"}
    admin.put(f"{base}/crm.id", json={"value": "A-18"})
    admin.put(f"{base}/plan", json={"value": "gold"})
    assert admin.get(base).get_json() == {"crm.id": "A-18", "plan": "gold"}
    assert admin.get(f"/api/v1/tickets/{t['id']}").get_json()["metadata"]["plan"] == "gold"
    assert admin.delete(f"{base}/plan").status_code == 204
    assert admin.delete(f"{base}/plan").status_code == 404
    assert admin.get(base).get_json() == {"crm.id": "A-18"}
    history = admin.get(f"/api/v1/tickets/{t['id']}/history").get_json()["items"]
    trail = [(h["field"], h["old_value"], h["new_value"]) for h in history if h["field"]]
    assert trail == [
        ("metadata.crm.id", None, "A-17"),
        ("metadata.crm.id", "A-17", "A-18"),
        ("metadata.plan", None, "gold"),
        ("metadata.plan", "gold", None),
    ]
    with db.transaction() as s:
        changes = [
            e.data["changes"]
            for e in s.scalars(
                select(Event).where(Event.type == "ticket.updated").order_by(Event.seq)
            )
        ]
    assert changes[-1] == {"metadata.plan": ["gold", None]}


@pytest.mark.parametrize(
    ("key", "body", "status"),
    [
        ("Upper", {"value": "x"}, 422),
        ("k" * 65, {"value": "x"}, 422),
        ("sp%20ace", {"value": "x"}, 422),
        ("ok", {"value": "x" * 4097}, 422),
        ("ok", {"value": 5}, 422),
        ("ok", {}, 422),
        ("ok", {"value": "x" * 4096}, 200),
        ("k" * 64, {"value": ""}, 200),
    ],
)
def test_metadata_validation(admin, make_ticket, key, body, status):
    t = make_ticket()
    r = admin.put(f"/api/v1/tickets/{t['id']}/metadata/{key}", json=body)
    assert r.status_code == status, r.get_json()


def test_metadata_is_staff_only_to_write(customer_a, admin):
    t = customer_a.post("/api/v1/tickets", json={"title": "mine"}).get_json()
    base = f"/api/v1/tickets/{t['id']}/metadata"
    assert customer_a.put(f"{base}/k", json={"value": "v"}).status_code == 403
    admin.put(f"{base}/k", json={"value": "v"})
    assert customer_a.get(base).get_json() == {"k": "v"}


def test_tags_add_remove_normalise_and_count(admin, agent, make_ticket):
    a, b = make_ticket(), make_ticket()
    r = agent.put(f"/api/v1/tickets/{a['id']}/tags/Needs%20Review")
    assert r.status_code == 200
    assert r.get_json()["tags"] == ["needs-review"]
    assert r.headers["ETag"] == f'"{r.get_json()["version"]}"'
    agent.put(f"/api/v1/tickets/{a['id']}/tags/vip")
    agent.put(f"/api/v1/tickets/{b['id']}/tags/VIP")
    again = agent.put(f"/api/v1/tickets/{b['id']}/tags/vip").get_json()
    assert again["tags"] == ["vip"]
    assert agent.get("/api/v1/tags").get_json()["items"] == [
        {"tag": "vip", "count": 2},
        {"tag": "needs-review", "count": 1},
    ]
    assert [
        t["id"] for t in agent.get("/api/v1/tickets?tag=vip&tag=needs-review").get_json()["items"]
    ] == [a["id"]]
    assert agent.delete(f"/api/v1/tickets/{a['id']}/tags/vip").get_json()["tags"] == [
        "needs-review"
    ]
    assert agent.delete(f"/api/v1/tickets/{a['id']}/tags/vip").status_code == 404
    assert agent.put(f"/api/v1/tickets/{a['id']}/tags/a%2Cb").status_code == 422
    history = admin.get(f"/api/v1/tickets/{a['id']}/history").get_json()["items"]
    assert [h["new_value"] for h in history if h["field"] == "tags"] == [
        ["needs-review"],
        ["needs-review", "vip"],
        ["needs-review"],
    ]


def test_tags_of_deleted_tickets_are_not_counted(admin, make_ticket):
    t = make_ticket(tags=["gone"])
    admin.delete(f"/api/v1/tickets/{t['id']}")
    assert admin.get("/api/v1/tags").get_json()["items"] == []


def test_custom_field_definitions_crud_and_validation(admin, agent, make_ticket):
    r = admin.post(
        "/api/v1/custom-fields",
        json={"key": "plan", "label": "Plan", "type": "enum", "options": ["free", "gold"]},
    )
    assert r.status_code == 201
    assert r.get_json()["options"] == ["free", "gold"]
    for body in ({"key": "plan", "label": "Again", "type": "text"},):
        assert admin.post("/api/v1/custom-fields", json=body).status_code == 409
    for body in (
        {"key": "x", "label": "X", "type": "enum"},
        {"key": "x", "label": "X", "type": "enum", "options": ["a", "a"]},
        {"key": "x", "label": "X", "type": "text", "options": ["a"]},
        {"key": "x", "label": "X", "type": "colour"},
        {"key": "X!", "label": "X", "type": "text"},
        {"key": "x", "label": "", "type": "text"},
    ):
        assert admin.post("/api/v1/custom-fields", json=body).status_code == 422, body
    assert (
        agent.post(
            "/api/v1/custom-fields", json={"key": "y", "label": "Y", "type": "text"}
        ).status_code
        == 403
    )
    for key, kind in (
        ("seats", "number"),
        ("beta", "boolean"),
        ("renewal", "date"),
        ("note", "text"),
    ):
        assert (
            admin.post(
                "/api/v1/custom-fields", json={"key": key, "label": key.title(), "type": kind}
            ).status_code
            == 201
        )
    assert [f["key"] for f in agent.get("/api/v1/custom-fields").get_json()["items"]] == [
        "beta",
        "note",
        "plan",
        "renewal",
        "seats",
    ]

    t = make_ticket(
        custom_fields={
            "plan": "gold",
            "seats": 3,
            "beta": True,
            "renewal": "2027-01-31",
            "note": "hi",
        }
    )
    assert t["custom_fields"]["renewal"] == "2027-01-31"
    url = f"/api/v1/tickets/{t['id']}"
    for bad, field in (
        ({"seats": "3"}, "seats"),
        ({"beta": "yes"}, "beta"),
        ({"renewal": "31/01/2027"}, "renewal"),
        ({"plan": "silver"}, "plan"),
        ({"nope": 1}, "nope"),
        ({"note": 5}, "note"),
        ({"seats": True}, "seats"),
    ):
        r = admin.patch(url, json={"custom_fields": bad})
        assert r.status_code == 422, bad
        assert r.get_json()["errors"][0]["field"] == f"custom_fields.{field}"

    for query in (
        "cf.plan=gold",
        "cf.seats=3",
        "cf.beta=true",
        "cf.renewal=2027-01-31",
        "cf.note=hi",
        "cf.plan=gold&cf.seats=3&status=new",
    ):
        items = admin.get(f"/api/v1/tickets?{query}").get_json()["items"]
        assert [i["id"] for i in items] == [t["id"]], query
    assert admin.get("/api/v1/tickets?cf.beta=false").get_json()["items"] == []
    assert admin.get("/api/v1/tickets?cf.seats=lots").status_code == 422

    # Required fields are enforced on staff writes.
    assert admin.patch("/api/v1/custom-fields/note", json={"required": True}).status_code == 200
    r = admin.post("/api/v1/tickets", json={"title": "no note"})
    assert r.status_code == 422
    assert r.get_json()["errors"][0]["field"] == "custom_fields.note"

    # Options of an enum can change; type is fixed.
    assert (
        admin.patch(
            "/api/v1/custom-fields/plan", json={"options": ["free", "gold", "team"]}
        ).status_code
        == 200
    )
    assert admin.patch("/api/v1/custom-fields/plan", json={"type": "text"}).status_code == 422
    assert admin.patch("/api/v1/custom-fields/seats", json={"options": ["a"]}).status_code == 422

    # Removing a definition keeps values and history readable, refuses new values.
    assert admin.delete("/api/v1/custom-fields/seats").status_code == 204
    assert admin.delete("/api/v1/custom-fields/seats").status_code == 404
    assert admin.get(url).get_json()["custom_fields"]["seats"] == 3
    r = admin.patch(url, json={"custom_fields": {"seats": 4}})
    assert r.status_code == 422
    r = admin.patch(url, json={"custom_fields": {"seats": None}})
    assert r.status_code == 200
    assert "seats" not in r.get_json()["custom_fields"]
    history = admin.get(f"{url}/history").get_json()["items"]
    assert history[-1]["old_value"]["seats"] == 3


def test_meta_statuses_and_priorities(agent):
    statuses = agent.get("/api/v1/meta/statuses").get_json()["items"]
    assert [s["name"] for s in statuses] == [
        "new",
        "open",
        "pending",
        "on_hold",
        "solved",
        "closed",
    ]
    assert {s["name"]: s["transitions"] for s in statuses}["solved"] == ["closed", "open"]
    priorities = agent.get("/api/v1/meta/priorities").get_json()["items"]
    assert [p["name"] for p in priorities] == ["low", "normal", "high", "urgent"]
    assert [p["name"] for p in priorities if p["default"]] == ["normal"]


def test_definition_and_policy_changes_are_audited(admin, db):
    from sqlalchemy import select

    from gateway.audit import AuditEntry

    admin.post("/api/v1/custom-fields", json={"key": "tier", "label": "Tier", "type": "text"})
    admin.patch("/api/v1/custom-fields/tier", json={"label": "Support tier"})
    admin.delete("/api/v1/custom-fields/tier")
    admin.put("/api/v1/policies/deletion", json={"purge_deleted_after_days": 9})
    with db.transaction() as s:
        entries = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [(e.action, e.target_id) for e in entries] == [
            ("custom_field.created", "tier"),
            ("custom_field.updated", "tier"),
            ("custom_field.removed", "tier"),
            ("policy.deletion.updated", "deletion"),
        ]
        assert entries[1].details == {"label": "Support tier"}
        assert entries[3].details["new"]["purge_deleted_after_days"] == 9
        assert all(str(e.actor_id) == admin.id for e in entries)


def _docs(db) -> dict[str, dict[str, str]]:
    """Each ticket's metadata document, as the database holds it (migration 0010)."""
    from sqlalchemy import text

    with db.transaction() as s:
        rows = s.execute(text("SELECT id, metadata_doc FROM tickets")).all()
    docs = {}
    for ticket_id, doc in rows:
        if isinstance(doc, str):  # SQLite hands JSON back as text
            import json

            doc = json.loads(doc)
        docs[str(ticket_id).replace("-", "")] = doc
    return docs


def _doc_of(db, ticket: dict) -> dict[str, str]:
    return _docs(db)[ticket["id"].replace("-", "")]


def _check_doc_follows_the_rows(client, headers, db) -> None:
    r = client.post(
        "/api/v1/tickets",
        headers=headers,
        json={"title": "doc", "metadata": {"crm.id": "A-1", "plan": "gold", "q": 'say "hi"'}},
    )
    t = r.get_json()
    base = f"/api/v1/tickets/{t['id']}/metadata"
    assert _doc_of(db, t) == {"crm.id": "A-1", "plan": "gold", "q": 'say "hi"'}
    client.put(f"{base}/plan", headers=headers, json={"value": "silver"})
    client.put(f"{base}/region", headers=headers, json={"value": "ëu-1"})
    assert client.delete(f"{base}/crm.id", headers=headers).status_code == 204
    expected = {"plan": "silver", "q": 'say "hi"', "region": "ëu-1"}
    assert client.get(base, headers=headers).get_json() == expected
    assert _doc_of(db, t) == expected
    # Any writer of the rows, not only the API's services: the triggers keep it.
    from sqlalchemy import text

    with db.transaction() as s:
        s.execute(text("UPDATE ticket_metadata SET key = 'tier' WHERE key = 'plan'"))
    expected = {"q": 'say "hi"', "region": "ëu-1", "tier": "silver"}
    assert client.get(base, headers=headers).get_json() == expected
    assert _doc_of(db, t) == expected
    other = client.post("/api/v1/tickets", headers=headers, json={"title": "none"}).get_json()
    assert _doc_of(db, other) == {}


def test_metadata_document_follows_the_rows_on_postgresql(client, admin, db):
    _check_doc_follows_the_rows(client, {"Authorization": f"Bearer {admin.token}"}, db)


def test_metadata_document_follows_the_rows_on_sqlite(sqlite_app):
    from gateway.users.services import add_user_cli

    app, db = sqlite_app
    with db.transaction() as s:
        _, token = add_user_cli(s, "root@example.com", "admin", "Root", None)
    _check_doc_follows_the_rows(app.test_client(), {"Authorization": f"Bearer {token}"}, db)


def test_purging_a_ticket_with_metadata_leaves_the_others_documents(admin, make_ticket, db):
    keep = make_ticket(metadata={"a": "1"})
    gone = make_ticket(metadata={"a": "1", "b": "2"})
    with db.transaction() as s:
        from sqlalchemy import text

        s.execute(text("DELETE FROM tickets WHERE id = :id"), {"id": gone["id"]})
    assert _docs(db) == {keep["id"].replace("-", ""): {"a": "1"}}


def _exact_values_round_trip(client, headers) -> None:
    """Custom-field numbers beyond 64 bits, fractions and non-ASCII text come back exactly,
    by id and in a list (JSON columns decoded by gateway.jsoncodec, answers by orjson)."""
    assert (
        client.post(
            "/api/v1/custom-fields",
            json={"key": "seats", "label": "Seats", "type": "number"},
            headers=headers,
        ).status_code
        == 201
    )
    big = 2**70 + 1
    for seats in (big, -big, 0.1, 12345678901234567):
        r = client.post(
            "/api/v1/tickets",
            json={
                "title": "Ünïcödé ✓ 日本",
                "customer_email": "exact@example.com",
                "custom_fields": {"seats": seats},
                "metadata": {"note": "crème brûlée"},
            },
            headers=headers,
        )
        assert r.status_code == 201, r.get_json()
        one = client.get(f"/api/v1/tickets/{r.get_json()['id']}", headers=headers)
        listed = client.get("/api/v1/tickets?limit=1", headers=headers).get_json()["items"][0]
        for doc in (one.get_json(), listed):
            got = doc["custom_fields"]["seats"]
            assert got == seats and type(got) is type(seats)
            assert doc["title"] == "Ünïcödé ✓ 日本"
            assert doc["metadata"] == {"note": "crème brûlée"}
        assert str(big) in one.get_data(as_text=True) or seats != big


def test_exact_json_values_on_postgresql(client, admin):
    _exact_values_round_trip(client, {"Authorization": f"Bearer {admin.token}"})


def test_exact_json_values_on_sqlite(sqlite_app):
    from gateway.users.services import add_user_cli

    app, db = sqlite_app
    with db.transaction() as s:
        _, token = add_user_cli(s, "root@example.com", "admin", "Root", None)
    _exact_values_round_trip(app.test_client(), {"Authorization": f"Bearer {token}"})
