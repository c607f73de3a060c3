"""In-process periodic jobs for the embedded default (no Redis, no Celery beat).

``serve`` starts one :class:`PeriodicRunner` in its master process; it runs
the deletion policy every ``SUPPORTGATE_MAINTENANCE_INTERVAL`` seconds (the
first run shortly after start) and stops at shutdown, finishing the batch
in hand. A failed run is logged and retried at the next tick, never fatal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gateway.attachments.services import Files
from gateway.config import Settings
from gateway.db import Database
from gateway.policies.jobs import PolicyRun, apply_deletion_policy

log = logging.getLogger("supportgate.scheduler")


def run_maintenance(settings: Settings, database: Database | None = None) -> PolicyRun:
    """One run of every maintenance job (the deletion policy and file collection)."""
    db = database or Database(settings.effective_database_url, null_pool=True)
    try:
        files = Files.from_settings(settings)
        return apply_deletion_policy(
            db,
            files.storage,
            grace_seconds=settings.storage_grace_seconds,
            previews=files.previews,
        )
    finally:
        if database is None:
            db.dispose()


class PeriodicRunner:
    def __init__(
        self, interval: float, job: Callable[[], object], *, first_delay: float = 5.0
    ) -> None:
        self.interval = interval
        self.first_delay = first_delay
        self.job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="supportgate-maintenance", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        delay = self.first_delay
        while not self._stop.wait(delay):
            try:
                self.job()
            except Exception:  # logged; the next tick tries again
                log.exception("maintenance run failed")
            delay = self.interval
