"""The deletion policy job and customer erasure, on real PostgreSQL."""

from __future__ import annotations

import io
import os
import threading
from datetime import timedelta

from sqlalchemy import func, select, update

from gateway.attachments.models import Attachment
from gateway.audit import AuditEntry
from gateway.conversations.models import Message
from gateway.db import utcnow
from gateway.events import Event, OutboxTask
from gateway.policies.jobs import apply_deletion_policy
from gateway.storage import LocalStorage
from gateway.tickets.models import Ticket


def set_policy(admin, purge=None, archive=None, require=True):
    r = admin.put(
        "/api/v1/policies/deletion",
        json={
            "purge_deleted_after_days": purge,
            "archive_closed_after_days": archive,
            "require_soft_delete_before_purge": require,
        },
    )
    assert r.status_code == 200


def age(db, ticket_id, **columns_days):
    with db.transaction() as s:
        values = {k: utcnow() - timedelta(days=d) for k, d in columns_days.items()}
        s.execute(update(Ticket).where(Ticket.id == ticket_id).values(**values))


def store(storage, data: bytes, old=True) -> str:
    sha, _ = storage.put(io.BytesIO(data))
    if old:
        past = utcnow().timestamp() - 3600
        os.utime(storage.path_for(sha), (past, past))
    return sha


def attach(db, ticket_id, sha, size=3):
    with db.transaction() as s:
        s.add(
            Attachment(
                ticket_id=ticket_id,
                filename="f.txt",
                content_type="text/plain",
                size=size,
                sha256=sha,
            )
        )


def count(db, model, *where):
    with db.transaction() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_job_archives_closed_and_purges_deleted_and_collects_files(
    admin, make_ticket, db, tmp_path
):
    storage = LocalStorage(tmp_path / "files")
    set_policy(admin, purge=30, archive=7)
    old_closed, new_closed, open_old = make_ticket(), make_ticket(), make_ticket()
    for t in (old_closed, new_closed):
        admin.patch(f"/api/v1/tickets/{t['id']}", json={"status": "closed"})
    age(db, old_closed["id"], updated_at=8)
    age(db, open_old["id"], updated_at=100)
    gone, kept_deleted = make_ticket(), make_ticket()
    for t in (gone, kept_deleted):
        admin.delete(f"/api/v1/tickets/{t['id']}")
    age(db, gone["id"], deleted_at=31)
    age(db, kept_deleted["id"], deleted_at=29)
    admin.post(f"/api/v1/tickets/{gone['id']}/restore")  # restore, message, delete again
    admin.post(f"/api/v1/tickets/{gone['id']}/messages", json={"body": "bye"})
    admin.delete(f"/api/v1/tickets/{gone['id']}")
    age(db, gone["id"], deleted_at=31)
    only_gone = store(storage, b"only on the purged ticket")
    shared = store(storage, b"shared")
    attach(db, gone["id"], only_gone)
    attach(db, gone["id"], shared)
    attach(db, open_old["id"], shared)
    orphan = store(storage, b"nobody")
    fresh_orphan = store(storage, b"being uploaded right now", old=False)

    run = apply_deletion_policy(db, storage)
    assert (run.archived, run.purged) == (1, 1)
    assert run.files_removed == 2  # only_gone and the old orphan
    assert storage.exists(shared) and storage.exists(fresh_orphan)
    assert not storage.exists(only_gone) and not storage.exists(orphan)
    assert admin.get(f"/api/v1/tickets/{gone['id']}").status_code == 404
    assert count(db, Message, Message.ticket_id == gone["id"]) == 0
    assert admin.get(f"/api/v1/tickets/{old_closed['id']}").get_json()["archived_at"]
    assert admin.get(f"/api/v1/tickets/{new_closed['id']}").get_json()["archived_at"] is None
    assert admin.get(f"/api/v1/tickets/{open_old['id']}").get_json()["archived_at"] is None
    assert admin.get(f"/api/v1/tickets/{kept_deleted['id']}").get_json()["deleted_at"]
    with db.transaction() as s:
        types = [e.type for e in s.scalars(select(Event).order_by(Event.seq))][-2:]
    assert sorted(types) == ["ticket.archived", "ticket.deleted"]

    again = apply_deletion_policy(db, storage)
    assert (again.archived, again.purged, again.files_removed) == (0, 0, 0)


def test_no_policy_means_nothing_happens(admin, make_ticket, db):
    t = make_ticket()
    admin.delete(f"/api/v1/tickets/{t['id']}")
    age(db, t["id"], deleted_at=10_000)
    run = apply_deletion_policy(db, None)
    assert (run.archived, run.purged) == (0, 0)


def test_two_concurrent_runs_share_the_work(admin, db, make_ticket, tmp_path):
    from gateway.permissions import Principal
    from gateway.tickets.schemas import TicketCreate
    from gateway.tickets.services import create_ticket
    from gateway.users.services import find_user_by_email

    set_policy(admin, purge=1, archive=1)
    with db.transaction() as s:
        principal = Principal.of(find_user_by_email(s, admin.email))
        made = [create_ticket(s, principal, TicketCreate(title=f"t{i}")) for i in range(300)]
        for i, t in enumerate(made):
            if i % 2:
                t.deleted_at = utcnow() - timedelta(days=2)
            else:
                t.status = "closed"
            t.updated_at = utcnow() - timedelta(days=2)
    storage = LocalStorage(tmp_path / "files")
    runs, errors = [], []
    barrier = threading.Barrier(2)

    def run():
        try:
            barrier.wait(timeout=5)
            runs.append(apply_deletion_policy(db, storage, batch=20))
        except Exception as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.purged for r in runs) == 150
    assert sum(r.archived for r in runs) == 150
    assert count(db, Ticket) == 150
    assert count(db, Event, Event.type == "ticket.deleted") == 150
    assert count(db, Event, Event.type == "ticket.archived") == 150


def test_erase_customer(admin, agent, customer_a, customer_b, db, tmp_path):
    mine = customer_a.post("/api/v1/tickets", json={"title": "my secret"}).get_json()
    customer_a.post(f"/api/v1/tickets/{mine['id']}/messages", json={"body": "private words"})
    agent.post(f"/api/v1/tickets/{mine['id']}/messages", json={"body": "reply"})
    other = customer_b.post("/api/v1/tickets", json={"title": "bob's"}).get_json()
    storage = LocalStorage(tmp_path / "files")
    sha = store(storage, b"a's file")
    attach(db, mine["id"], sha)
    assert agent.post(f"/api/v1/users/{customer_a.id}/erase").status_code == 403
    assert admin.post(f"/api/v1/users/{agent.id}/erase").status_code == 409
    r = admin.post(f"/api/v1/users/{customer_a.id}/erase")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {
        "user_id": customer_a.id,
        "tickets_purged": 1,
        "messages_redacted": 0,
        "files_queued": 1,
    }
    assert admin.get(f"/api/v1/tickets/{mine['id']}").status_code == 404
    assert admin.get(f"/api/v1/tickets/{other['id']}").status_code == 200
    user = admin.get(f"/api/v1/users/{customer_a.id}").get_json()
    assert user["email"].endswith("@erased.invalid") and user["name"] == ""
    assert user["active"] is False
    assert customer_a.get("/api/v1/me").status_code == 401
    with db.transaction() as s:
        entries = s.scalars(select(AuditEntry)).all()
        assert [(e.action, e.target_id) for e in entries] == [("user.erased", customer_a.id)]
        assert "alice" not in str(entries[0].details)
        leftovers = s.scalars(select(Event.data)).all()
        assert "alice@example.org" not in str(leftovers)
        assert (
            s.scalar(
                select(func.count()).select_from(OutboxTask).where(OutboxTask.kind == "email.reply")
            )
            == 0
        )
    apply_deletion_policy(db, storage, grace_seconds=0)
    assert not storage.exists(sha)
