"""The embedded default's task processing: the outbox table is the queue.

A :class:`TaskRunner` claims pending ``outbox_tasks`` rows (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so several runners share the work), marks them
``running`` and commits, runs the handler, then marks them ``done`` — or puts
them back with exponential backoff and jitter, and after ``max_attempts``
marks them ``dead`` (the dead-letter state an admin can list and replay).
Rows left ``running`` by a process that died are handed back after
``stale_after`` seconds, so a crash loses nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from gateway.db import Database, utcnow
from gateway.events import OutboxTask

log = logging.getLogger("supportgate.tasks")


def backoff(attempt: int, base: float = 2.0, cap: float = 600.0) -> float:
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311


class TaskRunner:
    def __init__(
        self,
        db: Database,
        handlers: dict[str, Callable[[dict[str, Any]], None]],
        *,
        poll_interval: float = 0.5,
        batch: int = 10,
        max_attempts: int = 8,
        stale_after: float = 300.0,
    ) -> None:
        self.db = db
        self.handlers = handlers
        self.poll_interval = poll_interval
        self.batch = batch
        self.max_attempts = max_attempts
        self.stale_after = stale_after
        self.wakeup = threading.Event()

    def requeue_stale(self) -> int:
        cutoff = utcnow() - timedelta(seconds=self.stale_after)
        with self.db.transaction() as session:
            result = session.execute(
                update(OutboxTask)
                .where(OutboxTask.state == "running", OutboxTask.updated_at < cutoff)
                .values(state="pending", updated_at=utcnow())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _claim(self) -> list[tuple[uuid.UUID, str, dict[str, Any], int]]:
        now = utcnow()
        with self.db.transaction() as session:
            stmt = (
                select(OutboxTask)
                .where(
                    OutboxTask.state == "pending",
                    OutboxTask.kind.in_(list(self.handlers)),
                    OutboxTask.available_at <= now,
                )
                .order_by(OutboxTask.available_at, OutboxTask.created_at)
                .limit(self.batch)
            )
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = session.scalars(stmt).all()
            for row in rows:
                row.state = "running"
                row.attempts += 1
                row.updated_at = now
            return [(r.id, r.kind, dict(r.payload), r.attempts) for r in rows]

    def _finish(self, task_id: uuid.UUID, error: str | None, attempts: int) -> None:
        with self.db.transaction() as session:
            row = session.get(OutboxTask, task_id)
            if row is None:
                return
            row.updated_at = utcnow()
            if error is None:
                row.state, row.last_error = "done", None
            elif attempts >= self.max_attempts:
                row.state, row.last_error = "dead", error
            else:
                row.state, row.last_error = "pending", error
                row.available_at = utcnow() + timedelta(seconds=backoff(attempts))

    def run_once(self) -> int:
        claimed = self._claim()
        for task_id, kind, payload, attempts in claimed:
            try:
                self.handlers[kind](payload)
            except Exception as exc:
                log.exception(
                    "task failed",
                    extra={"task_id": str(task_id), "kind": kind, "attempt": attempts},
                )
                self._finish(task_id, f"{type(exc).__name__}: {exc}"[:2000], attempts)
            else:
                self._finish(task_id, None, attempts)
        return len(claimed)

    def run(self, stop: threading.Event) -> None:
        self.requeue_stale()
        last_sweep = utcnow()
        while not stop.is_set():
            try:
                done = self.run_once()
                if utcnow() - last_sweep > timedelta(seconds=60):
                    self.requeue_stale()
                    last_sweep = utcnow()
            except Exception:  # database away: wait and try again
                log.exception("task runner could not reach the database")
                done = 0
                stop.wait(2.0)
            if not done:
                self.wakeup.wait(self.poll_interval)
                self.wakeup.clear()

    def drain(self, timeout: float = 30.0) -> None:
        """Run until no task is due (tests, and a clean shutdown)."""
        deadline = utcnow() + timedelta(seconds=timeout)
        while self.run_once() and utcnow() < deadline:
            pass
