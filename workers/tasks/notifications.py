from __future__ import annotations

from celery import Celery


def register(app: Celery) -> None:
    from workers.tasks import run_outbox

    @app.task(name="supportgate.mail")
    def mail(task_id: str) -> str:
        """Compose or send one outgoing mail (``email.reply`` / ``email.send`` rows)."""
        return run_outbox(task_id)
