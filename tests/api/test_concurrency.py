"""Concurrent writers on real PostgreSQL: numbers stay unique, lost updates are refused."""

from __future__ import annotations

import threading

from gateway.errors import PreconditionFailed
from gateway.permissions import Principal
from gateway.tickets.schemas import TicketCreate, TicketUpdate
from gateway.tickets.services import create_ticket, get_ticket, update_ticket
from gateway.users.services import find_user_by_email


def _principal(db, email):
    with db.transaction() as s:
        return Principal.of(find_user_by_email(s, email))


def test_concurrent_creates_get_unique_numbers(db, admin):
    principal = _principal(db, admin.email)
    numbers: list[int] = []
    lock = threading.Lock()

    def work():
        for _ in range(10):
            with db.transaction() as s:
                t = create_ticket(s, principal, TicketCreate(title="x"))
                number = t.number
            with lock:
                numbers.append(number)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 41))


def test_two_writers_from_the_same_version_one_wins(db, admin, make_ticket):
    principal = _principal(db, admin.email)
    ticket_id = make_ticket()["id"]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def writer(priority: str):
        try:
            with db.transaction() as s:
                t = get_ticket(s, principal, ticket_id)
                barrier.wait(timeout=5)
                update_ticket(s, principal, t, TicketUpdate(priority=priority), if_match=1)
            outcomes.append("ok")
        except PreconditionFailed:
            outcomes.append("412")

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("high", "low")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["412", "ok"]
    final = admin.get(f"/api/v1/tickets/{ticket_id}").get_json()
    assert final["version"] == 2
