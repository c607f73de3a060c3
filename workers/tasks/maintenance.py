from __future__ import annotations

from datetime import timedelta

from celery import Celery


def register(app: Celery) -> None:
    from workers.outbox import sweep
    from workers.scheduler import run_maintenance
    from workers.tasks import state

    @app.task(name="supportgate.sweep")
    def sweep_task() -> int:
        """Hand back outbox rows a dead worker left running or a lost message left queued."""
        current = state()
        return sweep(current.db, timedelta(seconds=current.settings.task_stale_seconds))

    @app.task(name="supportgate.maintenance")
    def maintenance_task() -> dict[str, int]:
        """Apply the deletion policy and collect unreferenced files."""
        result = run_maintenance(state().settings, state().db)
        return dict(result.__dict__)
