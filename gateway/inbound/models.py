from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, LargeBinary, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db import Base, UTCDateTime, new_id, utcnow

INBOUND_STATES = ("received", "processed", "duplicate", "ignored", "quarantined", "failed")


class InboundMail(Base):
    """A raw message exactly as received, and how far its processing got.

    The row (with the bytes) commits before the SMTP ``250`` / IMAP flag;
    everything after is an idempotent step keyed by this id.
    """

    __tablename__ = "inbound_mail"
    __table_args__ = (
        Index("ix_inbound_mail_state", "state", "received_at"),
        Index("ix_inbound_mail_message", "message_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source: Mapped[str] = mapped_column(String(8))
    source_ref: Mapped[str | None] = mapped_column(String(200), unique=True)
    envelope_from: Mapped[str] = mapped_column(String(320), default="")
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="received")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ticket_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    message_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ImapCheckpoint(Base):
    """Where the IMAP poller is in one mailbox."""

    __tablename__ = "imap_checkpoints"

    mailbox: Mapped[str] = mapped_column(String(300), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(Integer)
    last_uid: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class TicketParticipant(Base):
    """An address that was on To/Cc of a ticket's mail: it may thread by ``[#number]``."""

    __tablename__ = "ticket_participants"

    ticket_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
