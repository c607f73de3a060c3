from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db import Base, UTCDateTime, new_id, utcnow

OUTBOUND_STATES = ("pending", "sending", "sent", "stored", "failed", "suppressed", "uncertain")


class OutboundMail(Base):
    __tablename__ = "outbound_mail"
    __table_args__ = (
        Index("ix_outbound_mail_recipient", "recipient", "automatic", "created_at"),
        Index("ix_outbound_mail_ticket", "ticket_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    ticket_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE")
    )
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(16))
    automatic: Mapped[bool] = mapped_column(default=False)
    recipient: Mapped[str] = mapped_column(String(320))
    message_id_header: Mapped[str] = mapped_column(String(255), unique=True)
    subject: Mapped[str] = mapped_column(String(998))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
