from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.events import Event, OutboxTask


@pytest.fixture
def ticket(admin, customer_a):
    r = admin.post(
        "/api/v1/tickets", json={"title": "Login fails", "customer_email": customer_a.email}
    )
    return r.get_json()


def url(ticket):
    return f"/api/v1/tickets/{ticket['id']}/messages"


def test_reply_note_and_customer_message(admin, agent, customer_a, ticket, db):
    r = agent.post(url(ticket), json={"body": "Try resetting your password."})
    assert r.status_code == 201
    reply = r.get_json()
    assert reply["kind"] == "reply"
    assert reply["channel"] == "api"
    assert reply["author"]["role"] == "agent"
    assert reply["body_html"] is None
    assert reply["attachments"] == []
    note = agent.post(url(ticket), json={"body": "customer seems confused", "internal": True})
    assert note.get_json()["kind"] == "note"
    answer = customer_a.post(url(ticket), json={"body": "Still broken", "in_reply_to": reply["id"]})
    assert answer.status_code == 201
    assert answer.get_json()["kind"] == "customer"
    assert answer.get_json()["in_reply_to"] == reply["id"]

    staff_view = [m["kind"] for m in agent.get(url(ticket)).get_json()["items"]]
    assert staff_view == ["reply", "note", "customer"]
    customer_view = customer_a.get(url(ticket)).get_json()["items"]
    assert [m["kind"] for m in customer_view] == ["reply", "customer"]
    assert "confused" not in str(customer_view)
    assert admin.get(f"/api/v1/tickets/{ticket['id']}").get_json()["message_count"] == 3
    assert customer_a.get(f"/api/v1/tickets/{ticket['id']}").get_json()["message_count"] == 2

    with db.transaction() as s:
        tasks = s.scalars(select(OutboxTask).where(OutboxTask.kind == "email.reply")).all()
        # Only the public reply is to be emailed; never the note or the customer's own words.
        assert [t.payload["message_id"] for t in tasks] == [reply["id"]]
        events = s.scalars(select(Event).where(Event.type == "message.created")).all()
        assert [e.internal for e in events] == [False, True, False]


def test_markdown_and_html_are_rendered_and_sanitised(agent, ticket):
    md = agent.post(
        url(ticket), json={"body": "# Hi\n\n*there* <script>x()</script>", "format": "markdown"}
    ).get_json()
    assert "<h1>Hi</h1>" in md["body_html"]
    assert "<em>there</em>" in md["body_html"]
    assert "<script" not in md["body_html"]
    html = agent.post(
        url(ticket),
        json={
            "body": '<p onclick="evil()">Hello <b>you</b></p><script>alert(1)</script>'
            '<a href="javascript:alert(1)">x</a><img src="https://x/y.png">',
            "format": "html",
        },
    ).get_json()
    assert "onclick" not in html["body_html"]
    assert "<script" not in html["body_html"]
    assert "javascript:" not in html["body_html"]
    assert "<b>you</b>" in html["body_html"]
    assert html["body_text"].startswith("Hello you")
    assert "alert" not in html["body_text"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"body": ""}, "body"),
        ({"body": "   \n "}, "body"),
        ({"body": "<p> </p>", "format": "html"}, "body"),
        ({"body": "x" * 200_001}, "body"),
        ({"body": "hi", "format": "rtf"}, "format"),
        ({"body": "hi", "in_reply_to": "00000000-0000-0000-0000-000000000000"}, "in_reply_to"),
        ({"body": "hi", "in_reply_to": "not-a-uuid"}, "in_reply_to"),
        ({"body": "hi", "kind": "system"}, "kind"),
        ({"body": "hi", "author_id": "00000000-0000-0000-0000-000000000000"}, "author_id"),
    ],
)
def test_message_validation(agent, ticket, body, field):
    r = agent.post(url(ticket), json=body)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"][0]["field"] == field


def test_in_reply_to_must_be_on_the_same_ticket(agent, ticket, make_ticket):
    other = make_ticket()
    m = agent.post(url(other), json={"body": "elsewhere"}).get_json()
    r = agent.post(url(ticket), json={"body": "hi", "in_reply_to": m["id"]})
    assert r.status_code == 422


def test_customer_cannot_write_notes_or_reply_to_notes(agent, customer_a, ticket):
    note = agent.post(url(ticket), json={"body": "internal", "internal": True}).get_json()
    r = customer_a.post(url(ticket), json={"body": "hi", "internal": True})
    assert r.status_code == 422
    r = customer_a.post(url(ticket), json={"body": "hi", "in_reply_to": note["id"]})
    assert r.status_code == 422


def test_customer_message_reopens_solved_and_is_refused_on_closed(admin, customer_a, ticket):
    turl = f"/api/v1/tickets/{ticket['id']}"
    admin.patch(turl, json={"status": "solved"})
    assert customer_a.post(url(ticket), json={"body": "not fixed"}).status_code == 201
    assert admin.get(turl).get_json()["status"] == "open"
    admin.patch(turl, json={"status": "closed"})
    r = customer_a.post(url(ticket), json={"body": "again"})
    assert r.status_code == 409
    assert r.get_json()["type"].endswith("/invalid-transition")


def test_other_customer_gets_404(customer_b, ticket):
    assert customer_b.get(url(ticket)).status_code == 404
    assert customer_b.post(url(ticket), json={"body": "hi"}).status_code == 404


def test_messages_paginate_oldest_first(agent, ticket):
    ids = [agent.post(url(ticket), json={"body": f"m{i}"}).get_json()["id"] for i in range(7)]
    seen, cursor = [], None
    while True:
        q = f"{url(ticket)}?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = agent.get(q).get_json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids
    assert agent.get(f"{url(ticket)}?cursor=garbage").status_code == 422
