from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db import Base, UTCDateTime, new_id, utcnow


class TicketMetadata(Base):
    """Free key/value pairs on a ticket (``metadata`` in the API).

    Lookups by key and value use an index the migration creates by backend:
    ``(key, md5(value))`` on PostgreSQL (values reach 4 KiB, past a btree
    entry's limit), ``(key, value)`` on SQLite.
    """

    __tablename__ = "ticket_metadata"
    __table_args__ = (
        UniqueConstraint("ticket_id", "key", name="uq_ticket_metadata_ticket_key"),
        Index("ix_ticket_metadata_key", "key", "ticket_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    ticket_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CustomFieldDefinition(Base):
    """An admin-defined field; removal is soft so that history stays readable."""

    __tablename__ = "custom_field_definitions"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(16))
    options: Mapped[list[Any] | None] = mapped_column(JSON)
    required: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
