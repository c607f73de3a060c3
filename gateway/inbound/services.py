"""Read access to stored inbound mail."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.errors import NotFound
from gateway.inbound.models import InboundMail


def raw_message(session: Session, message_id: str) -> bytes:
    """The raw bytes of the email a message came from; NotFound when it did not come by mail."""
    try:
        mid = uuid.UUID(message_id)
    except ValueError:
        raise NotFound("no such message") from None
    raw = session.scalar(select(InboundMail.raw).where(InboundMail.message_id == mid).limit(1))
    if raw is None:
        raise NotFound("no raw email for this message")
    return raw
