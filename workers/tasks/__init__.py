"""Celery tasks, one module per concern; each only points at an outbox row.

    supportgate.ingest       ingest.py         inbound.ingest rows
    supportgate.mail         notifications.py  email.reply / email.send rows
    supportgate.slack        slack.py          slack.* rows (events in, posts out)
    supportgate.run          (generic)         any other kind with a handler
    supportgate.sweep        maintenance.py    hand back stale rows (beat, every 30 s)
    supportgate.maintenance  maintenance.py    the deletion policy (beat)

A message names one row, or several rows of its queue (the SMTP edge
publishes a batch that committed together as one message); the task claims
them together and runs them in order (stored mail of one message is ingested
in one transaction: workers/outbox.py), and hands the rest back to the queue
when one message has taken longer than ``MESSAGE_BUDGET_SECONDS``.

The worker process state (database, handlers) is built per child process on
``worker_process_init``: connections are never shared across a fork.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from sqlalchemy import select

from gateway.config import Settings, load_settings
from gateway.db import Database
from gateway.events import OutboxTask, watch_outbox
from workers.handlers import TaskContext, handlers
from workers.outbox import Handler, run_tasks
from workers.queue import CeleryPublisher, make_publisher_app

log = logging.getLogger("supportgate.worker")

# Well under the hard time limit (300 s): a message naming many heavy rows
# hands the rest back instead of being killed halfway.
MESSAGE_BUDGET_SECONDS = 60.0
# Rows claimed (and, for a batching kind, run in one transaction) together;
# the time budget is checked between such chunks.
CLAIM_AT_ONCE = 16


@dataclass
class WorkerState:
    settings: Settings
    db: Database
    handlers: dict[str, Handler]
    publisher: CeleryPublisher


_state: WorkerState | None = None


def state() -> WorkerState:
    global _state
    if _state is None:
        settings = load_settings()
        db = Database(settings.effective_database_url, pool_size=2)
        # Tasks written by a task (an acknowledgment to send) leave at its commit;
        # those of one commit (a batch's acknowledgments) in one message, sent together.
        publisher = CeleryPublisher(make_publisher_app(settings), rows_per_message=CLAIM_AT_ONCE)
        watch_outbox(db.sessions, publisher.after_commit)
        _state = WorkerState(settings, db, handlers(TaskContext.create(settings, db)), publisher)
    return _state


@worker_process_init.connect
def _fresh_state_per_child(**_: Any) -> None:
    global _state
    _state = None


def run_outbox(*task_ids: str) -> str | list[str]:
    """Run the rows one message names, in order; their new states (one: a string)."""
    current = state()
    started = time.monotonic()
    states: list[str] = []
    for done in range(0, len(task_ids), CLAIM_AT_ONCE):
        if done and time.monotonic() - started > MESSAGE_BUDGET_SECONDS:
            hand_on(current, task_ids[done:])
            break
        chunk = [uuid.UUID(task_id) for task_id in task_ids[done : done + CLAIM_AT_ONCE]]
        states += run_tasks(current.db, current.handlers, chunk)
    return states[0] if len(task_ids) == 1 else states


def hand_on(current: WorkerState, task_ids: tuple[str, ...]) -> None:
    """Publish the rows a message did not get to as new messages (one per row)."""
    ids = [uuid.UUID(task_id) for task_id in task_ids]
    with current.db.transaction() as session:
        rows = [
            (row.id, row.kind)
            for row in session.execute(
                select(OutboxTask.id, OutboxTask.kind).where(OutboxTask.id.in_(ids))
            )
        ]
    log.info("message over its time budget; handing rows on", extra={"rows": len(rows)})
    # If this fails, the rows are still pending: the relay publishes them.
    one_each = CeleryPublisher(current.publisher.app)
    one_each.after_commit(sorted(rows, key=lambda row: ids.index(row[0])))


def register(app: Celery) -> None:
    from workers.tasks import ingest, maintenance, notifications, slack

    app.task(name="supportgate.run")(run_outbox)
    ingest.register(app)
    notifications.register(app)
    slack.register(app)
    maintenance.register(app)
