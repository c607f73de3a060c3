"""The bare anchor: the product's SQL behind the thinnest Flask app that can serve it.

``bench/api_list.py`` records, from real requests to the product, the
statements that ``GET /api/v1/tickets/{id}`` and each benchmarked
``GET /api/v1/tickets?...`` send to PostgreSQL now, with their bound
parameters, and writes them to a JSON file. This app reads that file (path in
``SG_BENCH_ANCHOR_SQL``) and, per request, runs the same statement texts
through plain psycopg 3 (one connection per gunicorn thread, the driver's
defaults, one transaction per request: BEGIN … COMMIT):

1. the Core token lookup (``api_tokens JOIN users`` by SHA-256 of the bearer
   token), and, as ``gateway.users.services.authenticate`` does, the
   ``UPDATE api_tokens SET last_used_at`` when the token's ``last_used_at``
   is unset or older than ten minutes;
2. the one ticket statement: tickets with the customer and the assignee
   joined, tags (``array_agg``) and metadata (``json_object_agg``) in
   correlated subqueries. By id: bound to the requested id; lists: the
   captured parameters of that exact URL (every benchmarked list URL is fixed).

It then builds the same JSON document as the product (``ticket_rows_out`` of
``gateway/tickets/services.py``, the page and ``next_cursor`` of
``gateway/tickets/listing.py``) and returns it. Nothing else: no ORM, no
SQLAlchemy, no pydantic, no metrics, no rate limiter. The benchmark checks,
before any load, that both servers return the same JSON documents (the product's
are compact, from orjson; the anchor's have the stdlib's spaces).

Run by the benchmark as ``gunicorn --chdir bench 'anchor_app:create_app()'``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from flask import Flask, Response, request

PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("new", "open", "pending", "on_hold", "solved", "closed")
STATUS_RANK = {s: i for i, s in enumerate(STATUSES)}
JSON_TYPE = "application/json"
TOKEN_PREFIX = "sg_"  # noqa: S105 -- gateway.users.services.TOKEN_PREFIX, public
LAST_USED_RESOLUTION = timedelta(minutes=10)  # gateway.users.services

# Columns the statements must return (checked against the cursor's description).
AUTH_COLUMNS = (
    "id", "token_hash", "revoked_at", "last_used_at",
    "id_1", "role", "email", "name", "active",
)  # fmt: skip
TICKET_COLUMNS = (
    "id", "number", "title", "description", "status", "priority", "channel",
    "customer_id", "customer_email", "customer_name",
    "assignee_id", "assignee_email", "assignee_name",
    "tags", "metadata", "custom_fields", "message_count", "note_count",
    "created_at", "updated_at", "archived_at", "deleted_at", "version",
)  # fmt: skip
T = {name: i for i, name in enumerate(TICKET_COLUMNS)}


def decode_param(value: Any) -> Any:
    """Undo :func:`api_list.encode_param` (JSON has no UUID or datetime)."""
    if isinstance(value, dict) and len(value) == 1:
        ((kind, raw),) = value.items()
        if kind == "$uuid":
            return uuid.UUID(raw)
        if kind == "$datetime":
            return datetime.fromisoformat(raw)
    return value


def _one_param(entry: dict[str, Any]) -> str:
    (name,) = entry["params"].keys()
    return str(name)


class Plan:
    """The captured statements, ready to run."""

    def __init__(self, captured: dict[str, Any]) -> None:
        self.dsn: str = captured["dsn"]
        self.auth_sql: str = captured["auth"]["sql"]
        self.auth_param = _one_param(captured["auth"])
        touch = captured["touch"]
        self.touch_sql: str = touch["sql"]
        params = set(touch["params"])
        self.touch_now = next(p for p in params if "now" in p)
        (self.touch_id,) = params - {self.touch_now}
        self.by_id_sql: str = captured["by_id"]["main"]["sql"]
        self.by_id_param = _one_param(captured["by_id"]["main"])
        self.lists: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for entry in captured["lists"]:
            key = tuple(sorted((k, v) for k, v in entry["query"]))
            self.lists[key] = {
                "sql": entry["main"]["sql"],
                "params": {k: decode_param(v) for k, v in entry["main"]["params"].items()},
                "limit": int(entry["limit"]),
                "sort": entry["sort"],
            }
        self.checked: set[str] = set()  # statements whose result columns were checked


# --- per request ---------------------------------------------------------------------------------

_local = threading.local()


def _conn(dsn: str) -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(dsn)
    return conn


def _check_columns(plan: Plan, cur: psycopg.Cursor[Any], sql: str, want: tuple[str, ...]) -> None:
    if sql in plan.checked:
        return
    got = tuple(c.name for c in cur.description or ())
    if got != want:
        raise RuntimeError(f"the captured statement returns {got}, the anchor reads {want}")
    plan.checked.add(sql)


def _iso(value: datetime) -> str:
    # The product's UTCDateTime column type: astimezone(UTC), then isoformat().
    return value.astimezone(UTC).isoformat()


def _tickets_out(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """``ticket_rows_out`` for a staff caller on PostgreSQL, same key order."""
    return [
        {
            "id": str(r[0]),
            "number": r[1],
            "title": r[2],
            "description": r[3],
            "status": r[4],
            "priority": PRIORITIES[r[5]],
            "channel": r[6],
            "customer": None if r[8] is None else {"id": str(r[7]), "email": r[8], "name": r[9]},
            "assignee": None
            if r[11] is None
            else {"id": str(r[10]), "email": r[11], "name": r[12]},
            "tags": r[13] or [],
            "metadata": r[14] or {},
            "custom_fields": r[15] or {},
            "message_count": r[16],  # staff caller: notes included
            "created_at": _iso(r[18]),
            "updated_at": _iso(r[19]),
            "archived_at": _iso(r[20]) if r[20] else None,
            "deleted_at": _iso(r[21]) if r[21] else None,
            "version": r[22],
        }
        for r in rows
    ]


def _problem(status: int, title: str) -> Response:
    body = json.dumps({"type": "about:blank", "title": title, "status": status})
    return Response(body, status=status, mimetype="application/problem+json")


def _authenticate(plan: Plan, cur: psycopg.Cursor[Any]) -> bool:
    """``authenticate``: token lookup, checks, and the coarse last_used_at UPDATE."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return False
    digest = hashlib.sha256(token.encode()).hexdigest()
    row = cur.execute(plan.auth_sql, {plan.auth_param: digest}).fetchone()
    _check_columns(plan, cur, plan.auth_sql, AUTH_COLUMNS)
    if row is None or not hmac.compare_digest(row[1], digest):
        return False
    if row[2] is not None or not row[8]:
        return False
    now = datetime.now(UTC)
    if row[3] is None or now - row[3] > LAST_USED_RESOLUTION:
        cur.execute(plan.touch_sql, {plan.touch_id: row[0], plan.touch_now: now})
    return True


def _encode_cursor(kind: str, *values: Any) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _next_cursor(sort: str, last: tuple[Any, ...]) -> str:
    name = sort.lstrip("-")
    kind = f"tickets:{sort}"
    if name == "number":
        return _encode_cursor(kind, last[T["number"]])
    if name == "status":
        key: Any = STATUS_RANK.get(last[T["status"]], len(STATUS_RANK))
    else:
        key = last[T[name]]
        key = _iso(key) if isinstance(key, datetime) else key
    return _encode_cursor(kind, key, str(last[T["id"]]))


def create_app(path: str | None = None) -> Flask:
    path = path or os.environ["SG_BENCH_ANCHOR_SQL"]
    with open(path, encoding="utf-8") as fh:
        plan = Plan(json.load(fh))
    app = Flask("anchor")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response('{"status":"ok"}', mimetype=JSON_TYPE)

    @app.get("/api/v1/tickets/<ref>")
    def show(ref: str) -> Response:
        try:
            ticket_id = uuid.UUID(ref)
        except ValueError:
            return _problem(404, "no such ticket")
        conn = _conn(plan.dsn)
        with conn.transaction(), conn.cursor() as cur:
            if not _authenticate(plan, cur):
                return _problem(401, "invalid token")
            rows = cur.execute(plan.by_id_sql, {plan.by_id_param: ticket_id}).fetchall()
            _check_columns(plan, cur, plan.by_id_sql, TICKET_COLUMNS)
        if not rows:
            return _problem(404, "no such ticket")
        body = _tickets_out(rows[:1])[0]
        response = Response(json.dumps(body), mimetype=JSON_TYPE)
        response.headers["ETag"] = f'"{body["version"]}"'
        return response

    @app.get("/api/v1/tickets")
    def index() -> Response:
        entry = plan.lists.get(tuple(sorted(request.args.items(multi=True))))
        if entry is None:
            return _problem(404, "the anchor serves only the benchmarked list URLs")
        conn = _conn(plan.dsn)
        with conn.transaction(), conn.cursor() as cur:
            if not _authenticate(plan, cur):
                return _problem(401, "invalid token")
            rows = cur.execute(entry["sql"], entry["params"]).fetchall()
            _check_columns(plan, cur, entry["sql"], TICKET_COLUMNS)
        limit = entry["limit"]
        page = rows[:limit]
        more = len(rows) > limit and page
        cursor = _next_cursor(entry["sort"], page[-1]) if more else None
        body = {"items": _tickets_out(page), "next_cursor": cursor}
        return Response(json.dumps(body), mimetype=JSON_TYPE)

    return app
