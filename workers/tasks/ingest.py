from __future__ import annotations

from celery import Celery


def register(app: Celery) -> None:
    from workers.tasks import run_outbox

    @app.task(name="supportgate.ingest")
    def ingest(*task_ids: str) -> str | list[str]:
        """Parse and route stored inbound messages (``inbound.ingest`` rows, one or a batch)."""
        return run_outbox(*task_ids)
