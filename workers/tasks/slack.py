from __future__ import annotations

from celery import Celery


def register(app: Celery) -> None:
    from workers.tasks import run_outbox

    @app.task(name="supportgate.slack")
    def slack(*task_ids: str) -> str | list[str]:
        """Process stored Slack events or make Slack posts (``slack.*`` rows)."""
        return run_outbox(*task_ids)
