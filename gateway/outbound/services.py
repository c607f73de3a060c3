"""Deciding and preparing outgoing mail (sending is the task's job)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway.attachments.models import Attachment
from gateway.attachments.policy import Policies
from gateway.conversations.models import Message
from gateway.db import flush, lookup, new_id, utcnow
from gateway.events import enqueue
from gateway.inbound.addresses import SupportAddress, reply_address
from gateway.outbound.compose import Outgoing, compose, make_message_id, subject_for
from gateway.outbound.models import OutboundMail
from gateway.storage import Storage
from gateway.tickets.models import Ticket

AUTOMATIC_PER_SENDER_PER_HOUR = 5
MAX_ATTACHMENT_BYTES_PER_MAIL = 20 * 1024 * 1024


@dataclass
class MailContext:
    support: SupportAddress
    storage: Storage | None
    display_name: str = "Support"
    automatic_per_hour: int = AUTOMATIC_PER_SENDER_PER_HOUR
    # What mail attachments are checked against (None: the default policies).
    policies: Policies | None = None


def _thread_ids(session: Session, ticket: Ticket) -> list[str]:
    """Message-IDs of the ticket's mail so far, oldest first (ours and theirs)."""
    theirs = session.execute(
        select(Message.created_at, Message.email_message_id).where(
            Message.ticket_id == ticket.id,
            Message.email_message_id.is_not(None),
            Message.kind != "note",
        )
    ).all()
    ours = session.execute(
        select(OutboundMail.created_at, OutboundMail.message_id_header).where(
            OutboundMail.ticket_id == ticket.id
        )
    ).all()
    dated: list[tuple[datetime, str]] = [(row[0], row[1]) for row in theirs if row[1]]
    dated += [(row[0], row[1]) for row in ours]
    return [mid for _, mid in sorted(dated)]


def _last_customer_message_id(session: Session, ticket: Ticket) -> str | None:
    return session.scalar(
        select(Message.email_message_id)
        .where(
            Message.ticket_id == ticket.id,
            Message.kind == "customer",
            Message.email_message_id.is_not(None),
        )
        .order_by(Message.created_at.desc())
        .limit(1)
    )


def _queue(session: Session, mail: OutboundMail) -> OutboundMail:
    if mail.id is None:
        mail.id = new_id()
    session.add(mail)
    flush(session)
    if mail.state == "pending":
        enqueue(session, "email.send", str(mail.id), {"outbound_id": str(mail.id)})
    return mail


def automatic_mail_counts(session: Session, recipients: list[str]) -> dict[str, int]:
    """Automatic mails to each of ``recipients`` within the last hour (the rate limit's count)."""
    since = utcnow() - timedelta(hours=1)
    counted = session.execute(
        select(OutboundMail.recipient, func.count())
        .where(
            OutboundMail.recipient.in_(recipients),
            OutboundMail.automatic.is_(True),
            OutboundMail.state != "suppressed",
            OutboundMail.created_at > since,
        )
        .group_by(OutboundMail.recipient)
    )
    return {recipient: 0 for recipient in recipients} | {r: int(n) for r, n in counted}


def automatic_mail_allowed(session: Session, ctx: MailContext, recipient: str) -> bool:
    sent = lookup(
        session,
        "automatic_mail_count",
        recipient,
        lambda: automatic_mail_counts(session, [recipient])[recipient],
    )
    return sent < ctx.automatic_per_hour


def schedule_acknowledgment(
    session: Session, ctx: MailContext, ticket: Ticket, first: Message
) -> OutboundMail:
    """The automatic acknowledgment of a new ticket opened by mail."""
    customer = ticket.customer
    allowed = automatic_mail_allowed(session, ctx, customer.email)
    text = (
        f"Hello{(' ' + customer.name) if customer.name else ''},\n\n"
        f"we received your request and opened ticket #{ticket.number}:\n\n"
        f"    {ticket.title}\n\n"
        "Reply to this message to add to it.\n\n"
        f"-- \n{ctx.display_name}\n"
    )
    message_id = make_message_id(ctx.support.domain)
    outgoing = Outgoing(
        from_name=ctx.display_name,
        from_address=ctx.support.address,
        to_name=customer.name,
        to_address=customer.email,
        reply_to=reply_address(ctx.support, ticket, customer.email),
        subject=subject_for(ticket.title, ticket.number),
        message_id=message_id,
        text=text,
        in_reply_to=first.email_message_id,
        references=[first.email_message_id] if first.email_message_id else [],
        automatic=True,
    )
    return _queue(
        session,
        OutboundMail(
            ticket_id=ticket.id,
            message_id=None,
            kind="ack",
            automatic=True,
            recipient=customer.email,
            message_id_header=message_id,
            subject=outgoing.subject,
            raw=compose(outgoing),
            state="pending" if allowed else "suppressed",
            last_error=None if allowed else "automatic mail rate limit for this sender",
        ),
    )


def begin_sending(mail: OutboundMail | None) -> str:
    """Mark a mail a send task found, before the relay is spoken to; what to do next.

    ``skip``: sent, stored, suppressed or failed already, or undeliverable
    (marked suppressed). ``uncertain``: the last attempt died while speaking to
    the relay, so the mail may have left; it is not repeated blindly but
    dead-lettered, and an admin's retry (GET/POST /api/v1/admin/failed-tasks)
    sends it. ``send``: marked ``sending``, which commits before the relay is
    spoken to, so a crash mid-send is detected.
    """
    if mail is None or mail.state in ("sent", "stored", "suppressed", "failed"):
        return "skip"
    if mail.recipient.endswith(".invalid"):
        mail.state, mail.last_error = "suppressed", "recipient address is not deliverable"
        return "skip"
    mail.attempts += 1
    if mail.state == "sending":
        mail.state = "uncertain"
        mail.last_error = "delivery uncertain: the worker died while sending"
        return "uncertain"
    mail.state = "sending"
    return "send"


def record_outcome(mail: OutboundMail, outcome: str, error: str | None) -> None:
    """The relay's answer for one mail: ``sent``, ``stored`` (no relay) or ``failed`` (5xx)."""
    mail.state, mail.last_error = outcome, error
    mail.sent_at = utcnow() if outcome == "sent" else None


def not_sent(mail: OutboundMail) -> None:
    """Back to ``pending`` after a transient failure: nothing left; the next attempt sends it."""
    if mail.state == "sending":
        mail.state = "pending"


def record_delivered(session: Session, ids: list[uuid.UUID], *, relayed: bool) -> None:
    """:func:`record_outcome` ``sent`` (or ``stored`` without a relay) for many mails:
    the usual outcome of a batch, in one ``UPDATE``."""
    if not ids:
        return
    session.execute(
        update(OutboundMail)
        .where(OutboundMail.id.in_(ids))
        .values(
            state="sent" if relayed else "stored",
            last_error=None,
            sent_at=utcnow() if relayed else None,
        )
        .execution_options(synchronize_session=False)
    )


def prepare_reply(session: Session, ctx: MailContext, message_id: uuid.UUID) -> OutboundMail | None:
    """Compose the mail of an agent's public reply, once (idempotent)."""
    existing = session.scalar(select(OutboundMail).where(OutboundMail.message_id == message_id))
    if existing is not None:
        return existing
    message = session.get(Message, message_id)
    if message is None or message.kind != "reply":
        return None
    ticket = session.get(Ticket, message.ticket_id)
    if ticket is None:
        return None
    customer = ticket.customer
    if message.email_message_id is None:
        message.email_message_id = make_message_id(ctx.support.domain)
    author = message.author
    from_name = (
        f"{author.name or author.email} ({ctx.display_name})" if author else ctx.display_name
    )
    attachments: list[tuple[str, str, bytes]] = []
    if ctx.storage is not None:
        budget = MAX_ATTACHMENT_BYTES_PER_MAIL
        for att in session.scalars(
            select(Attachment)
            .where(Attachment.message_id == message.id, Attachment.quarantine_reason.is_(None))
            .order_by(Attachment.created_at)
        ):
            if att.size <= budget and ctx.storage.exists(att.sha256):
                with ctx.storage.open(att.sha256) as fh:
                    attachments.append((att.filename, att.content_type, fh.read()))
                budget -= att.size
    refs = _thread_ids(session, ticket)
    outgoing = Outgoing(
        from_name=from_name,
        from_address=ctx.support.address,
        to_name=customer.name,
        to_address=customer.email,
        reply_to=reply_address(ctx.support, ticket, customer.email),
        subject=subject_for(ticket.title, ticket.number),
        message_id=message.email_message_id,
        text=message.body_text,
        html=message.body_html,
        in_reply_to=_last_customer_message_id(session, ticket),
        references=[r for r in refs if r != message.email_message_id],
        attachments=attachments,
    )
    return _queue(
        session,
        OutboundMail(
            ticket_id=ticket.id,
            message_id=message.id,
            kind="reply",
            automatic=False,
            recipient=customer.email,
            message_id_header=message.email_message_id,
            subject=outgoing.subject,
            raw=compose(outgoing),
        ),
    )
