from __future__ import annotations

from celery import Celery


def register(app: Celery) -> None:
    from workers.tasks import run_outbox

    @app.task(name="supportgate.ingest")
    def ingest(task_id: str) -> str:
        """Parse and route one stored inbound message (an ``inbound.ingest`` row)."""
        return run_outbox(task_id)
