"""/api/v1/tickets/{id}/messages: the conversation."""

from __future__ import annotations

from flask import Blueprint, Response
from sqlalchemy.orm import Session

from gateway.conversations import services
from gateway.conversations.schemas import MessageCreate, MessageListQuery, MessageOut, MessagePage
from gateway.inbound.services import raw_message
from gateway.permissions import Principal, require_admin
from gateway.tickets.services import get_ticket
from web.spec import endpoint

bp = Blueprint("messages", __name__)


@bp.get("/tickets/<ref>/messages")
@endpoint(
    summary="Messages of a ticket, oldest first",
    tag="conversation",
    query=MessageListQuery,
    response=MessagePage,
)
def index(session: Session, principal: Principal, ref: str, query: MessageListQuery):
    ticket = get_ticket(session, principal, ref)
    rows, cursor = services.list_messages(session, principal, ticket, query.limit, query.cursor)
    return {"items": services.messages_out(session, rows), "next_cursor": cursor}


@bp.post("/tickets/<ref>/messages")
@endpoint(
    summary="Add a message (a public reply is emailed to the customer)",
    tag="conversation",
    body=MessageCreate,
    response=MessageOut,
    status=201,
    errors=(409,),
)
def create(session: Session, principal: Principal, ref: str, body: MessageCreate):
    ticket = get_ticket(session, principal, ref)
    message = services.add_message(session, principal, ticket, body, channel="api")
    return services.messages_out(session, [message])[0], 201


@bp.get("/messages/<message_id>/raw")
@endpoint(
    summary="The original email of a message, byte for byte (admin)",
    tag="conversation",
    media_type="message/rfc822",
)
def raw(session: Session, principal: Principal, message_id: str):
    require_admin(principal)
    data = raw_message(session, message_id)
    return Response(
        data,
        mimetype="message/rfc822",
        headers={
            "Content-Disposition": f'attachment; filename="message-{message_id}.eml"',
            "X-Content-Type-Options": "nosniff",
        },
    )
