"""The one place where errors become HTTP responses (RFC 9457 problem+json).

Domain errors carry their own code and status; Werkzeug's HTTP errors and
pydantic's validation errors are mapped onto the same shape; anything else
is logged with the request id and answered 500 without a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, json, request
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import OperationalError as SAOperationalError
from werkzeug.exceptions import HTTPException

from gateway.errors import FieldError, GatewayError, ValidationFailed
from gateway.schemas import field_path

log = logging.getLogger("supportgate.web")

PROBLEM_BASE = "https://supportgate.dev/problems/"

HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    412: ("precondition-failed", "Precondition failed"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "Validation failed"),
    429: ("rate-limited", "Too many requests"),
    503: ("service-unavailable", "Service unavailable"),
}


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "errors": [{"field": e.field, "message": e.message} for e in errors or []],
        "request_id": g.get("request_id"),
    }
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


DATABASE_RETRY_AFTER = 1  # seconds: a restart or failover, or a pool that reconnects


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached or dropped the connection
    (a restart, a failover, a terminated backend, a timeout), not a bug: a 503."""
    if isinstance(exc, DisconnectionError | SAOperationalError):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, psycopg.OperationalError)


def validation_problem(exc: ValidationError) -> ValidationFailed:
    errors = [
        FieldError(field_path(tuple(err["loc"])) or "body", err["msg"]) for err in exc.errors()
    ]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    return ValidationFailed(detail, errors=errors)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError) -> Response:
        headers = {}
        if exc.status == 429 and "retry_after" in exc.data:
            headers["Retry-After"] = str(exc.data["retry_after"])
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="supportgate"'
        if exc.status >= 500:
            log.error(
                "request failed",
                extra={"request_id": g.get("request_id"), "code": exc.code, "detail": exc.detail},
            )
        return problem(
            exc.status,
            exc.code,
            exc.title,
            exc.detail,
            exc.errors,
            headers,
            {k: v for k, v in exc.data.items() if k != "retry_after"},
        )

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        return _gateway_error(validation_problem(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        slug, title = HTTP_SLUGS.get(status, ("http-error", exc.name))
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        detail = exc.description or title
        if status == 404:
            detail = f"no route for {request.path}"
        return problem(status, slug, title, detail, headers=headers)

    @app.errorhandler(DBAPIError)
    @app.errorhandler(DisconnectionError)
    def _database_error(exc: Exception) -> Response:
        if not database_unavailable(exc):
            return _unexpected(exc)
        log.warning(
            "database unavailable",
            extra={"request_id": g.get("request_id"), "error": str(exc).splitlines()[0]},
        )
        return problem(
            503,
            "service-unavailable",
            "Service unavailable",
            "the database is unavailable right now; retry shortly"
            + (
                ""
                if request.method in ("GET", "HEAD", "OPTIONS")
                else " (check whether the change was saved before sending it again)"
            ),
            headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
        )

    try:  # the driver's own errors reach here from gateway.db.DriverQuery
        import psycopg

        app.register_error_handler(psycopg.OperationalError, _database_error)
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        return problem(
            500,
            "internal-error",
            "Internal error",
            f"something went wrong on our side; quote request id {g.get('request_id')}",
        )
