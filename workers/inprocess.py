"""The embedded default's task processing: the outbox table is the queue.

A :class:`TaskRunner` claims due ``outbox_tasks`` rows (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so several runners share the work) and runs them
through :func:`workers.outbox.run_tasks`: the same claim / batch / backoff /
dead-letter rules as the Celery workers. Rows left ``running`` by a process
that died are handed back by :func:`workers.outbox.sweep`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta

from sqlalchemy import select

from gateway.db import Database, utcnow
from gateway.events import OutboxTask
from workers.outbox import MAX_ATTEMPTS, STALE_AFTER, Handler, run_tasks, sweep

log = logging.getLogger("supportgate.tasks")


class TaskRunner:
    def __init__(
        self,
        db: Database,
        handlers: dict[str, Handler],
        *,
        poll_interval: float = 0.5,
        batch: int = 10,
        max_attempts: int = MAX_ATTEMPTS,
        stale_after: timedelta = STALE_AFTER,
    ) -> None:
        self.stale_after = stale_after
        self.db = db
        self.handlers = handlers
        self.poll_interval = poll_interval
        self.batch = batch
        self.max_attempts = max_attempts
        self.wakeup = threading.Event()

    def _due(self) -> list[uuid.UUID]:
        with self.db.transaction() as session:
            return list(
                session.scalars(
                    select(OutboxTask.id)
                    .where(
                        OutboxTask.state.in_(("pending", "queued")),
                        OutboxTask.kind.in_(list(self.handlers)),
                        OutboxTask.available_at <= utcnow(),
                    )
                    .order_by(OutboxTask.available_at, OutboxTask.created_at)
                    .limit(self.batch)
                )
            )

    def run_once(self) -> int:
        states = run_tasks(self.db, self.handlers, self._due(), self.max_attempts)
        return sum(state != "skipped" for state in states)

    def run(self, stop: threading.Event) -> None:
        sweep(self.db, self.stale_after)
        last_sweep = utcnow()
        while not stop.is_set():
            try:
                ran = self.run_once()
                if utcnow() - last_sweep > timedelta(seconds=60):
                    sweep(self.db, self.stale_after)
                    last_sweep = utcnow()
            except Exception:  # database away: wait and try again
                log.exception("task runner could not reach the database")
                ran = 0
                stop.wait(2.0)
            if not ran:
                self.wakeup.wait(self.poll_interval)
                self.wakeup.clear()

    def drain(self, timeout: float = 30.0) -> None:
        """Run until no task is due (tests, and a clean shutdown)."""
        deadline = utcnow() + timedelta(seconds=timeout)
        while self.run_once() and utcnow() < deadline:
            pass
