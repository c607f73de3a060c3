"""Erasure of a customer's personal data (GDPR art. 17 style), audited.

What goes:
- every ticket of the customer, purged like ``DELETE ?purge=true`` (messages,
  metadata, history, attachment rows; files queued for collection), and
  their live events and pending outbox tasks;
- the text of messages they wrote on other tickets (replaced by ``[erased]``);
- their address, name and Slack id (the row stays, anonymised and inactive,
  so that audit trails keep a stable id), and all their API tokens.

What stays: an ``audit_log`` entry naming the user id and counts, no personal data.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from gateway.audit import log_action
from gateway.conversations.models import Message
from gateway.errors import Conflict
from gateway.events import Event, OutboxTask
from gateway.permissions import Principal, require_admin
from gateway.tickets import services as tickets
from gateway.tickets.models import Ticket
from gateway.users.models import ApiToken, User

ERASED_TEXT = "[erased]"


def erase_customer(session: Session, principal: Principal, user: User) -> dict[str, Any]:
    require_admin(principal)
    if user.role != "customer":
        raise Conflict("only customers can be erased; change the user's role first")
    ticket_rows = (
        session.scalars(select(Ticket).where(Ticket.customer_id == user.id)).unique().all()
    )
    ticket_ids = [t.id for t in ticket_rows]
    files: set[str] = set()
    for ticket in ticket_rows:
        files.update(tickets.purge(session, principal, ticket, force=True))
    if ticket_ids:
        keys = [str(i) for i in ticket_ids]
        session.execute(
            delete(OutboxTask)
            .where(OutboxTask.state == "pending")
            .where(OutboxTask.payload["ticket_id"].as_string().in_(keys))
        )
    # Their events may carry their address (as actor) or words (changes); the
    # ticket.deleted events just written by the purge carry neither and stay,
    # so live subscribers learn that the tickets are gone.
    session.execute(
        delete(Event).where(Event.customer_id == user.id, Event.type != "ticket.deleted")
    )
    redacted = session.execute(
        update(Message)
        .where(Message.author_id == user.id)
        .values(body_text=ERASED_TEXT, body_html=None, author_id=None)
    ).rowcount  # type: ignore[attr-defined]
    session.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
    user.email = f"erased-{uuid.uuid4().hex}@erased.invalid"
    user.name = ""
    user.slack_user_id = None
    user.active = False
    summary = {
        "user_id": str(user.id),
        "tickets_purged": len(ticket_ids),
        "messages_redacted": int(redacted or 0),
        "files_queued": len(files),
    }
    log_action(
        session,
        principal,
        "user.erased",
        "user",
        str(user.id),
        **{k: v for k, v in summary.items() if k != "user_id"},
    )
    session.flush()
    return summary
