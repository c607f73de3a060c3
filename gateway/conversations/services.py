"""The conversation of a ticket: listing and adding messages.

Kinds: ``customer`` (from the ticket's customer), ``reply`` (an agent's public
answer, emailed to the customer), ``note`` (internal: never shown to customers,
never emailed), ``system`` (the gateway's own, e.g. bounces).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from gateway.attachments.models import Attachment
from gateway.attachments.previews import preview_kind
from gateway.conversations.models import Message
from gateway.conversations.rendering import render_body
from gateway.conversations.schemas import MessageCreate
from gateway.db import flush, new_id, utcnow
from gateway.errors import InvalidTransition, ValidationFailed
from gateway.events import enqueue, record_event
from gateway.pagination import decode_cursor, encode_cursor
from gateway.permissions import Principal, can_see_internal
from gateway.tickets.history import audit
from gateway.tickets.models import Ticket
from gateway.tickets.services import check_writable, flush_change, touch


def author_ref(message: Message) -> dict[str, Any] | None:
    user = message.author
    if user is None:
        return None
    return {"id": str(user.id), "email": user.email, "name": user.name, "role": user.role}


def attachment_out(att: Attachment) -> dict[str, Any]:
    quarantined = att.quarantine_reason is not None
    return {
        "id": str(att.id),
        "ticket_id": str(att.ticket_id),
        "message_id": str(att.message_id) if att.message_id else None,
        "filename": att.filename,
        "content_type": att.content_type,
        "size": att.size,
        "sha256": att.sha256,
        "inline": att.inline,
        "created_at": att.created_at.isoformat(),
        "download_url": f"/api/v1/attachments/{att.id}",
        "preview_url": f"/api/v1/attachments/{att.id}/preview"
        if preview_kind(att.content_type, quarantined)
        else None,
        "quarantined": quarantined,
        "quarantine_reason": att.quarantine_reason,
    }


def message_out(message: Message, attachments: list[Attachment]) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "ticket_id": str(message.ticket_id),
        "author": author_ref(message),
        "kind": message.kind,
        "channel": message.channel,
        "body_text": message.body_text,
        "body_html": message.body_html,
        "in_reply_to": str(message.in_reply_to_id) if message.in_reply_to_id else None,
        "email_message_id": message.email_message_id,
        "attachments": [attachment_out(a) for a in attachments],
        "created_at": message.created_at.isoformat(),
    }


def messages_out(session: Session, messages: list[Message]) -> list[dict[str, Any]]:
    by_message: dict[uuid.UUID, list[Attachment]] = {m.id: [] for m in messages}
    if messages:
        for att in session.scalars(
            select(Attachment)
            .where(Attachment.message_id.in_(list(by_message)))
            .order_by(Attachment.created_at)
        ):
            if att.message_id is not None:
                by_message[att.message_id].append(att)
    return [message_out(m, by_message[m.id]) for m in messages]


def list_messages(
    session: Session, principal: Principal, ticket: Ticket, limit: int, cursor: str | None
) -> tuple[list[Message], str | None]:
    stmt = select(Message).where(Message.ticket_id == ticket.id)
    if not can_see_internal(principal):
        stmt = stmt.where(Message.kind != "note")
    if cursor:
        values = decode_cursor(cursor, kinds=("messages",))
        try:
            after = (datetime.fromisoformat(values[1]), uuid.UUID(values[2]))
        except (IndexError, TypeError, ValueError):
            raise ValidationFailed.on("cursor", "not a cursor this API issued") from None
        stmt = stmt.where(tuple_(Message.created_at, Message.id) > after)
    rows = list(
        session.scalars(stmt.order_by(Message.created_at, Message.id).limit(limit + 1)).unique()
    )
    more = len(rows) > limit
    rows = rows[:limit]
    if not more or not rows:
        return rows, None
    last = rows[-1]
    return rows, encode_cursor("messages", last.created_at.isoformat(), str(last.id))


def add_message(
    session: Session,
    principal: Principal,
    ticket: Ticket,
    data: MessageCreate,
    *,
    channel: str = "api",
) -> Message:
    """Add a message from the caller; raises ValidationFailed, Conflict, InvalidTransition."""
    check_writable(ticket)
    if principal.is_customer and data.internal:
        raise ValidationFailed.on("internal", "customers cannot write internal notes")
    body_text, body_html = render_body(data.body, data.format)
    if not body_text.strip():
        raise ValidationFailed.on("body", "must not be empty")
    parent: Message | None = None
    if data.in_reply_to is not None:
        parent = session.get(Message, data.in_reply_to)
        if (
            parent is None
            or parent.ticket_id != ticket.id
            or (parent.kind == "note" and not can_see_internal(principal))
        ):
            raise ValidationFailed.on("in_reply_to", "no such message on this ticket")
    if principal.is_customer:
        kind = "customer"
        if ticket.status == "closed":
            raise InvalidTransition(
                "this ticket is closed; open a new ticket to follow up",
                data={"from": "closed", "to": "open", "allowed": []},
            )
    else:
        kind = "note" if data.internal else "reply"
    return record_message(
        session,
        principal,
        ticket,
        kind=kind,
        channel=channel,
        body_text=body_text,
        body_html=body_html,
        in_reply_to_id=parent.id if parent else None,
        send_email=kind == "reply",
    )


def record_message(
    session: Session,
    principal: Principal,
    ticket: Ticket,
    *,
    kind: str,
    channel: str,
    body_text: str,
    body_html: str | None,
    in_reply_to_id: uuid.UUID | None = None,
    email_message_id: str | None = None,
    send_email: bool = False,
) -> Message:
    """Append a message with its bookkeeping, whatever channel it came from.

    Counts, ``updated_at`` and version, a customer's reopening of a solved
    ticket (audited), the ``message.created`` event and, for ``send_email``,
    the outbox task that emails it to the customer. The caller has checked
    that the ticket takes messages.
    """
    message = Message(
        id=new_id(),
        ticket_id=ticket.id,
        author_id=principal.user_id,
        kind=kind,
        channel=channel,
        body_text=body_text,
        body_html=body_html,
        in_reply_to_id=in_reply_to_id,
        email_message_id=email_message_id,
        created_at=utcnow(),
    )
    session.add(message)
    ticket.message_count += 1
    if kind == "note":
        ticket.note_count += 1
    changes: dict[str, list[Any]] = {}
    if kind == "customer" and ticket.status == "solved":
        changes["status"] = ["solved", "open"]
        ticket.status = "open"
    touch(ticket)
    flush_change(session)
    for name, (old, new) in changes.items():
        audit(session, ticket, principal, "updated", name, old, new)
    if changes:
        record_event(
            session, "ticket.updated", ticket=ticket, actor=principal.as_actor(), changes=changes
        )
    record_event(
        session,
        "message.created",
        ticket=ticket,
        actor=principal.as_actor(),
        internal=kind == "note",
        message_id=str(message.id),
    )
    if send_email:
        # Emailed to the customer by the outbound mail task.
        enqueue(
            session,
            "email.reply",
            str(message.id),
            {"message_id": str(message.id), "ticket_id": str(ticket.id)},
        )
    flush(session)
    return message
