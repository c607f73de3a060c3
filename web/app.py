"""The Flask application factory.

``create_app(settings)`` wires the concrete pieces chosen by settings (the
database, the rate-limit storage, the attachment store) and registers the
blueprints; nothing is read from the environment at import time.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass

from flask import Flask, Response, g, request

from gateway.attachments.services import Files
from gateway.config import Settings, load_settings
from gateway.db import Database
from gateway.events import watch_outbox
from web.auth import RateLimits
from web.errors import register_error_handlers
from web.logging import configure_logging
from web.metrics import REQUEST_LATENCY, REQUESTS

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
log = logging.getLogger("supportgate.web")


@dataclass
class AppContext:
    settings: Settings
    db: Database
    limits: RateLimits
    files: Files


def create_app(settings: Settings | None = None, database: Database | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    app = Flask("supportgate")
    app.config["MAX_CONTENT_LENGTH"] = (
        max(settings.max_attachment_bytes, settings.max_json_bytes) + 65536
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if database is None:
        database = Database(settings.effective_database_url, pool_size=settings.api_threads)
        if settings.redis_url:
            # Committed tasks go to the workers at once; the relay catches the rest.
            # (Only for a database of our own: a shared one, as in tests, is left alone.)
            from workers.queue import CeleryPublisher, make_publisher_app

            watch_outbox(
                database.sessions, CeleryPublisher(make_publisher_app(settings)).after_commit
            )
    db = database
    app.extensions["supportgate"] = AppContext(
        settings=settings,
        db=db,
        limits=RateLimits.create(
            settings.redis_url, settings.rate_limit_per_minute, settings.auth_failures_per_minute
        ),
        files=Files.from_settings(settings),
    )

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers.setdefault("Cache-Control", "no-store")
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        REQUEST_LATENCY.labels(request.method, endpoint).observe(
            time.perf_counter() - g.get("started", time.perf_counter())
        )
        if response.status_code >= 500:
            log.error(
                "5xx response",
                extra={
                    "request_id": g.get("request_id"),
                    "status": response.status_code,
                    "path": request.path,
                },
            )
        return response

    register_error_handlers(app)

    from web.api.admin import bp as admin_bp
    from web.api.attachments import bp as attachments_bp
    from web.api.events import bp as events_bp
    from web.api.messages import bp as messages_bp
    from web.api.meta import bp as meta_bp
    from web.api.metadata import bp as metadata_bp
    from web.api.ops import bp as ops_bp
    from web.api.policies import bp as policies_bp
    from web.api.tickets import bp as tickets_bp
    from web.api.users import bp as users_bp

    app.register_blueprint(ops_bp)
    for bp in (tickets_bp, messages_bp, metadata_bp, users_bp, policies_bp, meta_bp, admin_bp):
        app.register_blueprint(bp, url_prefix="/api/v1")
    app.register_blueprint(attachments_bp, url_prefix="/api/v1")
    app.register_blueprint(events_bp, url_prefix="/api/v1")
    return app
