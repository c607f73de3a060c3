"""Putting committed outbox rows on the Celery queues.

``CeleryPublisher.publish`` is called right after a transaction that wrote
outbox rows commits (the fast path); the :class:`Relay` loop catches every
row the fast path missed (Redis away, process killed between commit and
publish) and rows whose retry time has come. Publishing a row twice is
harmless: the task claims the row under a lock and skips it unless runnable.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta

from celery import Celery
from sqlalchemy import update

from gateway.config import Settings
from gateway.db import Database, utcnow
from gateway.events import OutboxTask
from workers.celery_app import QUEUES, make_celery, queue_for
from workers.outbox import STALE_AFTER, due, sweep

log = logging.getLogger("supportgate.relay")

TASK_FOR_QUEUE = {
    "supportgate.ingest": "supportgate.ingest",
    "supportgate.mail": "supportgate.mail",
    "supportgate.slack": "supportgate.slack",
}


def make_publisher_app(settings: Settings) -> Celery:
    """A Celery app for producers: sends by task name, registers no tasks."""
    return make_celery(settings, with_tasks=False)


class CeleryPublisher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(self, rows: list[tuple[uuid.UUID, str]]) -> None:
        """Send one Celery message per row, in one Redis round trip (kombu's publish batch).

        A batch that fails part-way may have sent some of its messages: the
        relay sends the rows again, and a second message for a row is harmless.
        """
        if not rows:
            return
        with self.app.producer_or_acquire() as producer, producer.batch():
            for task_id, kind in rows:
                queue = queue_for(kind)
                self.app.send_task(
                    TASK_FOR_QUEUE.get(queue, "supportgate.run"),
                    args=[str(task_id)],
                    queue=queue,
                    producer=producer,
                )

    def after_commit(self, rows: list[tuple[uuid.UUID, str]]) -> None:
        """The fast path; a failure here is logged, and the relay publishes later."""
        try:
            self.publish([(i, k) for i, k in rows if k in QUEUES])
        except Exception:
            log.warning("could not publish after commit; the relay will", exc_info=True)


class Relay:
    def __init__(
        self,
        db: Database,
        publisher: CeleryPublisher,
        interval: float = 0.5,
        stale_after: timedelta = STALE_AFTER,
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.interval = interval
        self.stale_after = stale_after

    def run_once(self) -> int:
        rows = due(self.db, list(QUEUES))
        if not rows:
            return 0
        try:
            self.publisher.publish(rows)
        except Exception:
            # Hand them straight back rather than waiting for the sweeper.
            with self.db.transaction() as session:
                session.execute(
                    update(OutboxTask)
                    .where(OutboxTask.id.in_([i for i, _ in rows]), OutboxTask.state == "queued")
                    .values(state="pending", updated_at=utcnow())
                )
            raise
        return len(rows)

    def run(self, stop: threading.Event) -> None:
        last_sweep = 0.0
        while not stop.is_set():
            try:
                published = self.run_once()
                now = utcnow().timestamp()
                if now - last_sweep > min(30.0, self.stale_after.total_seconds() / 2):
                    sweep(self.db, self.stale_after)
                    last_sweep = now
            except Exception:
                log.warning("relay: database or Redis unavailable; retrying", exc_info=True)
                published = 0
                stop.wait(2.0)
            if not published:
                stop.wait(self.interval)
