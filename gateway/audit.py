"""The admin audit log: actions on things other than tickets (users, erasure).

Ticket changes have their own per-field trail (``tickets/history.py``).
Details never carry personal data: an erased user's log entry names the
user id and counts, not the address.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway.db import Base, UTCDateTime, utcnow
from gateway.permissions import Principal

BigId = BigInteger().with_variant(Integer, "sqlite")


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_target", "target_type", "target_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_id: Mapped[Any] = mapped_column(Uuid, nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def log_action(
    session: Session,
    principal: Principal,
    action: str,
    target_type: str,
    target_id: str,
    **details: Any,
) -> AuditEntry:
    entry = AuditEntry(
        actor_id=principal.user_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        details=details,
        at=utcnow(),
    )
    session.add(entry)
    return entry
