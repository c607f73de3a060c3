"""Several outbox rows claimed together, and stored mail ingested in one transaction.

A Celery message names up to 16 rows (the SMTP edge's batch); the in-process
runner takes up to 10. ``run_tasks`` claims them with one UPDATE and runs
consecutive rows of a batching kind (``inbound.ingest``) in one transaction;
a batch that fails runs again row by row, so one bad row fails alone.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid

from sqlalchemy import event, func, select, text

from gateway.conversations.models import Message
from gateway.events import OutboxTask
from gateway.inbound.models import InboundMail
from gateway.inbound.store import Received, accept_many
from gateway.tickets.models import Ticket
from tests.integration.test_outbox import add_task, state_of
from workers.handlers import TaskContext, handlers
from workers.outbox import Batching, Job, claim_many, run_tasks

SUPPORT = "support@help.example.com"


def test_rows_are_claimed_together_in_order_and_a_taken_row_is_skipped(db):
    ids = [add_task(db, key=f"r{i}", payload={"n": i}) for i in range(4)]
    assert run_tasks(db, {"email.send": lambda p: None}, [ids[1]]) == ["done"]
    ran: list[int] = []
    states = run_tasks(db, {"email.send": lambda p: ran.append(p["n"])}, ids)
    assert states == ["done", "skipped", "done", "done"]
    assert ran == [0, 2, 3]
    assert claim_many(db, ids) == {}  # nothing left to claim
    assert {state_of(db, i).attempts for i in ids} == {1}


def test_a_failed_batch_commits_nothing_and_its_rows_run_alone(db):
    ids = [add_task(db, key=f"b{i}", payload={"n": i}) for i in range(3)]
    alone: list[int] = []

    def run_many(batch: list[tuple[dict, Job]]) -> None:
        with Job.settle_all(db, [job for _, job in batch]) as session:
            session.execute(text("UPDATE outbox_tasks SET last_error = 'half-done'"))
            raise RuntimeError("the batch breaks")

    def run(payload: dict, job: Job) -> None:
        if payload["n"] == 1:
            raise ValueError("this row is bad")
        with job.settle():
            alone.append(payload["n"])

    states = run_tasks(db, {"email.send": Batching(run, run_many)}, ids)
    assert states == ["done", "pending", "done"]
    assert alone == [0, 2]
    bad = state_of(db, ids[1])
    assert bad.attempts == 1 and bad.last_error == "ValueError: this row is bad"
    assert state_of(db, ids[0]).last_error is None  # the batch's write rolled back


def _mail(sender: str, subject: str, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, SUPPORT, subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(f"{subject}: the printer is on fire.\n")
    return msg.as_bytes()


def test_mail_of_one_batch_is_ingested_in_one_transaction_and_sees_its_neighbours(settings, db):
    first_id = make_msgid(domain="example.org")
    raws = [
        _mail("ana@example.org", "Printer", Message_ID=first_id),
        _mail("ana@example.org", "Re: Printer", Message_ID=make_msgid(), In_Reply_To=first_id),
        _mail("ana@example.org", "Printer", Message_ID=first_id),  # delivered twice
        _mail("bob@example.org", "Scanner", Message_ID=make_msgid()),
    ]
    with db.transaction() as session:
        stored = accept_many(
            session,
            [Received(raw, "ana@example.org", [SUPPORT]) for raw in raws],
            source="smtp",
        )
        tasks = list(
            session.scalars(
                select(OutboxTask.id)
                .where(OutboxTask.kind == "inbound.ingest")
                .order_by(OutboxTask.created_at, OutboxTask.id)
            )
        )
    by_mail = {}
    with db.transaction() as session:
        for task_id, payload in session.execute(
            select(OutboxTask.id, OutboxTask.payload).where(OutboxTask.id.in_(tasks))
        ):
            by_mail[payload["inbound_id"]] = task_id
    ordered = [by_mail[mail_id] for mail_id in stored]
    commits: list[int] = []
    listener = lambda conn: commits.append(1)  # noqa: E731
    event.listen(db.engine, "commit", listener)
    try:
        states = run_tasks(db, handlers(TaskContext.create(settings, db)), ordered)
    finally:
        event.remove(db.engine, "commit", listener)
    assert states == ["done"] * 4
    assert len(commits) == 2  # the claim, then the four messages and their settlement
    with db.transaction() as session:
        mails = {m.id.hex: m for m in session.scalars(select(InboundMail))}
        outcomes = [mails[mail_id.replace("-", "")].outcome for mail_id in stored]
        assert [o["state"] for o in outcomes] == [
            "processed",
            "processed",
            "duplicate",
            "processed",
        ]
        assert [o.get("kind") for o in outcomes] == ["new-ticket", "follow-up", None, "new-ticket"]
        assert outcomes[1]["ticket"] == outcomes[0]["ticket"]
        assert session.scalar(select(func.count()).select_from(Ticket)) == 2
        assert session.scalar(select(func.count()).select_from(Message)) == 3
        assert (
            session.scalar(select(func.count()).where(OutboxTask.kind == "email.send")) == 2
        )  # one acknowledgment per new ticket
