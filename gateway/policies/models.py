from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db import Base, UTCDateTime, utcnow


class DeletionPolicy(Base):
    """The single deletion policy row (id 1)."""

    __tablename__ = "deletion_policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purge_deleted_after_days: Mapped[int | None] = mapped_column(Integer)
    archive_closed_after_days: Mapped[int | None] = mapped_column(Integer)
    require_soft_delete_before_purge: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
