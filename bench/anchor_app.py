"""The bare anchor: the product's SQL behind the thinnest Flask app that can serve it.

``bench/api_list.py`` captures, from the real product, the statements that
``GET /api/v1/tickets/{id}`` and each benchmarked ``GET /api/v1/tickets?...``
send to PostgreSQL, and writes them to a JSON file. This app reads that file
(path in ``SG_BENCH_ANCHOR_SQL``) and, per request, runs the same statement
texts through plain psycopg 3 (one connection per gunicorn thread, the
driver's defaults, one transaction per request: BEGIN … COMMIT):

1. the token lookup (``api_tokens JOIN users`` by SHA-256 of the bearer token),
2. the ticket query (by id: bound to the requested id; lists: the captured
   parameters of that exact URL, since every benchmarked list URL is fixed),
3. the tags query for the ids the ticket query returned (IN-list re-expanded
   for that many ids, exactly as SQLAlchemy renders it),
4. the metadata query for the ids on the page (same),

then builds the same JSON document as the product's ``ticket_out`` and
returns it. Nothing else: no ORM, no pydantic, no metrics, no rate limiter.

Run by the benchmark as ``gunicorn --chdir bench 'anchor_app:create_app()'``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from flask import Flask, Response, request

PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("new", "open", "pending", "on_hold", "solved", "closed")
STATUS_RANK = {s: i for i, s in enumerate(STATUSES)}
JSON_TYPE = "application/json"

_SELECT_ITEM = re.compile(r"^(\w+)\.(\w+)(?: AS (\w+))?$")
_IN_LIST = re.compile(r"IN \(((?:%\((\w+?)_\d+\)s(?:::\w+)?(?:, )?)+)\)")


# --- the captured SQL, turned into what a request needs ------------------------------------


def decode_param(value: Any) -> Any:
    """Undo :func:`api_list.encode_param` (JSON has no UUID or datetime)."""
    if isinstance(value, dict) and len(value) == 1:
        ((kind, raw),) = value.items()
        if kind == "$uuid":
            return uuid.UUID(raw)
        if kind == "$datetime":
            return datetime.fromisoformat(raw)
    return value


def select_layout(sql: str) -> list[tuple[str, str]]:
    """(table or alias, column) of each item of the statement's SELECT list."""
    head = sql.split("\nFROM ", 1)[0]
    if not head.startswith("SELECT "):
        raise ValueError(f"not a SELECT: {sql[:60]!r}")
    layout = []
    for item in head[len("SELECT ") :].strip().split(", "):
        found = _SELECT_ITEM.match(item.strip())
        if not found:
            raise ValueError(f"unexpected select item {item!r}")
        layout.append((found.group(1), found.group(2)))
    return layout


def alias_of(sql: str, foreign_key: str) -> str:
    """The users alias joined on ``tickets.<foreign_key>``."""
    found = re.search(rf"AS (\w+) ON \1\.id = tickets\.{foreign_key}\b", sql)
    if not found:
        raise ValueError(f"no users join on tickets.{foreign_key}")
    return found.group(1)


class InList:
    """A statement with one expanded ``IN (%(p_1)s::UUID, …)``, re-expandable for n values."""

    def __init__(self, sql: str) -> None:
        found = _IN_LIST.search(sql)
        if not found:
            raise ValueError(f"no expanded IN list in {sql[:80]!r}")
        self.head, self.tail = sql[: found.start(1)], sql[found.end(1) :]
        self.name = found.group(2)
        cast = re.search(r"\)s(::\w+)", found.group(1))
        self.cast = cast.group(1) if cast else ""
        self._cache: dict[int, str] = {}

    def sql(self, n: int) -> str:
        text = self._cache.get(n)
        if text is None:
            inner = ", ".join(f"%({self.name}_{i})s{self.cast}" for i in range(1, n + 1))
            text = self._cache[n] = self.head + inner + self.tail
        return text

    def params(self, values: list[Any]) -> dict[str, Any]:
        return {f"{self.name}_{i}": v for i, v in enumerate(values, 1)}


class TicketQuery:
    """The ticket SELECT (tickets + customer + assignee) and how to read its rows."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        layout = select_layout(sql)
        customer, assignee = alias_of(sql, "customer_id"), alias_of(sql, "assignee_id")
        self.ticket = {col: i for i, (table, col) in enumerate(layout) if table == "tickets"}
        self.customer = {col: i for i, (table, col) in enumerate(layout) if table == customer}
        self.assignee = {col: i for i, (table, col) in enumerate(layout) if table == assignee}


class Plan:
    """Everything captured from the product, ready to run."""

    def __init__(self, captured: dict[str, Any]) -> None:
        self.dsn: str = captured["dsn"]
        auth_sql = captured["auth"]["sql"]
        self.auth_sql = auth_sql
        (self.auth_param,) = captured["auth"]["params"].keys()
        auth_layout = select_layout(auth_sql)
        self.auth_cols = {
            "token_hash": auth_layout.index(("api_tokens", "token_hash")),
            "revoked_at": auth_layout.index(("api_tokens", "revoked_at")),
            "active": auth_layout.index(("users", "active")),
        }
        by_id = captured["by_id"]
        self.by_id = TicketQuery(by_id["main"]["sql"])
        (self.by_id_param,) = by_id["main"]["params"].keys()
        self.by_id_tags = InList(by_id["tags"]["sql"])
        self.by_id_meta = InList(by_id["metadata"]["sql"])
        self.lists: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for entry in captured["lists"]:
            key = tuple(sorted((k, v) for k, v in entry["query"]))
            self.lists[key] = {
                "main": TicketQuery(entry["main"]["sql"]),
                "params": {k: decode_param(v) for k, v in entry["main"]["params"].items()},
                "tags": InList(entry["tags"]["sql"]),
                "metadata": InList(entry["metadata"]["sql"]),
                "limit": int(entry["limit"]),
                "sort": entry["sort"],
            }


# --- per request ---------------------------------------------------------------------------------

_local = threading.local()


def _conn(dsn: str) -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(dsn)
    return conn


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _user_ref(row: tuple[Any, ...], cols: dict[str, int]) -> dict[str, Any] | None:
    if row[cols["id"]] is None:
        return None
    return {"id": str(row[cols["id"]]), "email": row[cols["email"]], "name": row[cols["name"]]}


def _ticket_out(
    row: tuple[Any, ...], q: TicketQuery, tags: list[str], meta: dict[str, str]
) -> dict[str, Any]:
    t = q.ticket
    return {
        "id": str(row[t["id"]]),
        "number": row[t["number"]],
        "title": row[t["title"]],
        "description": row[t["description"]],
        "status": row[t["status"]],
        "priority": PRIORITIES[row[t["priority"]]],
        "channel": row[t["channel"]],
        "customer": _user_ref(row, q.customer),
        "assignee": _user_ref(row, q.assignee),
        "tags": tags,
        "metadata": meta,
        "custom_fields": row[t["custom_fields"]] or {},
        "message_count": row[t["message_count"]],  # staff caller: notes included
        "created_at": _iso(row[t["created_at"]]),
        "updated_at": _iso(row[t["updated_at"]]),
        "archived_at": _iso(row[t["archived_at"]]),
        "deleted_at": _iso(row[t["deleted_at"]]),
        "version": row[t["version"]],
    }


def _problem(status: int, title: str) -> Response:
    body = json.dumps({"type": "about:blank", "title": title, "status": status})
    return Response(body, status=status, mimetype="application/problem+json")


def _authenticate(plan: Plan, cur: psycopg.Cursor[Any]) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    row = cur.execute(plan.auth_sql, {plan.auth_param: digest}).fetchone()
    c = plan.auth_cols
    return (
        row is not None
        and hmac.compare_digest(row[c["token_hash"]], digest)
        and row[c["revoked_at"]] is None
        and bool(row[c["active"]])
    )


def _tickets_out(
    cur: psycopg.Cursor[Any],
    q: TicketQuery,
    rows: list[tuple[Any, ...]],
    tags_q: InList,
    meta_q: InList,
    shown: int,
) -> list[dict[str, Any]]:
    """Tags for every fetched row (as the ORM's selectin load), metadata for the shown ones."""
    id_col = q.ticket["id"]
    ids = [r[id_col] for r in rows]
    if not ids:
        return []
    tags: dict[Any, list[str]] = {i: [] for i in ids}
    for ticket_id, tag in cur.execute(tags_q.sql(len(ids)), tags_q.params(ids)):
        tags[ticket_id].append(tag)
    page = rows[:shown]
    meta: dict[Any, dict[str, str]] = {r[id_col]: {} for r in page}
    if page:
        page_ids = [r[id_col] for r in page]
        for ticket_id, key, value in cur.execute(meta_q.sql(len(page)), meta_q.params(page_ids)):
            meta[ticket_id][key] = value
    return [_ticket_out(r, q, tags[r[id_col]], meta[r[id_col]]) for r in page]


def _encode_cursor(kind: str, *values: Any) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _next_cursor(sort: str, q: TicketQuery, last: tuple[Any, ...]) -> str:
    name = sort.lstrip("-")
    kind = f"tickets:{sort}"
    if name == "number":
        return _encode_cursor(kind, last[q.ticket["number"]])
    if name == "status":
        key: Any = STATUS_RANK.get(last[q.ticket["status"]], len(STATUS_RANK))
    else:
        key = last[q.ticket[name]]
        key = _iso(key) if isinstance(key, datetime) else key
    return _encode_cursor(kind, key, str(last[q.ticket["id"]]))


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
            q = plan.by_id
            rows = cur.execute(q.sql, {plan.by_id_param: ticket_id}).fetchall()
            if not rows:
                return _problem(404, "no such ticket")
            body = _tickets_out(cur, q, rows, plan.by_id_tags, plan.by_id_meta, 1)[0]
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
            q: TicketQuery = entry["main"]
            rows = cur.execute(q.sql, entry["params"]).fetchall()
            limit = entry["limit"]
            items = _tickets_out(cur, q, rows, entry["tags"], entry["metadata"], limit)
        more = len(rows) > limit and limit > 0
        cursor = _next_cursor(entry["sort"], q, rows[limit - 1]) if more else None
        return Response(json.dumps({"items": items, "next_cursor": cursor}), mimetype=JSON_TYPE)

    return app
