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
    """Puts committed outbox rows on their Celery queues.

    ``rows_per_message`` > 1 names up to that many rows of one queue in one
    message (the task runs them in turn): a producer that commits rows in
    batches (the SMTP edge) then builds one Celery message per batch instead
    of one per row, which was a quarter of its CPU.
    """

    def __init__(self, app: Celery, *, rows_per_message: int = 1) -> None:
        if rows_per_message < 1:
            raise ValueError("rows_per_message must be at least 1")
        self.app = app
        self.rows_per_message = rows_per_message

    def publish(self, rows: list[tuple[uuid.UUID, str]]) -> None:
        """Send the rows' messages, in one Redis round trip (kombu's publish batch).

        Rows keep their order within a queue. A batch that fails part-way may
        have sent some of its messages: the relay sends the rows again, and a
        second message for a row is harmless.
        """
        if not rows:
            return
        by_queue: dict[str, list[str]] = {}
        for task_id, kind in rows:
            by_queue.setdefault(queue_for(kind), []).append(str(task_id))
        step = self.rows_per_message
        with self.app.producer_or_acquire() as producer, producer.batch():
            for queue, ids in by_queue.items():
                for start in range(0, len(ids), step):
                    self.app.send_task(
                        TASK_FOR_QUEUE.get(queue, "supportgate.run"),
                        args=ids[start : start + step],
                        queue=queue,
                        producer=producer,
                    )

    def backlogged(self, queues: set[str]) -> set[str]:
        """Which of ``queues`` still hold messages waiting for a worker (Redis LLEN)."""
        with self.app.pool.acquire(block=True) as conn:
            client = conn.default_channel.client
            return {queue for queue in sorted(queues) if client.llen(queue)}

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
        """Publish due rows; returns how many.

        A producer publishes its rows right after its commit and leaves them
        ``pending``; after ``QUEUED_GRACE`` the relay publishes whatever is
        still pending (the producer died before publishing, or Redis lost the
        message in a restart). While a queue still holds messages, though, its
        pending rows are most likely waiting in it behind a backlog, and
        publishing them again would only add a second message per row for the
        workers to skip: for such a queue the relay waits until it has drained
        (or, under endless load, until a row is ``stale_after`` old). Rows that
        ran before (retries whose time has come, rows the sweeper handed back)
        are in no queue and are published as usual.
        """
        kinds = list(QUEUES)
        busy: set[str] = set()
        backlogged = getattr(self.publisher, "backlogged", None)
        if backlogged is not None:
            busy = backlogged({QUEUES[kind] for kind in kinds})
        free = [kind for kind in kinds if QUEUES[kind] not in busy]
        waiting = [kind for kind in kinds if QUEUES[kind] in busy]
        rows = due(self.db, free)
        if waiting and len(rows) < 100:
            rows += due(self.db, waiting, 100 - len(rows), retried_only=True)
        if waiting and len(rows) < 100:
            rows += due(self.db, waiting, 100 - len(rows), grace=self.stale_after)
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
