"""/api/v1/admin: operating the queue (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint
from pydantic import BaseModel
from sqlalchemy.orm import Session

from gateway.conversations.schemas import MessageListQuery
from gateway.outbox import failed_task_out, list_failed, retry_failed
from gateway.permissions import Principal
from web.spec import endpoint

bp = Blueprint("admin", __name__)


class FailedTask(BaseModel):
    id: str
    kind: str
    payload: dict[str, Any]
    state: str
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class FailedTaskPage(BaseModel):
    items: list[FailedTask]
    next_cursor: str | None


@bp.get("/admin/failed-tasks")
@endpoint(
    summary="Tasks that failed every attempt (the dead-letter list)",
    tag="admin",
    query=MessageListQuery,
    response=FailedTaskPage,
)
def failed(session: Session, principal: Principal, query: MessageListQuery):
    rows, cursor = list_failed(session, principal, query.limit, query.cursor)
    return {"items": [failed_task_out(r) for r in rows], "next_cursor": cursor}


@bp.post("/admin/failed-tasks/<task_id>/retry")
@endpoint(summary="Queue a failed task again", tag="admin", response=FailedTask, errors=(409,))
def retry(session: Session, principal: Principal, task_id: str):
    return failed_task_out(retry_failed(session, principal, task_id))
