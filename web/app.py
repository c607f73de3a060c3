"""The Flask application factory.

``create_app(settings)`` wires the concrete pieces chosen by settings (the
database, the rate-limit storage, the attachment store) and registers the
blueprints; nothing is read from the environment at import time.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response, g, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from gateway.attachments.services import Files
from gateway.config import Settings, load_settings
from gateway.db import Database
from gateway.events import watch_outbox
from web.auth import SESSION_COOKIE, RateLimits
from web.errors import register_error_handlers
from web.jsonio import FastJSONProvider
from web.logging import configure_logging
from web.metrics import observe_request

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
log = logging.getLogger("supportgate.web")


@dataclass
class AppContext:
    settings: Settings
    db: Database
    limits: RateLimits
    files: Files
    # The bolt app behind POST /slack/events; None while Slack is off.
    slack: Any = None


def create_app(settings: Settings | None = None, database: Database | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    app = Flask("supportgate")
    app.json = FastJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = (
        max(settings.max_attachment_bytes, settings.max_json_bytes) + 65536
    )
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
    from gateway.slack.mirror import install_mirror

    install_mirror(db.sessions, settings.slack_channel if settings.slack_enabled else None)
    slack = None
    if settings.slack_enabled and settings.slack_signing_secret is not None:
        from adapters.slack.app import build_bolt_app

        slack = build_bolt_app(settings, db)
    app.extensions["supportgate"] = AppContext(
        settings=settings,
        db=db,
        limits=RateLimits.create(
            settings.redis_url, settings.rate_limit_per_minute, settings.auth_failures_per_minute
        ),
        files=Files.from_settings(settings),
        slack=slack,
    )

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        headers = response.headers
        headers["X-Request-Id"] = ctx.get("request_id", "")
        headers.setdefault("Cache-Control", "no-store")
        rule = req.url_rule
        observe_request(
            req.method,
            rule.rule if rule else "unmatched",
            response.status_code,
            time.perf_counter() - ctx.get("started", time.perf_counter()),
        )
        if response.status_code >= 500:
            log.error(
                "5xx response",
                extra={
                    "request_id": ctx.get("request_id"),
                    "status": response.status_code,
                    "path": req.path,
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
    from web.slack import bp as slack_bp

    app.register_blueprint(slack_bp)
    from web.console import bp as console_bp

    app.secret_key = _secret_key(settings)
    app.session_interface = _CookieSessions()
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
    )
    app.register_blueprint(console_bp, url_prefix="/console")
    return app


class _CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with no work for a request that has no cookie.

    Every API call with a bearer token is such a request; Flask would build
    its signing serializer for each one (a fifth of a GET's Flask overhead).
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        name = self.get_cookie_name(app)
        # The raw header first: parsing cookies costs more than most of a GET's Flask work.
        if name not in request.environ.get("HTTP_COOKIE", "") or name not in request.cookies:
            return self.session_class() if app.secret_key else None
        return super().open_session(app, request)


def _secret_key(settings: Settings) -> str:
    """SUPPORTGATE_SECRET_KEY, else a key made once and kept in the data dir (0600),
    shared by every process of one installation."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty: delete it or set SUPPORTGATE_SECRET_KEY") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    return key
