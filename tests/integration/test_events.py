"""Live events over real HTTP: a real events server (relay, hub) on PostgreSQL.

Changes are made through the API (the Flask test client, committing to the
same database); subscribers read ``GET /api/v1/events`` from the events
server as any client would.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from gateway.config import Settings
from tests.integration.sse import SseClient, events_server, wait_settled
from tests.ports import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def live_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"events_port": free_port(), "events_heartbeat": 1, "events_linger_ms": 20}
    )


@pytest.fixture
def live(live_settings: Settings) -> Iterator[str]:
    with events_server(live_settings) as base:
        yield base


def _ids(messages) -> list[int]:
    return [m.id for m in messages]


def test_events_arrive_in_order_with_the_contract_fields(live, admin, agent, customer_a):
    with SseClient(live, agent.token) as stream:
        assert stream.status == 200
        assert stream.getheader("Content-Type").startswith("text/event-stream")
        created = admin.post(
            "/api/v1/tickets",
            json={"title": "Printer", "customer_email": customer_a.email, "priority": "low"},
        ).get_json()
        tid = created["id"]
        assert (
            admin.patch(
                f"/api/v1/tickets/{tid}", json={"status": "open", "priority": "high"}
            ).status_code
            == 200
        )
        reply = agent.post(f"/api/v1/tickets/{tid}/messages", json={"body": "On it"}).get_json()
        note = agent.post(
            f"/api/v1/tickets/{tid}/messages", json={"body": "psst", "internal": True}
        ).get_json()
        assert admin.delete(f"/api/v1/tickets/{tid}").status_code == 204
        assert admin.post(f"/api/v1/tickets/{tid}/restore").status_code == 200
        assert admin.post(f"/api/v1/tickets/{tid}/archive").status_code == 200
        got = stream.take(7)

    assert [m.event for m in got] == [
        "ticket.created",
        "ticket.updated",
        "message.created",
        "message.created",
        "ticket.deleted",
        "ticket.restored",
        "ticket.archived",
    ]
    ids = _ids(got)
    assert ids == list(range(ids[0], ids[0] + 7))  # dense and increasing
    for m in got:
        assert m.data["type"] == m.event
        assert m.data["ticket_id"] == tid
        assert m.data["ticket_number"] == created["number"]
        assert {"at", "actor"} <= set(m.data)
    assert got[1].data["changes"] == {"status": ["new", "open"], "priority": ["low", "high"]}
    assert got[1].data["actor"]["email"] == "admin@example.com"
    assert [got[2].data["message_id"], got[3].data["message_id"]] == [reply["id"], note["id"]]


def test_resume_replays_exactly_the_missed_events_then_goes_live(live, db, admin, make_ticket):
    ticket = make_ticket()
    tid = ticket["id"]
    wait_settled(live, db)
    with SseClient(live, admin.token) as first:
        admin.patch(f"/api/v1/tickets/{tid}", json={"priority": "high"})
        admin.patch(f"/api/v1/tickets/{tid}", json={"priority": "urgent"})
        seen = first.take(2)
    last = seen[-1].id
    # Missed while disconnected:
    for priority in ("low", "normal", "high"):
        admin.patch(f"/api/v1/tickets/{tid}", json={"priority": priority})

    with SseClient(live, admin.token, headers={"Last-Event-ID": str(last)}) as again:
        missed = again.take(3)
        assert _ids(missed) == [last + 1, last + 2, last + 3]
        assert [m.data["changes"]["priority"][1] for m in missed] == ["low", "normal", "high"]
        admin.patch(f"/api/v1/tickets/{tid}", json={"status": "open"})
        (live_one,) = again.take(1)
        assert live_one.id == last + 4
        assert again.quiet(0.5) == []

    # The query parameter does the same (for clients that cannot set headers).
    with SseClient(live, admin.token, query=f"last_event_id={last + 2}") as third:
        assert _ids(third.take(2)) == [last + 3, last + 4]
        assert third.quiet(0.3) == []


def test_reconnecting_under_a_stream_of_changes_misses_nothing_and_repeats_nothing(
    live, admin, make_ticket
):
    """A writer keeps changing a ticket while a client drops and reconnects
    many times: the ids it receives, over all connections, are 1..N once each."""
    tid = make_ticket()["id"]
    stop = threading.Event()
    written = []

    def writer() -> None:
        priorities = ("low", "high", "urgent", "normal")  # each differs from the one before
        i = 0
        while not stop.is_set():
            i += 1
            response = admin.patch(f"/api/v1/tickets/{tid}", json={"priority": priorities[i % 4]})
            if response.status_code == 200:
                written.append(i)
            time.sleep(0.005)

    received: list[int] = []
    last: int | None = None
    thread = threading.Thread(target=writer)
    with SseClient(live, admin.token, query="last_event_id=0") as first:
        received += _ids(first.take(1))  # ticket.created
    last = received[-1]
    thread.start()
    try:
        for _ in range(8):
            headers = {"Last-Event-ID": str(last)}
            with SseClient(live, admin.token, headers=headers) as stream:
                got = stream.take(3, timeout=15)
                received += _ids(got)
                last = received[-1]
    finally:
        stop.set()
        thread.join()
    with SseClient(live, admin.token, headers={"Last-Event-ID": str(last)}) as tail:
        deadline = time.monotonic() + 15
        while len(received) < 1 + len(written) and time.monotonic() < deadline:
            msg = tail.next(1.0)
            if msg is not None:
                received.append(msg.id)
    assert received == list(range(1, 2 + len(written)))


def test_positions_follow_commit_order_not_insert_order(db, live_settings, make_ticket, admin):
    """Two transactions commit out of ``seq`` order: the stream follows the commits,
    a live subscriber gets both, and a resume after the first commit gets the second."""
    from sqlalchemy import select

    from gateway.events import Event, record_event
    from gateway.tickets.models import Ticket

    ticket_id = uuid.UUID(make_ticket()["id"])
    with (
        events_server(live_settings) as live,
        SseClient(live, admin.token, query="last_event_id=0") as stream,
    ):
        assert [m.event for m in stream.take(1)] == ["ticket.created"]
        slow = db.sessions()
        fast = db.sessions()
        try:
            t_slow = slow.get(Ticket, ticket_id)
            early = record_event(
                slow, "ticket.updated", ticket=t_slow, actor=None, changes={"x": [1, 2]}
            )
            slow.flush()  # seq allocated first ...
            t_fast = fast.get(Ticket, ticket_id)
            late = record_event(
                fast, "ticket.updated", ticket=t_fast, actor=None, changes={"x": [2, 3]}
            )
            fast.flush()
            assert early.seq < late.seq
            fast.commit()  # ... but committed second
            (first,) = stream.take(1)
            assert first.data["changes"] == {"x": [2, 3]}
            slow.commit()
            (second,) = stream.take(1)
            assert second.data["changes"] == {"x": [1, 2]}
            assert second.id == first.id + 1
        finally:
            slow.close()
            fast.close()
        with SseClient(live, admin.token, headers={"Last-Event-ID": str(first.id)}) as resumed:
            (again,) = resumed.take(1)
            assert (again.id, again.data["changes"]) == (second.id, {"x": [1, 2]})
            assert resumed.quiet(0.3) == []
    with db.engine.connect() as conn:
        rows = conn.execute(select(Event.seq, Event.position).order_by(Event.position)).all()
    positions = [p for _, p in rows]
    assert positions == list(range(1, len(rows) + 1))
    assert [s for s, _ in rows][-2:] == [late.seq, early.seq]


def test_customers_get_only_their_own_tickets_and_never_notes(
    live, db, admin, agent, customer_a, customer_b, make_ticket
):
    mine = make_ticket(customer_email=customer_a.email, title="Alice's")
    theirs = make_ticket(customer_email=customer_b.email, title="Bob's")
    wait_settled(live, db)
    with (
        SseClient(live, customer_a.token) as alice,
        SseClient(live, customer_b.token) as bob,
        SseClient(live, agent.token) as staff,
    ):
        for ticket in (mine, theirs):
            tid = ticket["id"]
            agent.post(f"/api/v1/tickets/{tid}/messages", json={"body": "secret", "internal": True})
            agent.post(f"/api/v1/tickets/{tid}/messages", json={"body": "Hello"})
            admin.patch(f"/api/v1/tickets/{tid}", json={"status": "pending"})
        staff_view = staff.take(6)
        alice_view = alice.take(2)
        bob_view = bob.take(2)
        assert alice.quiet(0.5) == [] and bob.quiet(0.1) == []

    assert sum(1 for m in staff_view if m.event == "message.created") == 4
    for view, ticket in ((alice_view, mine), (bob_view, theirs)):
        assert {m.data["ticket_id"] for m in view} == {ticket["id"]}
        assert [m.event for m in view] == ["message.created", "ticket.updated"]
    notes = {m.data["message_id"] for m in staff_view if m.event == "message.created"}
    assert alice_view[0].data["message_id"] in notes  # the public reply ...
    # ... and never the note: replaying everything shows the same.
    with SseClient(live, customer_a.token, query="last_event_id=0") as replay:
        everything = replay.take(3)  # ticket.created, the reply, the status change
        assert replay.quiet(0.5) == []
    assert {m.data["ticket_id"] for m in everything} == {mine["id"]}
    assert [m.event for m in everything] == ["ticket.created", "message.created", "ticket.updated"]


def test_ticket_id_narrows_the_stream_and_hides_other_customers_tickets(
    live, db, admin, customer_a, customer_b, make_ticket
):
    mine = make_ticket(customer_email=customer_a.email)
    other = make_ticket(customer_email=customer_b.email)
    wait_settled(live, db)
    with SseClient(live, admin.token, query=f"ticket_id={mine['id']}") as one:
        admin.patch(f"/api/v1/tickets/{other['id']}", json={"priority": "high"})
        admin.patch(f"/api/v1/tickets/{mine['id']}", json={"priority": "urgent"})
        (only,) = one.take(1)
        assert only.data["ticket_id"] == mine["id"]
    with SseClient(live, customer_a.token, query=f"ticket_id={mine['number']}") as by_number:
        assert by_number.status == 200
    for ref in (other["id"], str(other["number"]), str(uuid.uuid4()), "nonsense"):
        with SseClient(live, customer_a.token, query=f"ticket_id={ref}") as refused:
            assert refused.status == 404
            assert refused.getheader("Content-Type") == "application/problem+json"
            assert refused.json()["type"].endswith("/problems/not-found")


@pytest.mark.parametrize(
    ("token", "query", "headers", "status", "slug"),
    [
        (None, "", {}, 401, "unauthorized"),
        ("sg_" + "x" * 40, "", {}, 401, "unauthorized"),
        ("AGENT", "", {"Last-Event-ID": "abc"}, 422, "validation-error"),
        ("AGENT", "last_event_id=-1", {}, 422, "validation-error"),
        ("AGENT", "since=3", {}, 422, "validation-error"),
    ],
)
def test_refusals_are_problems(live, agent, token, query, headers, status, slug):
    token = agent.token if token == "AGENT" else token
    with SseClient(live, token, query=query, headers=headers) as refused:
        assert refused.status == status
        assert refused.getheader("Content-Type") == "application/problem+json"
        body = refused.json()
    assert body["type"].endswith(f"/problems/{slug}")
    assert body["status"] == status
    if status == 401:
        assert refused.getheader("WWW-Authenticate").startswith("Bearer")


def test_an_id_from_the_future_starts_live_instead_of_skipping(live, db, admin, make_ticket):
    tid = make_ticket()["id"]
    wait_settled(live, db)
    with SseClient(live, admin.token, headers={"Last-Event-ID": "999999"}) as stream:
        admin.patch(f"/api/v1/tickets/{tid}", json={"priority": "high"})
        (got,) = stream.take(1)
        assert got.event == "ticket.updated"


def test_idle_streams_get_heartbeat_comments(live, agent):
    with SseClient(live, agent.token) as stream:
        started = time.monotonic()
        beat = stream.next(5, comments=True)
        while beat is not None and beat.comment == "connected":
            beat = stream.next(5, comments=True)
    assert beat is not None and beat.comment == "keep-alive"
    assert time.monotonic() - started < 3  # SUPPORTGATE_EVENTS_HEARTBEAT=1 here


def test_heartbeat_setting_respects_the_contract():
    from pydantic import ValidationError

    assert Settings(_env_file=None).events_heartbeat <= 15  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(events_heartbeat=16, _env_file=None)  # type: ignore[call-arg]


def test_two_events_processes_behind_one_redis_both_deliver(live_settings, admin, make_ticket):
    """A change reaches subscribers of every events process: one relay publishes
    (they queue on the relay lock), every process hears it on the channel."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis unreachable: {exc}")
    channel = f"supportgate:test:{uuid.uuid4().hex}"
    one = live_settings.model_copy(update={"redis_url": REDIS_URL})
    two = one.model_copy(update={"events_port": free_port()})
    tid = make_ticket()["id"]
    with (
        events_server(one, channel=channel) as base_one,
        events_server(two, channel=channel) as base_two,
        SseClient(base_one, admin.token, query="last_event_id=0") as a,
        SseClient(base_two, admin.token, query="last_event_id=0") as b,
    ):
        for priority in ("high", "urgent", "low"):
            admin.patch(f"/api/v1/tickets/{tid}", json={"priority": priority})
        got_a, got_b = a.take(4), b.take(4)
        assert _ids(got_a) == _ids(got_b) == [1, 2, 3, 4]
        assert [m.data for m in got_a] == [m.data for m in got_b]
        assert a.quiet(0.3) == [] and b.quiet(0.1) == []


def test_the_api_redirects_to_the_stream_with_a_grant(
    live, settings, db, agent, customer_a, customer_b, make_ticket
):
    """``GET /api/v1/events`` on the API: 307 to the events server with a stream
    grant in place of the bearer token (dropped by clients across ports)."""
    from urllib.parse import parse_qs, urlsplit

    mine = make_ticket(customer_email=customer_a.email)
    other = make_ticket(customer_email=customer_b.email)
    wait_settled(live, db)
    redirected = customer_a.get(
        f"/api/v1/events?ticket_id={mine['number']}", headers={"Last-Event-ID": "0"}
    )
    assert redirected.status_code == 307
    location = urlsplit(redirected.headers["Location"])
    assert location.port == settings.events_port  # the API's app; the stream runs on `live`
    params = parse_qs(location.query)
    assert params["ticket_id"] == [mine["id"]] and params["last_event_id"] == ["0"]
    with SseClient(live, None, query=location.query) as stream:
        assert stream.status == 200
        (created,) = stream.take(1)  # replayed: the grant speaks for Alice
        assert created.data["ticket_id"] == mine["id"]
        assert stream.quiet(0.3) == []
    # Someone else's ticket is 404 on the API already, as on every ticket route.
    assert customer_a.get(f"/api/v1/events?ticket_id={other['id']}").status_code == 404
    assert agent.get("/api/v1/events?last_event_id=x").status_code == 422
    # A grant is no token: tampered, expired or revoked, it opens nothing.
    grant = params["grant"][0]
    token_id, expires, mac = grant.split(".")
    for bad in (f"{token_id}.{int(expires) + 60}.{mac}", f"{token_id}.1.{mac}", "nonsense"):
        with SseClient(live, None, query=f"grant={bad}") as refused:
            assert refused.status == 401
