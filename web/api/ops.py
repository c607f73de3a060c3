"""Operations: liveness, readiness, metrics."""

from __future__ import annotations

import os
import tempfile

from flask import Blueprint, Response, current_app, json
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from web.spec import documented

bp = Blueprint("ops", __name__)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@bp.get("/healthz")
@documented(summary="Process alive", tag="operations", response=Health)
def healthz() -> Response:
    return Response(json.dumps({"status": "ok"}), mimetype="application/json")


def _check_database() -> None:
    db = current_app.extensions["supportgate"].db
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _check_storage(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".readyz-"):
        pass


@bp.get("/readyz")
@documented(
    summary="Database, Redis and storage reachable",
    tag="operations",
    response=Readiness,
    errors=(503,),
)
def readyz() -> Response:
    settings = current_app.extensions["supportgate"].settings
    checks: dict[str, str] = {}
    probes = {
        "database": _check_database,
        "storage": lambda: _check_storage(str(settings.data_dir)),
    }
    if settings.redis_url:
        probes["redis"] = lambda: _check_redis(settings.redis_url)
    if settings.storage_backend != "local":
        probes["attachment_storage"] = current_app.extensions["supportgate"].files.storage.check
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # any failure of a dependency means not ready
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    return Response(json.dumps(body), status=200 if ready else 503, mimetype="application/json")


@bp.get("/metrics")
@documented(summary="Prometheus metrics", tag="operations", media_type=CONTENT_TYPE_LATEST)
def metrics() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
