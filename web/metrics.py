"""Prometheus metrics of the HTTP API (one set per process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "supportgate_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
REQUEST_LATENCY = Histogram(
    "supportgate_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


# The labelled children, by label values: ``labels()`` validates and locks on every
# call. Routes are the URL map's rules and methods and statuses are few, so this
# stays small; the children are the ones ``labels()`` returns (same samples).
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one request and its latency under (method, route, status)."""
    key = (method, route, status)
    found = _children.get(key)
    if found is None:
        found = _children[key] = (
            REQUESTS.labels(method, route, str(status)),
            REQUEST_LATENCY.labels(method, route),
        )
    found[0].inc()
    found[1].observe(seconds)
