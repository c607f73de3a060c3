from __future__ import annotations

from celery import Celery


def register(app: Celery) -> None:
    from workers.tasks import run_outbox

    @app.task(name="supportgate.mail")
    def mail(*task_ids: str) -> str | list[str]:
        """Compose or send outgoing mail (``email.reply`` / ``email.send`` rows)."""
        return run_outbox(*task_ids)
