"""Domain rows as the cards blocks.py draws."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.slack.blocks import MessageCard, Person, TicketCard
from gateway.attachments.models import Attachment
from gateway.conversations.models import Message
from gateway.tickets.models import Ticket
from gateway.tickets.workflow import priority_name
from gateway.users.models import User


def person(user: User | None) -> Person | None:
    return Person(user.name, user.email) if user is not None else None


def ticket_card(ticket: Ticket) -> TicketCard:
    customer = person(ticket.customer)
    assert customer is not None
    return TicketCard(
        id=str(ticket.id),
        number=ticket.number,
        title=ticket.title,
        customer=customer,
        priority=priority_name(ticket.priority),
        status=ticket.status,
        assignee=person(ticket.assignee),
        description=ticket.description or "",
        deleted=ticket.deleted_at is not None,
        archived=ticket.archived_at is not None,
    )


def message_card(session: Session, message: Message) -> MessageCard:
    author = message.author
    names = session.scalars(
        select(Attachment.filename)
        .where(Attachment.message_id == message.id)
        .order_by(Attachment.created_at)
    ).all()
    return MessageCard(
        id=str(message.id),
        kind=message.kind,
        channel=message.channel,
        author=(author.name or author.email) if author else "Supportgate",
        body=message.body_text,
        attachments=tuple(names),
    )
