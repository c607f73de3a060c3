"""Celery tasks, one module per concern; each only points at an outbox row.

    supportgate.ingest       ingest.py         inbound.ingest rows
    supportgate.mail         notifications.py  email.reply / email.send rows
    supportgate.slack        slack.py          slack.* rows (events in, posts out)
    supportgate.run          (generic)         any other kind with a handler
    supportgate.sweep        maintenance.py    hand back stale rows (beat, every 30 s)
    supportgate.maintenance  maintenance.py    the deletion policy (beat)

The worker process state (database, handlers) is built per child process on
``worker_process_init``: connections are never shared across a fork.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from gateway.config import Settings, load_settings
from gateway.db import Database
from gateway.events import watch_outbox
from workers.handlers import TaskContext, handlers
from workers.outbox import Handler, run_task
from workers.queue import CeleryPublisher, make_publisher_app


@dataclass
class WorkerState:
    settings: Settings
    db: Database
    handlers: dict[str, Handler]


_state: WorkerState | None = None


def state() -> WorkerState:
    global _state
    if _state is None:
        settings = load_settings()
        db = Database(settings.effective_database_url, pool_size=2)
        # Tasks written by a task (an acknowledgment to send) leave at its commit.
        watch_outbox(db.sessions, CeleryPublisher(make_publisher_app(settings)).after_commit)
        _state = WorkerState(settings, db, handlers(TaskContext.create(settings, db)))
    return _state


@worker_process_init.connect
def _fresh_state_per_child(**_: Any) -> None:
    global _state
    _state = None


def run_outbox(task_id: str) -> str:
    current = state()
    return run_task(current.db, current.handlers, uuid.UUID(task_id))


def register(app: Celery) -> None:
    from workers.tasks import ingest, maintenance, notifications, slack

    app.task(name="supportgate.run")(run_outbox)
    ingest.register(app)
    notifications.register(app)
    slack.register(app)
    maintenance.register(app)
