from __future__ import annotations

from celery import Celery


def register(app: Celery) -> None:
    from workers.tasks import run_outbox

    @app.task(name="supportgate.slack")
    def slack(task_id: str) -> str:
        """Process a stored Slack event or make one Slack post (``slack.*`` rows)."""
        return run_outbox(task_id)
