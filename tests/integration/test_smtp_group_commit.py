"""Group commit at the SMTP edge: many senders, few transactions, each 250 after its commit."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, func, select

from adapters.email.smtp_server import GroupCommit
from gateway.events import OutboxTask
from gateway.inbound.models import InboundMail
from gateway.inbound.store import Received, accept_many
from gateway.tickets.models import Ticket
from tests.integration.conftest import SUPPORT, make_mail


def count(db, column) -> int:
    with db.transaction() as s:
        return s.scalar(select(func.count(column))) or 0


def test_concurrent_senders_share_commits_and_each_gets_its_own_row(mail_server, db):
    commits: list[int] = []
    listener = lambda _conn: commits.append(1)  # noqa: E731
    event.listen(db.engine, "commit", listener)
    replies: dict[str, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def client(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", mail_server.port, timeout=30) as smtp:
                barrier.wait()
                for i in range(4):
                    msg = make_mail(subject=f"sender {n} message {i}")
                    smtp.ehlo()
                    smtp.mail("alice@example.org")
                    smtp.rcpt(SUPPORT)
                    code, text = smtp.data(msg.as_bytes())
                    assert code == 250, text
                    replies[f"{n}.{i}"] = text.decode().rsplit(" ", 1)[-1]
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    event.remove(db.engine, "commit", listener)
    assert not errors, errors
    assert len(replies) == 64 and len(set(replies.values())) == 64
    with db.transaction() as s:
        stored = {str(i) for i in s.scalars(select(InboundMail.id))}
        queued = set(s.scalars(select(OutboxTask.idempotency_key)))
    assert stored == set(replies.values())  # the id in each 250 is its own row
    assert queued == {f"inbound.ingest:{i}" for i in stored}
    # 64 messages from 16 connections at once did not take 64 transactions.
    assert len(commits) < 64, len(commits)
    mail_server.process()
    assert count(db, Ticket.id) == 64


def test_a_failing_batch_is_retried_one_by_one(db, monkeypatch):
    """One message that cannot be stored costs only its own sender a 451."""

    def picky(session, items, *, source):
        if any(b"X-Poison" in item.raw for item in items):
            raise ValueError("cannot store this one")
        return accept_many(session, items, source=source)

    monkeypatch.setattr("adapters.email.smtp_server.accept_many", picky)
    raws = [make_mail(subject=f"m{i}").as_bytes() for i in range(8)]
    raws[3] = b"X-Poison: yes\r\n" + raws[3]

    async def main() -> tuple[list[object], int]:
        with ThreadPoolExecutor(2) as pool:
            store = GroupCommit(db, pool)
            results = await asyncio.gather(
                *(store.store(Received(raw, "a@example.org", [SUPPORT])) for raw in raws),
                return_exceptions=True,
            )
            return results, store.batches

    results, batches = asyncio.run(main())
    assert batches == 1  # all eight went into one batch, which failed as a whole
    assert isinstance(results[3], ValueError)
    good = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(r, str) for r in good)
    with db.transaction() as s:
        assert {str(i) for i in s.scalars(select(InboundMail.id))} == set(good)


@pytest.mark.parametrize("limit", [1, 3])
def test_batches_respect_their_size_limits(db, limit):
    raws = [make_mail(subject=f"m{i}").as_bytes() for i in range(7)]

    async def main() -> int:
        with ThreadPoolExecutor(1) as pool:
            store = GroupCommit(db, pool, max_batch=limit)
            await asyncio.gather(*(store.store(Received(raw)) for raw in raws))
            return store.batches

    assert asyncio.run(main()) == -(-7 // limit)
    assert count(db, InboundMail.id) == 7
