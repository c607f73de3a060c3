"""The dead-letter list: outbox tasks that failed every attempt, and their replay."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import log_action
from gateway.db import utcnow
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.events import OutboxTask
from gateway.pagination import decode_cursor, encode_cursor
from gateway.permissions import Principal, require_admin


def failed_task_out(task: OutboxTask) -> dict[str, Any]:
    return {
        "id": str(task.id),
        "kind": task.kind,
        "payload": task.payload,
        "state": task.state,
        "attempts": task.attempts,
        "last_error": task.last_error,
        "created_at": task.created_at.isoformat(),
        "updated_at": task.updated_at.isoformat(),
    }


def list_failed(
    session: Session, principal: Principal, limit: int, cursor: str | None
) -> tuple[list[OutboxTask], str | None]:
    require_admin(principal)
    stmt = select(OutboxTask).where(OutboxTask.state == "dead")
    if cursor:
        values = decode_cursor(cursor, kinds=("failed-tasks",))
        try:
            after = uuid.UUID(str(values[1]))
        except (IndexError, ValueError):
            raise ValidationFailed.on("cursor", "not a cursor this API issued") from None
        stmt = stmt.where(OutboxTask.id > after)
    rows = list(session.scalars(stmt.order_by(OutboxTask.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor("failed-tasks", str(rows[-1].id)) if more and rows else None


def retry_failed(session: Session, principal: Principal, task_id: str) -> OutboxTask:
    """Put a dead task back in the queue with fresh attempts (audited)."""
    require_admin(principal)
    try:
        tid = uuid.UUID(task_id)
    except ValueError:
        raise NotFound("no such task") from None
    task = session.get(OutboxTask, tid)
    if task is None:
        raise NotFound("no such task")
    if task.state != "dead":
        raise Conflict(f"the task is {task.state}, not failed")
    task.state, task.attempts = "pending", 0
    task.available_at = task.updated_at = utcnow()
    log_action(session, principal, "task.retried", "task", str(task.id), kind=task.kind)
    session.flush()
    return task
