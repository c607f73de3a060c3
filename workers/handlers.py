"""What each kind of outbox task does. Every handler is idempotent.

    kind             payload           does
    inbound.ingest   inbound_id        parse the stored raw mail, route it (gateway.inbound.ingest)
    email.reply      message_id        compose the mail of an agent's public reply, queue email.send
    email.send       outbound_id       send one composed mail (pending → sending → sent)
    storage.collect  sha256 [list]     remove the files no attachment references (past the grace)
    attachment.preview sha256          make an image's thumbnail ahead of its first view
    slack.event      event_id          process a stored Slack event (adapters/slack/inbound.py)
    slack.post       ticket_id         post a ticket's parent message once (slack/poster.py)
    slack.thread     ticket_id, message_id   post the ticket's pending messages in its thread
    slack.update     ticket_id         chat.update of the parent when what it shows changed
    slack.ephemeral  channel, user, text     tell one Slack user something

The ``slack.*`` handlers exist only when Slack is configured; the Slack
mirror (gateway/slack/mirror.py) is switched on or off with them, for every
session of the task's database.

The same functions run in the embedded in-process runner and, with Redis,
in the Celery tasks.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from adapters.email.parsing import parse_message
from adapters.email.quotes import visible_text
from adapters.email.sender import PermanentFailure, Relay
from gateway.attachments.services import Files, collect_files, make_preview
from gateway.config import Settings
from gateway.db import Database
from gateway.inbound.addresses import SupportAddress
from gateway.inbound.ingest import process_inbound, process_many
from gateway.inbound.models import InboundMail
from gateway.outbound.models import OutboundMail
from gateway.outbound.services import (
    MailContext,
    begin_sending,
    not_sent,
    prepare_reply,
    record_delivered,
    record_outcome,
)
from gateway.slack.mirror import install_mirror
from workers.outbox import (
    Batching,
    Handler,
    Job,
    PermanentTaskError,
    PlainHandler,
    RunAlone,
)

log = logging.getLogger("supportgate.tasks")


@dataclass
class TaskContext:
    settings: Settings
    db: Database
    mail: MailContext
    relay: Relay | None
    files: Files

    @classmethod
    def create(cls, settings: Settings, db: Database) -> TaskContext:
        files = Files.from_settings(settings)
        install_mirror(db.sessions, settings.slack_channel if settings.slack_enabled else None)
        return cls(
            settings=settings,
            db=db,
            files=files,
            mail=MailContext(
                support=SupportAddress.parse(settings.support_address),
                storage=files.storage,
                policies=files.policies,
            ),
            relay=Relay.from_url(settings.outbound_smtp_url)
            if settings.outbound_smtp_url
            else None,
        )


def _lock(session: Any, stmt: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update()
    return stmt


def ingest(ctx: TaskContext, payload: dict[str, Any], job: Job) -> None:
    inbound_id = uuid.UUID(payload["inbound_id"])
    with job.settle() as session:
        mail = session.scalar(
            _lock(session, select(InboundMail).where(InboundMail.id == inbound_id))
        )
        if mail is None or mail.state != "received":
            return
        parsed = parse_message(mail.raw)
        outcome = process_inbound(session, ctx.mail, mail, parsed, visible_text)
        mail.attempts += 1
    log.info("ingested", extra={"inbound_id": str(inbound_id), **outcome})


def ingest_many(ctx: TaskContext, batch: list[tuple[dict[str, Any], Job]]) -> None:
    """:func:`ingest` for several stored messages, in order, in one transaction.

    What one message does is visible to the next (a reply to a mail of the
    same batch threads, a duplicate is seen), as if they had run one by one.
    """
    ids = [uuid.UUID(payload["inbound_id"]) for payload, _ in batch]
    outcomes: list[tuple[uuid.UUID, dict[str, Any]]] = []
    with Job.settle_all(ctx.db, [job for _, job in batch]) as session:
        stmt = select(InboundMail).where(InboundMail.id.in_(ids)).order_by(InboundMail.id)
        found = {mail.id: mail for mail in session.scalars(_lock(session, stmt))}
        mails = [
            (mail, parse_message(mail.raw))
            for mail in (found.get(i) for i in ids)
            if mail is not None and mail.state == "received"
        ]
        for (mail, _), outcome in zip(
            mails, process_many(session, ctx.mail, mails, visible_text), strict=True
        ):
            outcomes.append((mail.id, outcome))
            mail.attempts += 1
    for inbound_id, outcome in outcomes:
        log.info("ingested", extra={"inbound_id": str(inbound_id), **outcome})


def reply(ctx: TaskContext, payload: dict[str, Any]) -> None:
    with ctx.db.transaction() as session:
        prepare_reply(session, ctx.mail, uuid.UUID(payload["message_id"]))


def send(ctx: TaskContext, payload: dict[str, Any], job: Job) -> None:
    outbound_id = uuid.UUID(payload["outbound_id"])
    with ctx.db.transaction() as session:
        mail = session.scalar(
            _lock(session, select(OutboundMail).where(OutboundMail.id == outbound_id))
        )
        begun = begin_sending(mail)
        if begun == "skip":
            return
        assert mail is not None
        recipient, raw = mail.recipient, mail.raw
    if begun == "uncertain":
        raise PermanentTaskError(
            f"delivery of outgoing mail {outbound_id} is uncertain (its worker died while "
            "sending); check the relay's log, then retry this task to send it again"
        )
    if ctx.relay is None:
        outcome, error = "stored", None
        log.info(
            "outgoing mail stored, not sent (no SUPPORTGATE_OUTBOUND_SMTP_URL)",
            extra={"outbound_id": str(outbound_id), "to": recipient},
        )
    else:
        try:
            ctx.relay.send(ctx.mail.support.address, recipient, raw)
            outcome, error = "sent", None
        except PermanentFailure as exc:
            outcome, error = "failed", str(exc)
        except Exception:
            with ctx.db.transaction() as session:
                row = session.get(OutboundMail, outbound_id)
                if row is not None:
                    not_sent(row)
            raise
    with job.settle() as session:  # the mail's outcome and the task's, in one commit
        row = session.get(OutboundMail, outbound_id)
        if row is not None:
            record_outcome(row, outcome, error)


def send_many(ctx: TaskContext, batch: list[tuple[dict[str, Any], Job]]) -> None:
    """:func:`send` for several mails: one transaction marks them ``sending``, one relay
    connection sends them in order, one transaction records every outcome."""
    jobs = {uuid.UUID(payload["outbound_id"]): job for payload, job in batch}
    to_send: list[tuple[uuid.UUID, str, bytes]] = []
    with ctx.db.transaction() as session:
        stmt = select(OutboundMail).where(OutboundMail.id.in_(list(jobs)))
        mails = {m.id: m for m in session.scalars(_lock(session, stmt.order_by(OutboundMail.id)))}
        if any(mail.state == "sending" for mail in mails.values()):
            # An earlier attempt died mid-send: send() dead-letters that one as uncertain.
            raise RunAlone("a mail of the batch may have left already")
        for outbound_id in jobs:
            mail = mails.get(outbound_id)
            if begin_sending(mail) == "send":
                assert mail is not None
                to_send.append((outbound_id, mail.recipient, mail.raw))
    if ctx.relay is None:
        outcomes: list[Exception | None] = [None] * len(to_send)
    else:
        outcomes = ctx.relay.send_many(
            ctx.mail.support.address, [(recipient, raw) for _, recipient, raw in to_send]
        )
    retry = {
        outbound_id: error
        for (outbound_id, _, _), error in zip(to_send, outcomes, strict=True)
        if error is not None and not isinstance(error, PermanentFailure)
    }
    with Job.settle_all(ctx.db, [j for i, j in jobs.items() if i not in retry]) as session:
        done = [i for (i, _, _), error in zip(to_send, outcomes, strict=True) if error is None]
        record_delivered(session, done, relayed=ctx.relay is not None)
        for (outbound_id, _, _), error in zip(to_send, outcomes, strict=True):
            row = session.get(OutboundMail, outbound_id) if error is not None else None
            if row is None:
                continue
            if outbound_id in retry:
                not_sent(row)
                jobs[outbound_id].fail_in(session, f"{type(error).__name__}: {error}")
            else:
                record_outcome(row, "failed", str(error))
    for outbound_id in retry:
        jobs[outbound_id].settled = True
    if ctx.relay is None and to_send:
        log.info(
            "outgoing mail stored, not sent (no SUPPORTGATE_OUTBOUND_SMTP_URL)",
            extra={"outbound_ids": [str(i) for i, _, _ in to_send]},
        )
    for outbound_id, error in retry.items():
        log.warning(
            "outgoing mail not sent; retrying later",
            extra={"outbound_id": str(outbound_id), "error": f"{type(error).__name__}: {error}"},
        )


def handlers(ctx: TaskContext) -> dict[str, Handler]:
    table: dict[str, Handler] = {
        "inbound.ingest": Batching(
            lambda p, job: ingest(ctx, p, job), lambda batch: ingest_many(ctx, batch)
        ),
        "email.reply": lambda p: reply(ctx, p),
        "email.send": Batching(
            lambda p, job: send(ctx, p, job), lambda batch: send_many(ctx, batch)
        ),
        "storage.collect": lambda p: collect_files(ctx.db, ctx.files, p),
        "attachment.preview": lambda p: make_preview(ctx.db, ctx.files, p),
    }
    if ctx.settings.slack_enabled:
        table.update(slack_handlers(ctx))
    return table


def slack_handlers(ctx: TaskContext) -> dict[str, PlainHandler]:
    """The ``slack.*`` handlers; Slack's refusals that a retry cannot fix are dead-lettered."""
    from adapters.slack.client import SlackApi, SlackPermanentError
    from adapters.slack.files import FileFetcher
    from adapters.slack.inbound import EventProcessor
    from adapters.slack.poster import Poster
    from adapters.slack.poster import handlers as poster_handlers

    settings = ctx.settings
    assert settings.slack_bot_token is not None
    api = SlackApi.from_settings(settings)
    fetcher = FileFetcher(
        api, settings.slack_bot_token.get_secret_value(), ctx.files, settings.slack_api_url
    )
    table: dict[str, PlainHandler] = {
        "slack.event": EventProcessor(ctx.db, api, fetcher).process,
        **poster_handlers(Poster(ctx.db, api)),
    }

    def permanent(handler: PlainHandler) -> PlainHandler:
        def run(payload: dict[str, Any]) -> None:
            try:
                handler(payload)
            except SlackPermanentError as exc:
                raise PermanentTaskError(
                    f"{exc}; fix the Slack app or SUPPORTGATE_SLACK_* and retry this task"
                ) from exc

        return run

    return {kind: permanent(handler) for kind, handler in table.items()}
