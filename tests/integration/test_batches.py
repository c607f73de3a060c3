"""Several outbox rows claimed together, and stored mail ingested in one transaction.

A Celery message names up to 16 rows (the SMTP edge's batch); the in-process
runner takes up to 10. ``run_tasks`` claims them with one UPDATE and runs
consecutive rows of a batching kind (``inbound.ingest``) in one transaction;
a batch that fails runs again row by row, so one bad row fails alone.
"""

from __future__ import annotations

import uuid
from email import message_from_bytes
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr

import pytest
from sqlalchemy import event, func, select, text, update

from gateway.conversations.models import Message
from gateway.db import utcnow
from gateway.events import OutboxTask
from gateway.inbound.models import InboundMail
from gateway.inbound.store import Received, accept_many
from gateway.outbound.models import OutboundMail
from gateway.outbound.services import _queue
from gateway.tickets.models import Ticket
from tests.integration.conftest import local_relay
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


class CountingRelay:
    """A local relay that records (connection, recipient) per mail; it can refuse a
    recipient (550) or drop the connection at the n-th MAIL FROM of a session."""

    def __init__(self) -> None:
        self.got: list[tuple[object, str]] = []
        self.refuse: set[str] = set()
        self.drop_at: int | None = None

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        session.mails = getattr(session, "mails", 0) + 1
        if self.drop_at is not None and session.mails >= self.drop_at:
            server.transport.close()
            return "421 4.3.0 going away"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.got.append((session.peer, envelope.rcpt_tos[0]))
        return "250 OK"


@pytest.fixture
def counting_relay():
    with local_relay(CountingRelay()) as served:
        yield served


def _outgoing(db, recipients: list[str]) -> list:
    """An acknowledgment-like mail and its email.send row per recipient; the rows' ids."""
    with db.transaction() as session:
        for n, recipient in enumerate(recipients):
            _queue(
                session,
                OutboundMail(
                    kind="ack",
                    automatic=True,
                    recipient=recipient,
                    message_id_header=make_msgid(domain="help.example.com"),
                    subject=f"Re: case {n}",
                    raw=f"Subject: case {n}\r\n\r\nreceived\r\n".encode(),
                ),
            )
    with db.transaction() as session:
        rows = session.execute(
            select(OutboxTask.id, OutboxTask.payload).where(OutboxTask.kind == "email.send")
        ).all()
        mails = {m.id: m.recipient for m in session.scalars(select(OutboundMail))}
    by_recipient = {mails[uuid.UUID(payload["outbound_id"])]: i for i, payload in rows}
    return [by_recipient[r] for r in recipients]


def _mail_states(db) -> dict[str, tuple[str, int]]:
    with db.transaction() as session:
        return {m.recipient: (m.state, m.attempts) for m in session.scalars(select(OutboundMail))}


def _send_handlers(settings, db, port: int):
    relayed = settings.model_copy(update={"outbound_smtp_url": f"smtp://127.0.0.1:{port}"})
    return handlers(TaskContext.create(relayed, db))


def test_mails_of_one_batch_leave_over_one_connection_with_an_outcome_each(
    settings, db, counting_relay
):
    relay, port = counting_relay
    relay.refuse = {"gone@example.org"}
    recipients = ["a@example.org", "gone@example.org", "b@example.org", "x@example.invalid"]
    ids = _outgoing(db, recipients)
    assert run_tasks(db, _send_handlers(settings, db, port), ids) == ["done"] * 4
    assert [to for _, to in relay.got] == ["a@example.org", "b@example.org"]
    assert len({peer for peer, _ in relay.got}) == 1  # one connection for the batch
    assert _mail_states(db) == {
        "a@example.org": ("sent", 1),
        "gone@example.org": ("failed", 1),  # a 5xx is final; not retried
        "b@example.org": ("sent", 1),
        "x@example.invalid": ("suppressed", 0),
    }
    with db.transaction() as session:
        marks = {
            m.recipient: (m.sent_at is not None, m.last_error)
            for m in session.scalars(select(OutboundMail))
        }
    assert marks["a@example.org"] == marks["b@example.org"] == (True, None)
    assert marks["gone@example.org"][0] is False and "550" in marks["gone@example.org"][1]


def test_a_connection_lost_mid_batch_retries_the_mails_it_did_not_send(
    settings, db, counting_relay
):
    relay, port = counting_relay
    relay.drop_at = 2
    ids = _outgoing(db, ["a@example.org", "b@example.org", "c@example.org"])
    table = _send_handlers(settings, db, port)
    assert run_tasks(db, table, ids) == ["done", "pending", "pending"]
    assert _mail_states(db) == {
        "a@example.org": ("sent", 1),
        "b@example.org": ("pending", 1),
        "c@example.org": ("pending", 1),
    }
    assert state_of(db, ids[1]).last_error.startswith("SMTP")
    relay.drop_at = None
    with db.transaction() as session:  # their retry time has come
        session.execute(update(OutboxTask).values(available_at=utcnow()))
    assert run_tasks(db, table, ids) == ["skipped", "done", "done"]
    assert [to for _, to in relay.got] == ["a@example.org", "b@example.org", "c@example.org"]


def test_a_batch_holding_a_mail_that_died_mid_send_runs_alone(settings, db, counting_relay):
    relay, port = counting_relay
    ids = _outgoing(db, ["a@example.org", "b@example.org"])
    with db.transaction() as session:  # as if a worker was killed while sending it
        session.execute(
            update(OutboundMail)
            .where(OutboundMail.recipient == "b@example.org")
            .values(state="sending")
        )
    assert run_tasks(db, _send_handlers(settings, db, port), ids) == ["done", "dead"]
    assert [to for _, to in relay.got] == ["a@example.org"]  # b is not sent blindly again
    assert _mail_states(db)["b@example.org"][0] == "uncertain"


def _plain(n: int, subject: str = "Case", message_id: str | None = None) -> bytes:
    """Independent mail: a sender of its own, nothing to thread on."""
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <c{n}@example.org>"
    msg["To"] = SUPPORT
    msg["Cc"] = f"colleague{n}@example.org"
    msg["Subject"] = f"{subject} {n}"
    msg["Message-ID"] = message_id or make_msgid(domain="example.org")
    msg.set_content(f"Case {n}: the printer is on fire.\n")
    msg.add_alternative(f"<p>Case {n}: the <b>printer</b> is on fire.</p>", subtype="html")
    return msg.as_bytes()


def _store_and_order(db, raws: list[bytes]) -> list:
    """Store ``raws`` as the SMTP edge does (envelope sender = From); their ingest rows."""
    received = [
        Received(raw, parseaddr(message_from_bytes(raw)["From"])[1], [SUPPORT]) for raw in raws
    ]
    with db.transaction() as session:
        stored = accept_many(session, received, source="smtp")
    with db.transaction() as session:
        rows = session.execute(
            select(OutboxTask.id, OutboxTask.payload).where(OutboxTask.kind == "inbound.ingest")
        ).all()
    by_mail = {payload["inbound_id"]: task_id for task_id, payload in rows}
    return [by_mail[mail_id] for mail_id in stored]


def _written(db) -> list[tuple]:
    """What ingesting wrote, ticket by ticket, without ids and times."""
    from gateway.audit import AuditEntry
    from gateway.events import Event
    from gateway.inbound.models import TicketParticipant
    from gateway.users.models import User

    with db.transaction() as session:
        out = []
        for ticket in session.scalars(select(Ticket).order_by(Ticket.title)):
            customer = session.get(User, ticket.customer_id)
            messages = session.scalars(select(Message).where(Message.ticket_id == ticket.id))
            out.append(
                (
                    ticket.title,
                    ticket.status,
                    ticket.channel,
                    ticket.message_count,
                    customer.email,
                    customer.name,
                    sorted((m.kind, m.body_text, m.body_html) for m in messages),
                    sorted(
                        session.scalars(
                            select(TicketParticipant.email).where(
                                TicketParticipant.ticket_id == ticket.id
                            )
                        )
                    ),
                    sorted(session.scalars(select(Event.type).where(Event.ticket_id == ticket.id))),
                    sorted(
                        session.scalars(
                            select(AuditEntry.action).where(AuditEntry.target_id == str(ticket.id))
                        )
                    ),
                    sorted(
                        (o.recipient, o.subject.split(" [#")[0], o.state)
                        for o in session.scalars(
                            select(OutboundMail).where(OutboundMail.ticket_id == ticket.id)
                        )
                    ),
                )
            )
        return out


def test_independent_mail_is_written_in_one_flush_and_writes_what_mail_by_mail_does(settings, db):
    from tests.conftest import reset

    table = handlers(TaskContext.create(settings, db))
    raws = [_plain(n) for n in range(5)]
    for task_id in _store_and_order(db, raws):  # mail by mail
        assert run_tasks(db, table, [task_id]) == ["done"]
    one_by_one = _written(db)

    reset(db)
    ordered = _store_and_order(db, raws)
    inserts: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().startswith("INSERT INTO tickets"):
            inserts.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        assert run_tasks(db, table, ordered) == ["done"] * 5
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert len(inserts) == 1, inserts  # the five tickets in one statement
    assert _written(db) == one_by_one
    assert len(one_by_one) == 5 and all(row[3] == 1 for row in one_by_one)
    assert all(row[-1] == [(row[4], f"Re: {row[0]}", "pending")] for row in one_by_one)


def test_a_batch_looks_up_together_what_mail_by_mail_looks_up_one_by_one(settings, db):
    """A known customer, a second delivery, a sender over the automatic-mail limit."""
    from tests.conftest import reset

    delivered_twice = make_msgid(domain="example.org")

    def run(batched: bool) -> tuple:
        reset(db)
        ctx = TaskContext.create(settings, db)
        ctx.mail.automatic_per_hour = 1
        table = handlers(ctx)
        earlier = _store_and_order(db, [_plain(1, message_id=delivered_twice), _plain(2)])
        assert run_tasks(db, table, earlier) == ["done"] * 2  # one acknowledgment each
        later = [_plain(1, "Again", delivered_twice), _plain(2, "Again"), _plain(3, "Again")]
        ids = _store_and_order(db, later)
        if batched:
            states = run_tasks(db, table, ids)
        else:
            states = [state for task_id in ids for state in run_tasks(db, table, [task_id])]
        with db.transaction() as session:
            outcomes = [
                {k: v for k, v in mail.outcome.items() if k not in ("ticket", "of_message")}
                for mail in session.scalars(
                    select(InboundMail).order_by(InboundMail.received_at, InboundMail.id)
                )
            ]
        return states, sorted(map(str, outcomes)), _written(db)

    one_by_one = run(batched=False)
    assert run(batched=True) == one_by_one
    states, outcomes, written = one_by_one
    assert states == ["done"] * 3
    assert outcomes.count(str({"state": "duplicate"})) == 1
    acks = {(row[0], row[4]): row[-1][0][2] for row in written}
    assert acks[("Again 2", "c2@example.org")] == "suppressed"  # over the limit of 1 an hour
    assert acks[("Again 3", "c3@example.org")] == "pending"


def _numbers(db) -> dict[str, int]:
    with db.transaction() as session:
        return {title: n for title, n in session.execute(select(Ticket.title, Ticket.number))}


def test_a_batch_takes_its_ticket_numbers_in_one_query_in_mail_order(settings, db):
    table = handlers(TaskContext.create(settings, db))
    assert run_tasks(db, table, _store_and_order(db, [_plain(0)])) == ["done"]
    again = make_msgid(domain="example.org")
    first = _store_and_order(db, [_plain(1, message_id=again)])
    assert run_tasks(db, table, first) == ["done"]
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        if "ticket_number_seq" in statement:
            statements.append(statement)

    # A second delivery (no ticket) between new mail: no number reserved for it.
    later = [_plain(2), _plain(1, "Case", again), _plain(3), _plain(4)]
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        assert run_tasks(db, table, _store_and_order(db, later)) == ["done"] * 4
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements
    numbers = _numbers(db)
    start = numbers["Case 0"]
    assert [numbers[f"Case {n}"] for n in range(5)] == list(range(start, start + 5))  # no gap
    # Past the batch, numbers go on from the sequence.
    assert run_tasks(db, table, _store_and_order(db, [_plain(5)])) == ["done"]
    assert _numbers(db)["Case 5"] == start + 5


def test_a_batch_on_sqlite_is_written_in_one_flush_and_numbered_on_from_the_highest(tmp_path):
    from gateway.config import Settings
    from gateway.db import Database
    from gateway.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'sg.db'}"
    upgrade(url)
    lite = Database(url)
    try:
        settings = Settings(data_dir=tmp_path / "data", database_url=url, _env_file=None)
        table = handlers(TaskContext.create(settings, lite))
        assert run_tasks(lite, table, _store_and_order(lite, [_plain(0)])) == ["done"]
        inserts: list[str] = []

        def count(conn, cursor, statement, *args):
            if statement.lstrip().startswith("INSERT INTO tickets"):
                inserts.append(statement)

        ordered = _store_and_order(lite, [_plain(n) for n in range(1, 5)])
        event.listen(lite.engine, "before_cursor_execute", count)
        try:
            assert run_tasks(lite, table, ordered) == ["done"] * 4
        finally:
            event.remove(lite.engine, "before_cursor_execute", count)
        assert len(inserts) == 1, inserts  # one flush, not a failed batch run again mail by mail
        numbers = _numbers(lite)
        assert [numbers[f"Case {n}"] for n in range(5)] == [1, 2, 3, 4, 5]
    finally:
        lite.dispose()


def test_a_batch_written_in_one_flush_is_mirrored_to_slack(settings, db):
    from gateway.slack.mirror import install_mirror
    from gateway.slack.models import SlackPost, SlackThread

    table = handlers(TaskContext.create(settings, db))
    install_mirror(db.sessions, "C123")
    try:
        assert (
            run_tasks(db, table, _store_and_order(db, [_plain(n) for n in range(3)]))
            == ["done"] * 3
        )
    finally:
        install_mirror(db.sessions, None)
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(SlackThread)) == 3
        assert session.scalar(select(func.count()).select_from(SlackPost)) == 3
        kinds = sorted(
            session.scalars(select(OutboxTask.kind).where(OutboxTask.kind.like("slack.%")))
        )
        assert kinds == ["slack.post"] * 3 + ["slack.thread"] * 3


@pytest.mark.parametrize(
    ("second", "together"),
    [
        ({"From": "other@example.org"}, True),
        ({"From": "Ana <ANA@example.org>"}, False),  # the same sender again
        ({"In-Reply-To": "<x@example.org>"}, False),
        ({"References": "<x@example.org>"}, False),
        ({"Subject": "About [#12]"}, False),
        ({"To": "support+t12-abc@help.example.com"}, False),  # a reply address
        ({"Auto-Submitted": "auto-replied"}, False),
        ({"attachment": True}, False),
    ],
)
def test_which_batches_are_written_in_one_flush(second, together):
    from adapters.email.parsing import parse_message
    from gateway.inbound.addresses import SupportAddress
    from gateway.inbound.ingest import independent

    def mail(headers: dict) -> tuple[InboundMail, object]:
        msg = EmailMessage()
        msg["From"] = headers.get("From", "ana@example.org")
        msg["To"] = headers.get("To", SUPPORT)
        msg["Subject"] = headers.get("Subject", "Printer")
        msg["Message-ID"] = make_msgid(domain="example.org")
        for name in ("In-Reply-To", "References", "Auto-Submitted"):
            if name in headers:
                msg[name] = headers[name]
        msg.set_content("It is on fire.\n")
        if headers.get("attachment"):
            msg.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="a.pdf")
        raw = msg.as_bytes()
        stored = InboundMail(raw=raw, envelope_from="", recipients=[SUPPORT], state="received")
        return stored, parse_message(raw)

    support = SupportAddress.parse(SUPPORT)
    assert independent([mail({}), mail(second)], support) is together


def test_a_batch_written_in_one_flush_hands_each_new_task_over_once(settings, db):
    from gateway.db import Database
    from gateway.events import watch_outbox

    watched = Database(db.url, pool_size=1)  # listeners of its own, not the shared factory's
    handed: list[tuple] = []
    watch_outbox(watched.sessions, handed.extend)
    try:
        table = handlers(TaskContext.create(settings, watched))
        states = run_tasks(watched, table, _store_and_order(db, [_plain(n) for n in range(4)]))
    finally:
        watched.dispose()
    assert states == ["done"] * 4
    assert sorted(kind for _, kind in handed) == ["email.send"] * 4
    assert len(set(handed)) == 4


def test_a_slow_batch_stops_starting_mails_after_its_time_budget(counting_relay):
    from adapters.email.sender import Relay

    handler, port = counting_relay
    relay = Relay.from_url(f"smtp://127.0.0.1:{port}")
    mails = [(f"{n}@example.org", b"Subject: x\r\n\r\nx\r\n") for n in range(3)]
    outcomes = relay.send_many(SUPPORT, mails, budget=0)
    assert outcomes[0] is None  # one mail always goes
    assert [type(o) for o in outcomes[1:]] == [TimeoutError, TimeoutError]
    assert [to for _, to in handler.got] == ["0@example.org"]
