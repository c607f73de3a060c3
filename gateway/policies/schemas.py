from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from gateway.schemas import StrictModel


class DeletionPolicyIn(StrictModel):
    purge_deleted_after_days: int | None = Field(None, ge=0, le=36500)
    archive_closed_after_days: int | None = Field(None, ge=0, le=36500)
    require_soft_delete_before_purge: bool = True


class DeletionPolicyOut(BaseModel):
    purge_deleted_after_days: int | None
    archive_closed_after_days: int | None
    require_soft_delete_before_purge: bool
    updated_at: datetime
