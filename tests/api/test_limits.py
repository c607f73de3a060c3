"""Rate limits and operational endpoints, each tested at limit and limit+1."""

from __future__ import annotations

import pytest

from gateway.config import Settings
from web.app import create_app


@pytest.fixture
def limited_app(settings, db):
    limited = Settings(
        **{**settings.model_dump(), "rate_limit_per_minute": 5, "auth_failures_per_minute": 3},
        _env_file=None,
    )
    return create_app(limited, database=db)


def test_failed_auth_attempts_per_address_are_limited(limited_app, make_caller):
    client = limited_app.test_client()
    for _ in range(3):
        assert (
            client.get("/api/v1/me", headers={"Authorization": "Bearer sg_wrong"}).status_code
            == 401
        )
    r = client.get("/api/v1/me", headers={"Authorization": "Bearer sg_wrong"})
    assert r.status_code == 429
    assert r.get_json()["type"].endswith("/problems/rate-limited")
    assert int(r.headers["Retry-After"]) >= 1
    # Even a valid token is refused from that address until the window moves on.
    agent = make_caller("agent")
    r = client.get("/api/v1/me", headers={"Authorization": f"Bearer {agent.token}"})
    assert r.status_code == 429
    other = client.get(
        "/api/v1/me",
        headers={"Authorization": f"Bearer {agent.token}"},
        environ_base={"REMOTE_ADDR": "127.0.0.9"},
    )
    assert other.status_code == 200


def test_requests_per_token_are_limited(limited_app, make_caller):
    client = limited_app.test_client()
    a, b = make_caller("agent"), make_caller("agent")
    for _ in range(5):
        assert (
            client.get("/api/v1/me", headers={"Authorization": f"Bearer {a.token}"}).status_code
            == 200
        )
    r = client.get("/api/v1/me", headers={"Authorization": f"Bearer {a.token}"})
    assert r.status_code == 429
    assert "Retry-After" in r.headers
    assert (
        client.get("/api/v1/me", headers={"Authorization": f"Bearer {b.token}"}).status_code == 200
    )


def test_rate_limits_shared_through_redis(settings, db, make_caller):
    redis_settings = Settings(
        **{
            **settings.model_dump(),
            "rate_limit_per_minute": 2,
            "redis_url": "redis://127.0.0.1:6379/15",
        },
        _env_file=None,
    )
    one = create_app(redis_settings, database=db).test_client()
    two = create_app(redis_settings, database=db).test_client()
    agent = make_caller("agent")
    headers = {"Authorization": f"Bearer {agent.token}"}
    assert one.get("/api/v1/me", headers=headers).status_code == 200
    assert two.get("/api/v1/me", headers=headers).status_code == 200
    assert one.get("/api/v1/me", headers=headers).status_code == 429


def test_healthz_readyz_metrics(client, settings, db):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json()["checks"] == {"database": "ok", "storage": "ok"}
    from prometheus_client import REGISTRY

    def count(status: str) -> float:
        labels = {"method": "GET", "route": "/api/v1/tickets", "status": status}
        return REGISTRY.get_sample_value("supportgate_http_requests_total", labels) or 0.0

    def observed() -> float:
        labels = {"method": "GET", "route": "/api/v1/tickets"}
        return REGISTRY.get_sample_value("supportgate_http_request_duration_seconds_count", labels)

    before_401, before_all = count("401"), observed() or 0.0
    client.get("/api/v1/tickets")
    client.get("/api/v1/tickets")
    assert count("401") == before_401 + 2  # each request counted under its route and status
    assert observed() == before_all + 2
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "supportgate_http_requests_total" in metrics.get_data(as_text=True)


def test_readyz_is_503_when_redis_is_unreachable(settings, db):
    broken = Settings(
        **{**settings.model_dump(), "redis_url": "redis://127.0.0.1:1/0"}, _env_file=None
    )
    r = create_app(broken, database=db).test_client().get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["checks"]["redis"].startswith("unavailable")
    assert r.get_json()["checks"]["database"] == "ok"


def test_readyz_with_redis(settings, db):
    ok = Settings(
        **{**settings.model_dump(), "redis_url": "redis://127.0.0.1:6379/15"}, _env_file=None
    )
    r = create_app(ok, database=db).test_client().get("/readyz")
    assert r.status_code == 200
    assert r.get_json()["checks"]["redis"] == "ok"


def test_method_not_allowed_is_a_problem(admin):
    r = admin.put("/api/v1/tickets", json={})
    assert r.status_code == 405
    assert r.mimetype == "application/problem+json"
    assert "GET" in r.headers["Allow"]
