"""The audit trail of a ticket: one row per changed field, with its actor."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.errors import ValidationFailed
from gateway.pagination import decode_cursor, encode_cursor
from gateway.permissions import Principal
from gateway.tickets.models import Ticket, TicketHistory


def audit(
    session: Session,
    ticket: Ticket,
    principal: Principal,
    action: str,
    field: str | None = None,
    old: Any = None,
    new: Any = None,
) -> None:
    session.add(
        TicketHistory(
            ticket_id=ticket.id,
            actor_id=principal.user_id,
            action=action,
            field=field,
            old_value=old,
            new_value=new,
        )
    )


def history_page(
    session: Session, ticket: Ticket, limit: int, cursor: str | None
) -> tuple[list[TicketHistory], str | None]:
    stmt = select(TicketHistory).where(TicketHistory.ticket_id == ticket.id)
    if cursor:
        values = decode_cursor(cursor, kinds=("history",))
        try:
            after = int(values[1])
        except (IndexError, TypeError, ValueError):
            raise ValidationFailed.on("cursor", "not a cursor this API issued") from None
        stmt = stmt.where(TicketHistory.id > after)
    rows = list(session.scalars(stmt.order_by(TicketHistory.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor("history", rows[-1].id) if more and rows else None


def history_out(row: TicketHistory) -> dict[str, Any]:
    actor = row.actor
    return {
        "id": row.id,
        "at": row.at.isoformat(),
        "actor": {"id": str(actor.id), "email": actor.email, "name": actor.name} if actor else None,
        "action": row.action,
        "field": row.field,
        "old_value": row.old_value,
        "new_value": row.new_value,
    }
