"""CORS for browser uploads and downloads from the configured origins.

Only the blueprints that register :func:`add_cors_headers` answer
cross-origin requests, and only for an ``Origin`` listed in
``SUPPORTGATE_CORS_ORIGINS`` (exact match). Preflight ``OPTIONS`` requests are
answered by Flask's automatic OPTIONS response, to which this adds the
``Access-Control-*`` headers; they never reach authentication. Credentials
(cookies) are not allowed cross-origin: browsers send the bearer token.
"""

from __future__ import annotations

from flask import Response, current_app, request

from gateway.config import split_list

ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-Id"
EXPOSED_HEADERS = "Content-Disposition, Content-Length, ETag, X-Request-Id"
MAX_AGE = "600"


def add_cors_headers(response: Response) -> Response:
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if not origin:
        return response
    settings = current_app.extensions["supportgate"].settings
    if origin not in split_list(settings.cors_origins):
        return response
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    if request.method == "OPTIONS":
        allowed = sorted(set(response.allow) - {"OPTIONS"}) if response.allow else []
        response.headers["Access-Control-Allow-Methods"] = ", ".join(
            allowed or ["GET", "POST", "DELETE"]
        )
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = MAX_AGE
    return response
