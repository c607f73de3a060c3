"""Running one outbox task, whoever runs it (the in-process runner or Celery).

The ``outbox_tasks`` row is the source of truth; a Celery message only says
"look at row X". Running a row:

    pending/queued ──claim (row lock, attempts+1)──► running ──ok──► done
                                                        │
                          error, attempts < max ──► pending (available_at = now + backoff)
                          error, attempts ≥ max ──► dead (listed by
                                                    GET /api/v1/admin/failed-tasks)
                          "wait" (a retryable GatewayError with data retry_after,
                          e.g. Slack's 429) ──► pending at now + retry_after,
                                                the attempt not counted

A row that is ``running`` or ``done`` when a message for it arrives is left
alone, so a duplicate message, a redelivery after ``kill -9`` or two workers
at once have the effect of one run. A worker that dies mid-task leaves the
row ``running``; the sweeper hands it back after ``STALE_AFTER``.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update

from gateway.db import Database, utcnow
from gateway.errors import GatewayError
from gateway.events import OutboxTask

log = logging.getLogger("supportgate.tasks")

MAX_ATTEMPTS = 8
STALE_AFTER = timedelta(seconds=360)
QUEUED_GRACE = timedelta(seconds=5)

Handler = Callable[[dict[str, Any]], None]


class PermanentTaskError(Exception):
    """Retrying would not help (or would do harm): dead-letter the task at once."""


def backoff(attempt: int, base: float = 2.0, cap: float = 600.0) -> float:
    """Exponential backoff with jitter, in seconds."""
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311


def claim(db: Database, task_id: uuid.UUID) -> tuple[str, dict[str, Any], int] | None:
    """Take one row for running; None when it is not (or no longer) runnable."""
    with db.transaction() as session:
        stmt = select(OutboxTask).where(OutboxTask.id == task_id)
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        row = session.scalar(stmt)
        if row is None or row.state not in ("pending", "queued"):
            return None
        row.state = "running"
        row.attempts += 1
        row.updated_at = utcnow()
        return row.kind, dict(row.payload), row.attempts


def finish(
    db: Database,
    task_id: uuid.UUID,
    error: str | None,
    attempts: int,
    max_attempts: int = MAX_ATTEMPTS,
    *,
    wait: float | None = None,
) -> str:
    with db.transaction() as session:
        row = session.get(OutboxTask, task_id)
        if row is None:
            return "gone"
        row.updated_at = utcnow()
        if wait is not None:
            # Asked to come back later (rate limit, a busy resource): not a failure.
            row.state, row.last_error = "pending", error
            row.attempts = max(0, row.attempts - 1)
            row.available_at = utcnow() + timedelta(seconds=wait)
        elif error is None:
            row.state, row.last_error = "done", None
        elif attempts >= max_attempts:
            row.state, row.last_error = "dead", error
            log.error(
                "task dead-lettered",
                extra={"task_id": str(task_id), "kind": row.kind, "error": error},
            )
        else:
            row.state, row.last_error = "pending", error
            row.available_at = utcnow() + timedelta(seconds=backoff(attempts))
        return row.state


def run_task(
    db: Database,
    handlers: dict[str, Handler],
    task_id: uuid.UUID,
    max_attempts: int = MAX_ATTEMPTS,
) -> str:
    """Claim, run and settle one row; returns its new state (or 'skipped')."""
    claimed = claim(db, task_id)
    if claimed is None:
        return "skipped"
    kind, payload, attempts = claimed
    handler = handlers.get(kind)
    if handler is None:
        return finish(db, task_id, f"no handler for {kind}", max_attempts, max_attempts)
    try:
        handler(payload)
    except PermanentTaskError as exc:
        return finish(db, task_id, f"{exc}"[:2000], max_attempts, max_attempts)
    except Exception as exc:
        wait = exc.data.get("retry_after") if isinstance(exc, GatewayError) else None
        if wait is not None and isinstance(exc, GatewayError) and exc.retryable:
            log.info(
                "task deferred",
                extra={"task_id": str(task_id), "kind": kind, "seconds": wait, "why": exc.detail},
            )
            return finish(
                db,
                task_id,
                f"{exc.detail}; retrying in {wait} s"[:2000],
                attempts,
                max_attempts,
                wait=float(wait),
            )
        log.exception(
            "task failed", extra={"task_id": str(task_id), "kind": kind, "attempt": attempts}
        )
        return finish(db, task_id, f"{type(exc).__name__}: {exc}"[:2000], attempts, max_attempts)
    return finish(db, task_id, None, attempts, max_attempts)


def sweep(db: Database, stale_after: timedelta = STALE_AFTER) -> int:
    """Hand back rows a dead worker left ``running`` or a lost message left ``queued``."""
    now = utcnow()
    with db.transaction() as session:
        result = session.execute(
            update(OutboxTask)
            .where(
                or_(
                    (OutboxTask.state == "running") & (OutboxTask.updated_at < now - stale_after),
                    (OutboxTask.state == "queued") & (OutboxTask.updated_at < now - stale_after),
                )
            )
            .values(state="pending", updated_at=utcnow())
        )
        count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if count:
        log.warning("re-queued stale tasks", extra={"count": count})
    return count


def due(db: Database, kinds: list[str], limit: int = 100) -> list[tuple[uuid.UUID, str]]:
    """Pending rows that are due and were not just published by their producer.

    They are marked ``queued`` in the same transaction, so two relays never
    publish the same row; the caller publishes them after this commits.
    """
    now = utcnow()
    with db.transaction() as session:
        stmt = (
            select(OutboxTask)
            .where(
                OutboxTask.state == "pending",
                OutboxTask.kind.in_(kinds),
                OutboxTask.available_at <= now,
                OutboxTask.updated_at <= now - QUEUED_GRACE,
            )
            .order_by(OutboxTask.available_at)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = session.scalars(stmt).all()
        for row in rows:
            row.state, row.updated_at = "queued", now
        return [(row.id, row.kind) for row in rows]
