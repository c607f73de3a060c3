"""Turning a stored, parsed inbound message into tickets and messages.

``process_inbound`` is the ingest step; it runs once per stored message, in
one transaction, and is idempotent: a row that is no longer ``received`` is
left alone, so a retried or doubled task changes nothing.

    quarantined by the parser          → state quarantined (raw kept, reason noted)
    no usable sender                   → quarantined
    bounce (DSN)                       → system message on the ticket whose mail
                                         bounced, else ignored; never a ticket
    same Message-ID from same sender   → duplicate
    auto-reply                         → system message on a known ticket, else ignored
    follow-up (see threading.py)       → message on the ticket; a customer's
                                         reply reopens a solved ticket; a closed,
                                         archived or deleted ticket gets a new
                                         ticket with metadata follow_up_of
    anything else                      → a new ticket, acknowledged by mail
                                         unless the sender must not get automatic mail
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.attachments.policy import Policies
from gateway.attachments.services import store_mail_file
from gateway.conversations.models import Message
from gateway.conversations.services import record_message
from gateway.db import deferred_flush, lookup, prefetched, utcnow
from gateway.inbound.addresses import SupportAddress
from gateway.inbound.message import InboundMessage
from gateway.inbound.models import InboundMail, TicketParticipant
from gateway.inbound.rules import Verdict, judge
from gateway.inbound.threading import SUBJECT_NUMBER, find_thread, ticket_by_message_ids
from gateway.metadata.models import TicketMetadata
from gateway.outbound.services import (
    MailContext,
    automatic_mail_counts,
    schedule_acknowledgment,
)
from gateway.permissions import Principal
from gateway.tickets.models import Ticket
from gateway.tickets.schemas import TicketCreate
from gateway.tickets.services import create_ticket, reserve_numbers
from gateway.users.models import User
from gateway.users.services import get_or_create_customer, normalise_email

log = logging.getLogger("supportgate.ingest")

MAX_TITLE = 300
MAX_BODY = 200_000


def _finish(mail: InboundMail, state: str, **outcome: Any) -> dict[str, Any]:
    mail.state = state
    mail.processed_at = utcnow()
    mail.outcome = {"state": state, **{k: v for k, v in outcome.items() if v is not None}}
    return mail.outcome


def _visible(message: InboundMessage, visible_text: Any) -> str:
    text = visible_text(message.text) if visible_text else message.text
    return (text or "").strip()[:MAX_BODY] or "(no text)"


def _store_attachments(
    session: Session,
    ctx: MailContext,
    ticket: Ticket,
    msg: Message,
    parsed: InboundMessage,
    author: Principal,
) -> int:
    """Keep every part byte for byte, through the attachment policies: a part
    they refuse is kept quarantined, never dropped."""
    if ctx.storage is None:
        return 0
    policies = ctx.policies or Policies.defaults()
    for att in parsed.attachments:
        store_mail_file(
            session,
            ctx.storage,
            policies,
            author,
            ticket,
            msg,
            data=att.data,
            filename=att.filename,
            inline=att.inline,
        )
    return len(parsed.attachments)


def _add_participants(
    session: Session,
    ctx: MailContext,
    ticket: Ticket,
    parsed: InboundMessage,
    sender: str,
    *,
    new_ticket: bool = False,
) -> None:
    addresses = [a.email for a in parsed.to + parsed.cc] + [sender]
    for address in dict.fromkeys(addresses):
        if not address or "@" not in address or ctx.support.match(address)[0]:
            continue
        if address == ticket.customer.email:
            continue
        # A ticket made by this very message has no participants yet: no lookup.
        if new_ticket or session.get(TicketParticipant, (ticket.id, address)) is None:
            session.add(TicketParticipant(ticket_id=ticket.id, email=address[:320]))


def _system_note(session: Session, ticket: Ticket, text: str, parsed: InboundMessage) -> Message:
    return record_message(
        session,
        Principal.system(),
        ticket,
        kind="system",
        channel="email",
        body_text=text[:MAX_BODY] or "(no text)",
        body_html=None,
        email_message_id=parsed.message_id,
    )


def _open_ticket(
    session: Session,
    ctx: MailContext,
    customer: User,
    parsed: InboundMessage,
    body: str,
    follow_up_of: Ticket | None,
) -> Ticket:
    title = " ".join(parsed.subject.split())[:MAX_TITLE] or "(no subject)"
    ticket = create_ticket(
        session,
        Principal.of(customer),
        TicketCreate(title=title, description=body),
        channel="email",
        customer=customer,
    )
    if follow_up_of is not None:
        session.add(
            TicketMetadata(ticket_id=ticket.id, key="follow_up_of", value=str(follow_up_of.number))
        )
    return ticket


def _sender(mail: InboundMail, parsed: InboundMessage) -> str:
    sender = parsed.sender.email if parsed.sender else ""
    return sender if "@" in sender else mail.envelope_from.strip("<> ").lower()


def independent(mails: list[tuple[InboundMail, InboundMessage]], support: SupportAddress) -> bool:
    """Whether none of ``mails`` can depend on what another of them writes.

    True when each is from a sender of its own and none can thread (no
    references, no ``[#number]``, no reply address, not a bounce or an
    auto-reply) or shares a stored file with another (no attachments): each
    then only reads what was committed before, and the batch can be written
    in one flush (gateway.db.deferred_flush).
    """
    senders: set[str] = set()
    for mail, parsed in mails:
        if parsed.quarantined:
            continue
        if parsed.in_reply_to or parsed.references or SUBJECT_NUMBER.search(parsed.subject):
            return False
        if parsed.attachments:
            return False
        addresses = list(mail.recipients or []) + [a.email for a in parsed.to + parsed.cc]
        if any(support.match(address)[1] for address in addresses):
            return False
        verdict = judge(parsed, mail.envelope_from, support.address)
        if verdict.bounce or verdict.auto_reply:
            return False
        sender = normalise_email(_sender(mail, parsed))
        if sender in senders:
            return False
        senders.add(sender)
    return True


def _batch_lookups(
    session: Session, mails: list[tuple[InboundMail, InboundMessage]]
) -> dict[str, dict[Any, Any]]:
    """What :func:`process_inbound` looks up for each of ``mails``, in four queries
    (for gateway.db.prefetched, with mails that are :func:`independent`): senders,
    second deliveries, rate-limit counts, and the numbers of the tickets they open."""
    senders = [(parsed, _sender(mail, parsed)) for mail, parsed in mails if not parsed.quarantined]
    emails = sorted({normalise_email(sender) for _, sender in senders})
    pairs = {(parsed.message_id, sender) for parsed, sender in senders if parsed.message_id}
    duplicates: dict[tuple[str, str], Any] = dict.fromkeys(pairs)
    if pairs:
        for message_id, email, found in session.execute(
            select(Message.email_message_id, User.email, Message.id)
            .join(User, User.id == Message.author_id)
            .where(Message.email_message_id.in_(sorted({m for m, _ in pairs})))
        ):
            if duplicates.get((message_id, email), found) is None:
                duplicates[message_id, email] = found
    users = dict.fromkeys(emails) | {
        user.email: user for user in session.scalars(select(User).where(User.email.in_(emails)))
    }
    # Each mail of an independent batch opens a ticket unless it is a second
    # delivery or its sender is deactivated (it cannot thread, bounce or be an auto-reply).
    new_tickets = sum(
        1
        for parsed, sender in senders
        if "@" in sender
        and duplicates.get((parsed.message_id, sender)) is None
        and getattr(users.get(normalise_email(sender)), "active", True)
    )
    return {
        "user_by_email": users,
        "duplicate_of": duplicates,
        "automatic_mail_count": automatic_mail_counts(session, emails),
        "ticket_numbers": {"reserved": reserve_numbers(session, new_tickets)},
    }


def process_many(
    session: Session,
    ctx: MailContext,
    mails: list[tuple[InboundMail, InboundMessage]],
    visible_text: Any = None,
) -> list[dict[str, Any]]:
    """:func:`process_inbound` for several stored messages, in order, in ``session``.

    Mails that are :func:`independent` are written in one flush, with what
    they look up fetched in four queries: the ORM then inserts the rows of
    each table together. Otherwise each sees what the one before it wrote.
    """
    if not independent(mails, ctx.support):
        return [process_inbound(session, ctx, m, parsed, visible_text) for m, parsed in mails]
    with deferred_flush(session), prefetched(session, **_batch_lookups(session, mails)):
        return [process_inbound(session, ctx, m, parsed, visible_text) for m, parsed in mails]


def process_inbound(
    session: Session,
    ctx: MailContext,
    mail: InboundMail,
    parsed: InboundMessage,
    visible_text: Any = None,
) -> dict[str, Any]:
    """Ingest one stored message (see the module docstring for the routing)."""
    if mail.state != "received":
        return mail.outcome or {"state": mail.state}
    if parsed.quarantined:
        return _finish(mail, "quarantined", reason=parsed.quarantined)
    sender = _sender(mail, parsed)
    verdict: Verdict = judge(parsed, mail.envelope_from, ctx.support.address)

    if verdict.bounce:
        report = parsed.report
        refs = [report.original_message_id] if report and report.original_message_id else []
        bounced = ticket_by_message_ids(session, refs + parsed.in_reply_to + parsed.references)
        if bounced is None:
            return _finish(mail, "ignored", reason="bounce for mail we do not know")
        details = "; ".join(
            part
            for part in (
                f"recipients: {', '.join(report.recipients)}"
                if report and report.recipients
                else "",
                f"status: {report.status}" if report and report.status else "",
                f"diagnostic: {report.diagnostic}" if report and report.diagnostic else "",
            )
            if part
        )
        note = _system_note(session, bounced, f"Delivery failed. {details}".strip(), parsed)
        mail.ticket_id, mail.message_id = bounced.id, note.id
        return _finish(mail, "processed", kind="bounce", ticket=bounced.number)

    if "@" not in sender:
        return _finish(mail, "quarantined", reason="no sender address")

    if parsed.message_id:
        duplicate = lookup(
            session,
            "duplicate_of",
            (parsed.message_id, sender),
            lambda: session.scalar(
                select(Message.id)
                .join(User, User.id == Message.author_id)
                .where(Message.email_message_id == parsed.message_id, User.email == sender)
                .limit(1)
            ),
        )
        if duplicate is not None:
            return _finish(mail, "duplicate", of_message=str(duplicate))

    match = find_thread(session, parsed, list(mail.recipients or []), ctx.support)
    body = _visible(parsed, visible_text)

    if verdict.auto_reply:
        if match is None:
            return _finish(mail, "ignored", reason="auto-reply to no known ticket")
        note = _system_note(
            session, match.ticket, f"Automatic reply from {sender}:\n\n{body}", parsed
        )
        mail.ticket_id, mail.message_id = match.ticket.id, note.id
        return _finish(mail, "processed", kind="auto-reply", ticket=match.ticket.number)

    name = parsed.sender.name if parsed.sender else ""
    author = get_or_create_customer(session, sender, name)
    if not author.active:
        return _finish(mail, "ignored", reason="sender is deactivated")

    ticket: Ticket | None = match.ticket if match else None
    follow_up_of: Ticket | None = None
    if ticket is not None and (
        ticket.status == "closed" or ticket.archived_at is not None or ticket.deleted_at is not None
    ):
        follow_up_of, ticket = ticket, None

    created = ticket is None
    if ticket is None:
        ticket = _open_ticket(session, ctx, author, parsed, body, follow_up_of)
    kind = "reply" if author.is_staff and not created else "customer"
    message = record_message(
        session,
        Principal.of(author),
        ticket,
        kind=kind,
        channel="email",
        body_text=body,
        body_html=parsed.html,
        email_message_id=parsed.message_id,
    )
    files = _store_attachments(session, ctx, ticket, message, parsed, Principal.of(author))
    _add_participants(session, ctx, ticket, parsed, sender, new_ticket=created)
    if created and not verdict.no_automatic_answer and not author.is_staff:
        schedule_acknowledgment(session, ctx, ticket, message)
    mail.ticket_id, mail.message_id = ticket.id, message.id
    return _finish(
        mail,
        "processed",
        kind="new-ticket" if created else "follow-up",
        how=match.how if match and not created else None,
        ticket=ticket.number,
        follow_up_of=follow_up_of.number if follow_up_of else None,
        attachments=files or None,
    )
