"""Which ticket an inbound message belongs to, in the contract's order:

1. ``In-Reply-To`` / ``References`` name a message of the ticket (one we
   stored or one we sent);
2. it was sent to the ticket's ``+t<number>-<tag>`` reply address, and the
   tag was issued to this sender;
3. its subject carries ``[#<number>]`` and the sender is a participant: the
   ticket's customer, an address that was on To/Cc of the ticket's mail, or
   an active agent/admin. A stranger's ``[#number]`` never threads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.conversations.models import Message
from gateway.inbound.addresses import SupportAddress, ticket_for_tag
from gateway.inbound.message import InboundMessage
from gateway.inbound.models import TicketParticipant
from gateway.outbound.models import OutboundMail
from gateway.tickets.models import Ticket
from gateway.users.models import User

SUBJECT_NUMBER = re.compile(r"\[#(\d{1,10})\]")


@dataclass(frozen=True)
class ThreadMatch:
    ticket: Ticket
    how: str


def ticket_by_message_ids(session: Session, ids: list[str]) -> Ticket | None:
    if not ids:
        return None
    ticket_id = session.scalar(
        select(Message.ticket_id).where(Message.email_message_id.in_(ids)).limit(1)
    ) or session.scalar(
        select(OutboundMail.ticket_id)
        .where(OutboundMail.message_id_header.in_(ids), OutboundMail.ticket_id.is_not(None))
        .limit(1)
    )
    return session.get(Ticket, ticket_id) if ticket_id else None


def is_participant(session: Session, ticket: Ticket, sender: str) -> bool:
    if ticket.customer.email == sender:
        return True
    if session.get(TicketParticipant, (ticket.id, sender)) is not None:
        return True
    staff = session.scalar(select(User).where(User.email == sender))
    return staff is not None and staff.is_staff and staff.active


def find_thread(
    session: Session, message: InboundMessage, recipients: list[str], support: SupportAddress
) -> ThreadMatch | None:
    sender = message.sender.email if message.sender else ""
    refs = list(dict.fromkeys(message.in_reply_to + list(reversed(message.references))))
    ticket = ticket_by_message_ids(session, refs)
    if ticket is not None:
        return ThreadMatch(ticket, "references")
    addresses = recipients + [a.email for a in message.to + message.cc]
    for address in dict.fromkeys(addresses):
        ours, tag = support.match(address)
        if ours and tag:
            ticket = ticket_for_tag(session, tag, sender)
            if ticket is not None:
                return ThreadMatch(ticket, "reply-address")
    for number in SUBJECT_NUMBER.findall(message.subject):
        ticket = session.scalar(select(Ticket).where(Ticket.number == int(number)))
        if ticket is not None and is_participant(session, ticket, sender):
            return ThreadMatch(ticket, "subject")
    return None
