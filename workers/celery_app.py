"""The Celery application, configured from settings only.

Durability settings (each one matters for ``kill -9`` of a worker):

    task_acks_late              the message is acknowledged after the task ran
    task_reject_on_worker_lost  …and handed back when the worker process died
    worker_prefetch_multiplier  1: a worker holds one unacknowledged message
    task_time_limit             300 s, far below the visibility timeout (3600 s),
                                so Redis never redelivers a task still running
    no countdown / ETA          retries are scheduled in the database
                                (``outbox_tasks.available_at``), not in Redis

Our own queues (``supportgate.*``) on our own Redis database
(``SUPPORTGATE_CELERY_REDIS_DB``), never Celery's default ``celery`` queue on
db 0, so another Celery app on the same Redis cannot consume our tasks.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from celery import Celery

from gateway.config import Settings

QUEUES = {
    "inbound.ingest": "supportgate.ingest",
    "email.reply": "supportgate.mail",
    "email.send": "supportgate.mail",
    "slack.event": "supportgate.slack",
    "slack.post": "supportgate.slack",
    "slack.thread": "supportgate.slack",
    "slack.update": "supportgate.slack",
    "slack.ephemeral": "supportgate.slack",
}
DEFAULT_QUEUE = "supportgate.default"
ALL_QUEUES = sorted({*QUEUES.values(), DEFAULT_QUEUE, "supportgate.maintenance"})
VISIBILITY_TIMEOUT = 3600
TASK_TIME_LIMIT = 300


def broker_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise ValueError("Celery needs SUPPORTGATE_REDIS_URL")
    parts = urlsplit(settings.redis_url)
    return urlunsplit(parts._replace(path=f"/{settings.celery_redis_db}"))


def queue_for(kind: str) -> str:
    return QUEUES.get(kind, DEFAULT_QUEUE)


def make_celery(settings: Settings, *, with_tasks: bool = True) -> Celery:
    """The app; producers (API, SMTP) pass ``with_tasks=False``: they only send by name."""
    app = Celery("supportgate", set_as_current=False)
    url = broker_url(settings)
    app.conf.update(
        broker_url=url,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT,
        task_soft_time_limit=TASK_TIME_LIMIT - 30,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        broker_connection_retry_on_startup=True,
        task_default_queue=DEFAULT_QUEUE,
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
        beat_schedule={
            "sweep": {
                "task": "supportgate.sweep",
                "schedule": 30.0,
                "options": {"queue": "supportgate.maintenance"},
            },
            "maintenance": {
                "task": "supportgate.maintenance",
                "schedule": float(settings.maintenance_interval or 3600),
                "options": {"queue": "supportgate.maintenance"},
            },
        },
    )
    if with_tasks:
        from workers.tasks import register

        register(app)
    return app
