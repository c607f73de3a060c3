"""Benchmark of ticket reads through the real API on PostgreSQL, against a bare anchor.

One run:

1. creates (or, with ``--reuse``, reuses) a dedicated database, applies the
   project's Alembic migrations and seeds it with COPY (default 1,000,000
   tickets, a few hundred customers, ~20 agents, tags, metadata), then
   VACUUM ANALYZE; an admin token comes from ``gateway.users.services``;
2. captures, in-process, the statements the product sends now for each
   scenario, with their bound parameters: the Core token lookup, ONE ticket
   statement (customer and assignee joined, tags and metadata aggregated in
   correlated subqueries) and the occasional ``last_used_at`` UPDATE (see
   ``capture_product_sql``), and writes them where ``bench/anchor_app.py``
   reads them: the anchor replays exactly these statements through plain
   psycopg, one transaction per request;
3. starts the product (``supportgate api``) and the anchor under gunicorn
   with the same settings (gthread, same workers and threads), on loopback;
4. checks both answer every scenario with the same JSON documents, then loads each
   with ``wrk`` (warm-up, then a fixed duration, bounded connections);
5. prints requests/s, p50, p99 for both, the product/anchor ratio and the
   targets with PASS/FAIL; stops the servers it started (also on Ctrl-C).

Exit status: 0 all targets met, 1 a target missed, 2 the run could not be made.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import hashlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))  # runnable as `python bench/api_list.py` from anywhere

import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from gateway.config import Settings  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/sg_bench"
MARKER = "supportgate_bench"
SEED_FORMAT = 2  # bump when the generated data changes, so --reuse seeds anew
ADMIN_EMAIL = "bench-admin@example.com"
TAG_X_SHARE = 0.05

# Targets of the issue.
LIST_P99_MS = 50.0
MIN_RATIO = 0.70
RATIO_SCENARIOS = ("by_id", "list_status_priority")
# Both servers run with the product's default threads per worker unless told otherwise.
PRODUCT_THREADS: int = Settings.model_fields["api_threads"].default


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The run cannot go on; the message says why (exit status 2)."""


# --- database: create, migrate, seed -------------------------------------------------------------


def conninfo(url: str, database: str | None = None) -> str:
    """A libpq URL for psycopg from the SQLAlchemy URL (``postgresql+psycopg://``)."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@dataclass(frozen=True)
class SeedSpec:
    tickets: int
    customers: int
    agents: int
    seed: int


def _marker(conn: psycopg.Connection[Any], name: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        [name],
    ).fetchone()
    if row is None:
        return None
    try:
        found = json.loads(row[0] or "")
    except ValueError:
        found = None
    return found.get(MARKER) if isinstance(found, dict) else {"foreign": True}


def _set_marker(conn: psycopg.Connection[Any], name: str, value: dict[str, Any]) -> None:
    comment = json.dumps({MARKER: value}).replace("'", "''")
    conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{comment}'")


def prepare_database(url: str, spec: SeedSpec, reuse: bool) -> bool:
    """Create the database (or keep it with --reuse); True when it must be seeded."""
    name = make_url(url).database
    if not name or name in ("postgres", "template0", "template1"):
        raise BenchError(f"refusing to use database {name!r}: give the benchmark its own")
    with psycopg.connect(conninfo(url, "postgres"), autocommit=True) as admin:
        found = _marker(admin, name)
        if found is not None and found.get("foreign"):
            raise BenchError(
                f"database {name!r} exists and was not created by this benchmark; "
                "pick another name with --database-url"
            )
        wanted = {"seeded": True, "format": SEED_FORMAT, **asdict(spec)}
        if found is not None and reuse and found == wanted:
            log(f"reusing database {name} ({spec.tickets:,} tickets, seed {spec.seed})")
            return False
        if found is not None:
            why = "not --reuse" if not reuse else f"it holds {found}, wanted {wanted}"
            log(f"dropping database {name} ({why})")
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        _set_marker(admin, name, {"seeded": False, **asdict(spec)})
    return True


def mark_seeded(url: str, spec: SeedSpec) -> None:
    name = make_url(url).database or ""
    with psycopg.connect(conninfo(url, "postgres"), autocommit=True) as admin:
        _set_marker(admin, name, {"seeded": True, "format": SEED_FORMAT, **asdict(spec)})


STATUSES = ("new", "open", "pending", "on_hold", "solved", "closed")
# Status by the ticket's age: recent tickets are still being worked on.
STATUS_BY_AGE: list[tuple[float, tuple[int, ...]]] = [
    (7.0, (25, 35, 15, 5, 15, 5)),
    (30.0, (5, 25, 15, 8, 27, 20)),
    (float("inf"), (1, 5, 3, 2, 19, 70)),
]
PRIORITY_WEIGHTS = (20, 55, 18, 7)  # low, normal, high, urgent (stored as rank 0..3)
CHANNELS = (("email", 60), ("slack", 15), ("api", 15), ("web", 10))
TAG_POOL = (
    "billing", "bug", "feature-request", "login", "refund", "vip", "mobile",
    "api", "onboarding", "outage", "invoice", "sso",
)  # fmt: skip
TAG_COUNT_WEIGHTS = (30, 40, 20, 10)  # 0..3 tags besides `x`
SUBJECTS = (
    "Cannot log in after password reset", "Invoice shows the wrong VAT number",
    "App crashes when uploading a photo", "Refund for duplicate charge",
    "How do I export my data?", "SSO login loops back to the start page",
    "Webhook deliveries are delayed", "Feature request: dark mode",
    "Two-factor code never arrives", "Cannot change the billing address",
    "API returns 502 intermittently", "Add a teammate to our workspace",
    "Order stuck in processing", "Search does not find old messages",
    "Mobile notifications stopped", "Question about the enterprise plan",
)  # fmt: skip
SENTENCES = (
    "Since this morning the page only shows a spinner.",
    "We tried another browser and cleared the cache, with the same result.",
    "This blocks three people on our team from working.",
    "The error message says something about an expired session.",
    "It worked fine last week before the update.",
    "Please find the order number in the subject line.",
    "Could you tell us whether this is a known problem?",
    "We are on the annual plan and were charged twice this month.",
    "Steps: open the settings, click save, nothing happens.",
    "Our admin already reset the permissions once.",
    "The mobile app shows the same thing on Android and iOS.",
    "Thanks in advance for looking into it.",
)
METADATA_KEYS = ("crm_id", "order_id", "source")


def _cum(weights: tuple[int, ...] | list[float]) -> tuple[list[float], float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out, total


def _pick(rng: random.Random, cum: tuple[list[float], float]) -> int:
    return bisect.bisect_right(cum[0], rng.random() * cum[1])


def _uuid_hex(rng: random.Random) -> str:
    """A random (version 4) UUID as 32 hex digits, from the seeded generator."""
    bits = rng.getrandbits(128)
    bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)
    bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)
    return f"{bits:032x}"


def _ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


SEEDED_TABLES = ("users", "tickets", "ticket_tags", "ticket_metadata")


def _deferred_ddl(cur: psycopg.Cursor[Any]) -> tuple[list[str], list[str]]:
    """(drop, create) statements for the foreign keys and plain indexes of the seeded tables.

    They are dropped for the COPY and rebuilt from their catalog definitions
    afterwards, which is what the migrations created, only much faster.
    """
    tables = list(SEEDED_TABLES)
    fks = cur.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype = 'f' AND conrelid = ANY(%s::text[]::regclass[]) ORDER BY 1, 2",
        [tables],
    ).fetchall()
    indexes = cur.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid = ANY(%s::text[]::regclass[]) AND NOT EXISTS ("
        "  SELECT 1 FROM pg_constraint c"
        "  WHERE c.conindid = i.indexrelid AND c.contype IN ('p', 'u', 'x')) ORDER BY 1",
        [tables],
    ).fetchall()
    drop = [f'ALTER TABLE {t} DROP CONSTRAINT "{n}"' for t, n, _ in fks]
    drop += [f"DROP INDEX {name}" for name, _ in indexes]
    create = [definition for _, definition in indexes]
    create += [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, d in fks]
    return drop, create


def _copy(cur: psycopg.Cursor[Any], table: str, columns: str, chunks: Iterator[str]) -> None:
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FREEZE)") as copy:
        for chunk in chunks:
            copy.write(chunk)


def seed(url: str, spec: SeedSpec) -> dict[str, Any]:
    """Fill users, tickets, ticket_tags and ticket_metadata with COPY; returns counts."""
    rng = random.Random(spec.seed)
    now = time.time()
    year = 365 * 86400.0
    start = now - year

    customers = [_uuid_hex(rng) for _ in range(spec.customers)]
    agents = [_uuid_hex(rng) for _ in range(spec.agents)]
    user_lines = []
    for i, uid in enumerate(customers):
        created = _ts(start - 86400 * rng.uniform(1, 400))
        user_lines.append(
            f"{uid}\tcustomer{i:04d}@customers.example.com\tCustomer {i:04d}\tcustomer\t\\N"
            f"\tt\t{created}\t{created}\n"
        )
    for i, uid in enumerate(agents):
        created = _ts(start - 86400 * rng.uniform(1, 400))
        user_lines.append(
            f"{uid}\tagent{i:02d}@support.example.com\tAgent {i:02d}\tagent\tUBENCH{i:04d}"
            f"\tt\t{created}\t{created}\n"
        )
    customer_cum = _cum([1 / (k + 1) ** 0.7 for k in range(spec.customers)])
    agent_cum = _cum([1 + (k % 5) for k in range(spec.agents)])
    status_cums = [(limit, _cum(w)) for limit, w in STATUS_BY_AGE]
    priority_cum = _cum(PRIORITY_WEIGHTS)
    channel_cum = _cum(tuple(w for _, w in CHANNELS))
    tag_count_cum = _cum(TAG_COUNT_WEIGHTS)
    titles = [f"{s} ({p})" for s in SUBJECTS for p in ("web", "app", "api", "billing")]
    descriptions = [" ".join(rng.sample(SENTENCES, rng.randint(2, 5))) for _ in range(300)]
    plans = ('{"plan": "free"}', '{"plan": "pro"}', '{"plan": "enterprise"}')
    tag_lines: list[str] = []
    meta_lines: list[str] = []
    counts = {"tags_x": 0, "tag_rows": 0, "metadata_rows": 0, "archived": 0, "deleted": 0}
    counts.update({f"status_{s}": 0 for s in STATUSES})

    def ticket_chunks(chunk: int = 20000) -> Iterator[str]:
        buf: list[str] = []
        n = spec.tickets
        for i in range(n):
            tid = _uuid_hex(rng)
            created = start + year * (i + rng.random()) / n
            age_days = (now - created) / 86400
            cum = next(c for limit, c in status_cums if age_days <= limit)
            status = STATUSES[_pick(rng, cum)]
            counts[f"status_{status}"] += 1
            if status == "new":
                updated = created + rng.uniform(0, min(600.0, now - created))
                assignee = "\\N" if rng.random() < 0.85 else agents[_pick(rng, agent_cum)]
                messages, notes = 1, 0
            else:
                if status in ("solved", "closed"):
                    updated = created + min(rng.expovariate(1 / (3 * 86400)), now - created)
                else:
                    updated = created + rng.uniform(0, now - created)
                assignee = "\\N" if rng.random() < 0.04 else agents[_pick(rng, agent_cum)]
                messages = 1 + min(int(rng.expovariate(1 / 3)), 60)
                notes = rng.randint(0, (messages - 1) // 2)
            archived = deleted = "\\N"
            if status == "closed" and now - updated > 180 * 86400:
                archived = _ts(updated + 90 * 86400)
                counts["archived"] += 1
            if rng.random() < 0.005:
                deleted = _ts(updated)
                counts["deleted"] += 1
            custom = "{}" if rng.random() < 0.8 else plans[rng.randrange(3)]
            line = (
                f"{tid}\t{i + 1}\t{titles[rng.randrange(len(titles))]}"
                f"\t{descriptions[rng.randrange(len(descriptions))]}\t{status}"
                f"\t{_pick(rng, priority_cum)}\t{CHANNELS[_pick(rng, channel_cum)][0]}"
                f"\t{customers[_pick(rng, customer_cum)]}\t{assignee}\t{custom}"
                f"\t{messages}\t{notes}\t{rng.getrandbits(128):032x}"
                f"\t{_ts(created)}\t{_ts(updated)}\t{archived}\t{deleted}\t1"
            )
            tags = rng.sample(TAG_POOL, _pick(rng, tag_count_cum))
            if rng.random() < TAG_X_SHARE:
                tags.append("x")
                counts["tags_x"] += 1
            counts["tag_rows"] += len(tags)
            tag_lines.extend(f"{tid}\t{tag}\n" for tag in tags)
            doc: dict[str, str] = {}
            if rng.random() < 0.10:
                for key in rng.sample(METADATA_KEYS, rng.randint(1, 2)):
                    value = f"{key.split('_')[0].upper()}-{rng.randrange(10**6):06d}"
                    meta_lines.append(f"{_uuid_hex(rng)}\t{tid}\t{key}\t{value}\t{_ts(created)}\n")
                    counts["metadata_rows"] += 1
                    doc[key] = value
            # The ticket's metadata document (migration 0010), written here as the
            # triggers would (they are off for the COPY).
            buf.append(f"{line}\t{json.dumps(doc)}\n")
            if len(buf) >= chunk:
                yield "".join(buf)
                buf.clear()
        if buf:
            yield "".join(buf)

    def blocks(lines: list[str], size: int = 50000) -> Iterator[str]:
        for k in range(0, len(lines), size):
            yield "".join(lines[k : k + size])

    with psycopg.connect(conninfo(url)) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute("TRUNCATE users, tickets, ticket_tags, ticket_metadata CASCADE")
        drop, create = _deferred_ddl(cur)
        for statement in drop:
            cur.execute(statement)
        user_cols = "id, email, name, role, slack_user_id, active, created_at, updated_at"
        _copy(cur, "users", user_cols, iter(["".join(user_lines)]))
        ticket_cols = (
            "id, number, title, description, status, priority, channel, customer_id,"
            " assignee_id, custom_fields, message_count, note_count, reply_token,"
            " created_at, updated_at, archived_at, deleted_at, version, metadata_doc"
        )
        _copy(cur, "tickets", ticket_cols, ticket_chunks())
        log(f"  tickets copied in {time.perf_counter() - started:.0f} s")
        _copy(cur, "ticket_tags", "ticket_id, tag", blocks(tag_lines))
        # Row triggers would rewrite a ticket per metadata row; the documents are in the COPY.
        cur.execute("ALTER TABLE ticket_metadata DISABLE TRIGGER USER")
        _copy(cur, "ticket_metadata", "id, ticket_id, key, value, created_at", blocks(meta_lines))
        cur.execute("ALTER TABLE ticket_metadata ENABLE TRIGGER USER")
        log(f"  tags and metadata copied at {time.perf_counter() - started:.0f} s")
        cur.execute("SET LOCAL maintenance_work_mem = '1GB'")
        for statement in create:
            cur.execute(statement)
        log(f"  indexes and foreign keys rebuilt at {time.perf_counter() - started:.0f} s")
        cur.execute("SELECT setval('ticket_number_seq', (SELECT max(number) FROM tickets))")
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {', '.join(SEEDED_TABLES)}")
    log(f"  VACUUM ANALYZE done at {time.perf_counter() - started:.0f} s")
    return counts


def admin_token(url: str) -> str:
    """A fresh admin token through the product's own service (as `supportgate user add`)."""
    from gateway.db import Database
    from gateway.users.services import add_user_cli

    database = Database(url, null_pool=True)
    try:
        with database.transaction() as session:
            _, secret = add_user_cli(session, ADMIN_EMAIL, "admin", "Bench Admin", None)
    finally:
        database.dispose()
    return secret


def product_revision() -> dict[str, Any]:
    """The commit measured, and whether the product's files differed from it."""

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
        )
        return done.stdout.rstrip("\n")

    changed = git("status", "--porcelain", "--", "gateway", "web").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_product_files": changed}


def dataset_facts(url: str, seed_value: int, sample: int) -> dict[str, Any]:
    """Ids to request, the busiest agent, and counts for the report."""
    with psycopg.connect(conninfo(url)) as conn:
        conn.execute("SELECT setseed(%s)", [((seed_value % 1000) / 1000.0)])
        ids = [
            str(r[0])
            for r in conn.execute("SELECT id FROM tickets ORDER BY random() LIMIT %s", [sample])
        ]
        agent = conn.execute(
            "SELECT assignee_id, count(*) FROM tickets WHERE assignee_id IS NOT NULL"
            " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
        ).fetchone()
        (size,) = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM ticket_tags),"
            " (SELECT count(*) FROM ticket_tags WHERE tag = 'x'),"
            " (SELECT count(*) FROM ticket_metadata), (SELECT count(*) FROM users)"
        ).fetchone()
        statuses = dict(conn.execute("SELECT status, count(*) FROM tickets GROUP BY 1 ORDER BY 1"))
    if not ids or agent is None or counts is None:
        raise BenchError("the database holds no tickets")
    return {
        "ids": ids,
        "agent_id": str(agent[0]),
        "agent_tickets": int(agent[1]),
        "database_size": size[0],
        "tickets": counts[0],
        "ticket_tags": counts[1],
        "tagged_x": counts[2],
        "ticket_metadata": counts[3],
        "users": counts[4],
        "statuses": statuses,
    }


# --- scenarios and the product's SQL ----------------------------------------------------------


@dataclass
class Scenario:
    key: str
    label: str
    path: str  # for by_id: the prefix, ids are appended
    paths: list[str] = field(default_factory=list)  # what wrk requests
    is_list: bool = True


def scenarios_for(agent_id: str) -> list[Scenario]:
    return [
        Scenario("by_id", "GET /tickets/{id}", "/api/v1/tickets/", is_list=False),
        Scenario("list_all", "(a) no filter", "/api/v1/tickets"),
        Scenario(
            "list_status_priority",
            "(b) status=open&priority=high",
            "/api/v1/tickets?status=open&priority=high",
        ),
        Scenario(
            "list_assignee",
            "(c) assignee=<agent>&sort=-created_at",
            f"/api/v1/tickets?assignee={agent_id}&sort=-created_at",
        ),
        Scenario("list_tag", "(d) tag=x", "/api/v1/tickets?tag=x"),
        Scenario("list_deep", "(e) deep cursor page", "/api/v1/tickets?cursor="),
    ]


def encode_param(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise BenchError(f"cannot record a bound parameter of type {type(value).__name__}")


def _classify(statement: str) -> str:
    if "FROM api_tokens JOIN users" in statement:
        return "auth"
    if statement.startswith("UPDATE api_tokens SET last_used_at"):
        return "touch"
    if statement.startswith("SELECT tickets.id"):
        return "main"
    return "other"


def capture_product_sql(
    url: str, token: str, scenarios: list[Scenario], ids: list[str], deep_pages: int
) -> dict[str, Any]:
    """Record, in-process, the statements the product sends: the anchor's workload.

    Per scenario, one real request to the product (after a first one that
    warms it up) is recorded at the driver (psycopg's ``Cursor.execute``):
    the statement texts exactly as the driver receives them, with their bound
    parameters. The product's read path must send the Core token lookup and
    ONE ticket statement (tickets + customer + assignee joined, tags and
    metadata aggregated in correlated subqueries), nothing else; the
    ``UPDATE api_tokens SET last_used_at`` that ``authenticate`` sends at most
    every ten minutes is recorded from the first request of the run (the
    token is fresh). ``bench/anchor_app.py`` replays these statements.

    Also walks the default listing ``deep_pages`` pages along its cursor and
    sets the deep scenario's URL to the page reached.
    """
    import psycopg

    from gateway.config import load_settings
    from web.app import create_app

    app = create_app(load_settings(database_url=url, rate_limit_per_minute=0))
    db = app.extensions["supportgate"].db
    seen: list[tuple[str, Any]] = []

    # Recorded at the driver (psycopg's Cursor.execute), so statements the product
    # runs on the driver's cursor itself (gateway.db.DriverQuery) are seen too.
    original_execute = psycopg.Cursor.execute

    def recording_execute(self: Any, query: Any, params: Any = None, *a: Any, **k: Any) -> Any:
        text = query if isinstance(query, str) else query.as_string(self)
        if text.strip().rstrip(";").strip().upper() not in ("", "SELECT 1"):  # pool pings
            seen.append((text, dict(params or {})))
        return original_execute(self, query, params, *a, **k)

    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}

    def get(path: str) -> Any:
        response = client.get(path, headers=headers)
        if response.status_code != 200:
            raise BenchError(f"product answered {response.status_code} to {path}: {response.text}")
        return response.get_json()

    def entry(statement: str, params: Any) -> dict[str, Any]:
        return {"sql": statement, "params": {k: encode_param(v) for k, v in params.items()}}

    captured: dict[str, Any] = {"dsn": conninfo(url), "lists": [], "product": {}}
    psycopg.Cursor.execute = recording_execute  # type: ignore[method-assign]
    try:
        seen.clear()
        get("/api/v1/tickets/" + ids[0])  # the first request of the (fresh) token
        touch = [entry(s, p) for s, p in seen if _classify(s) == "touch"]
        if len(touch) != 1:
            raise BenchError(
                "the product's first request with a fresh token sent no (or several) "
                "UPDATE api_tokens SET last_used_at; bench/anchor_app.py needs updating"
            )
        captured["touch"] = touch[0]

        deep = next((s for s in scenarios if s.key == "list_deep"), None)
        if deep is not None:
            cursor = None
            for page in range(deep_pages):
                page_path = "/api/v1/tickets" + (f"?cursor={cursor}" if cursor else "")
                cursor = get(page_path)["next_cursor"]
                if cursor is None:
                    raise BenchError(f"the default listing ends after {page + 1} pages")
            deep.path = f"/api/v1/tickets?cursor={cursor}"
            deep.label = f"(e) cursor page {deep_pages + 1}"

        for s in scenarios:
            path = s.path + ids[0] if not s.is_list else s.path
            get(path)  # first request of this URL: statement caches, plans
            seen.clear()
            body = get(path)
            sent = [entry(statement, params) for statement, params in seen]
            captured["product"][s.key] = sent
            kinds = [_classify(e["sql"]) for e in sent]
            if kinds != ["auth", "main"]:
                raise BenchError(
                    f"{s.key}: the product sent {kinds}, not [auth, main] (token lookup and "
                    "one ticket statement); bench/anchor_app.py needs updating"
                )
            found = dict(zip(kinds, sent, strict=True))
            captured["auth"] = found["auth"]
            if not s.is_list:
                if len(found["main"]["params"]) != 1:
                    raise BenchError(f"{s.key}: the ticket statement binds more than the id")
                captured["by_id"] = {"main": found["main"]}
                continue
            if not body["items"]:
                raise BenchError(f"{s.key}: {path} returns no tickets; the data set is wrong")
            query = urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query)
            q = dict(query)
            captured["lists"].append(
                {
                    "scenario": s.key,
                    "query": query,
                    "sort": q.get("sort", "-updated_at"),
                    "limit": int(q.get("limit", 25)),
                    "main": found["main"],
                }
            )
    finally:
        psycopg.Cursor.execute = original_execute  # type: ignore[method-assign]
        db.dispose()
    for s in scenarios:
        s.paths = [s.path + i for i in ids] if not s.is_list else [s.path]
    return captured


# --- servers -------------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As gunicorn binds: a listener makes this fail, TIME_WAIT leftovers do not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Server:
    """A gunicorn process tree in its own session, stopped by its process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, out: Path):
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.log_path = out / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        if not _port_free(self.port):
            raise BenchError(f"port {self.port} for the {self.name} is in use; pick another")
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise BenchError(f"the {self.name} exited ({self.proc.returncode}):\n{tail}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        log(f"{self.name} up on {self.base} (pid {self.proc.pid})")
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise BenchError(f"the {self.name} did not answer /healthz within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 3.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers of a killed master could linger in the group: sweep it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def product_server(args: argparse.Namespace, out: Path) -> Server:
    env = dict(os.environ)
    env.update(
        {
            "SUPPORTGATE_DATABASE_URL": args.database_url,
            "SUPPORTGATE_API_HOST": "127.0.0.1",
            "SUPPORTGATE_API_PORT": str(args.product_port),
            "SUPPORTGATE_API_WORKERS": str(args.workers),
            "SUPPORTGATE_API_THREADS": str(args.threads),
            "SUPPORTGATE_RATE_LIMIT_PER_MINUTE": "0",
            "SUPPORTGATE_DATA_DIR": str(out / "data"),
        }
    )
    return Server("product", [_venv_bin("supportgate"), "api"], env, args.product_port, out)


def anchor_server(args: argparse.Namespace, out: Path, sql_path: Path) -> Server:
    # The settings web/cli.py `_run_gunicorn` gives the product (its worker class and
    # hooks: anchor_gunicorn.py).
    argv = [
        _venv_bin("gunicorn"),
        "--chdir", str(BENCH_DIR),
        "--bind", f"127.0.0.1:{args.anchor_port}",
        "--workers", str(args.workers),
        "--threads", str(args.threads),
        "--graceful-timeout", "20",
        "--name", "supportgate-anchor",
        "--config", str(BENCH_DIR / "anchor_gunicorn.py"),
        "anchor_app:create_app()",
    ]  # fmt: skip
    env = dict(os.environ, SG_BENCH_ANCHOR_SQL=str(sql_path))
    return Server("anchor", argv, env, args.anchor_port, out)


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise BenchError(f"`{name}` not found next to {sys.executable} nor on PATH")
    return found


# --- load ----------------------------------------------------------------------------------------

LUA = """\
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer %(token)s"
local paths = {%(paths)s}
local count = #paths
local fixed = nil
local next_id = 1

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0))
  if count == 1 then fixed = wrk.format(nil, paths[1]) end
end

function request()
  if fixed then return fixed end
  return wrk.format(nil, paths[math.random(count)])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"p50_us":%%.0f,' ..
    '"p90_us":%%.0f,"p99_us":%%.0f,"max_us":%%.0f,"mean_us":%%.1f,"status_errors":%%d,' ..
    '"connect_errors":%%d,"read_errors":%%d,"write_errors":%%d,"timeouts":%%d}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def write_lua(path: Path, token: str, paths: list[str]) -> None:
    quoted = ",\n  ".join(json.dumps(p) for p in paths)  # JSON strings are Lua strings here
    path.write_text(LUA % {"token": token, "paths": "\n  " + quoted + "\n"})


_CLK = os.sysconf("SC_CLK_TCK")
# A backend ("postgres: 15/main: USER DB HOST(PORT) STATE") or an autovacuum worker names its
# database; background processes (checkpointer, walwriter, ...) name none.
_PG_TITLE = re.compile(
    r"postgres: [^:]+: (?:autovacuum worker (\S+)|\S+ (\S+) (?:\S+\(\d+\)|\[local\]))"
)


@dataclass
class CpuSnapshot:
    """CPU ticks per pid, split into the server's process group, PostgreSQL, and the machine."""

    group: dict[int, int]
    db: dict[int, int]
    machine_busy: int  # ticks the machine's CPUs ran anything (steal excluded)
    steal: int  # ticks the hypervisor gave to other machines
    at: float


def cpu_snapshot(pgid: int, dbname: str) -> CpuSnapshot:
    """PostgreSQL here means the backends of ``dbname`` and the shared background processes,
    not the backends of other databases (other people's tests may share the server)."""
    group: dict[int, int] = {}
    db: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
            name = raw[raw.find("(") + 1 : raw.rfind(")")]
            fields = raw[raw.rfind(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])
            if int(fields[2]) == pgid:
                group[int(entry.name)] = ticks
            elif name == "postgres":
                title = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found = _PG_TITLE.match(title)
                if found is None or dbname in found.groups():
                    db[int(entry.name)] = ticks
        except (OSError, ValueError, IndexError):
            continue
    busy, steal = _machine_ticks()
    return CpuSnapshot(group, db, busy, steal, time.monotonic())


@dataclass
class CpuUse:
    """CPU seconds used between snapshots (summed over several pairs with ``add``)."""

    elapsed: float = 0.0
    app: float = 0.0  # the server's process group
    db: float = 0.0
    machine: float = 0.0
    steal: float = 0.0
    by_process: dict[int, float] = field(default_factory=dict)

    def add(self, before: CpuSnapshot, after: CpuSnapshot) -> CpuUse:
        self.elapsed += after.at - before.at
        self.app += _delta(before.group, after.group)
        self.db += _delta(before.db, after.db)
        self.machine += (after.machine_busy - before.machine_busy) / _CLK
        self.steal += (after.steal - before.steal) / _CLK
        for pid, t in after.group.items():
            used = (t - before.group.get(pid, 0)) / _CLK
            self.by_process[pid] = self.by_process.get(pid, 0.0) + used
        return self

    def other_cores(self, client: float) -> float:
        """Cores used by neither the server, PostgreSQL nor the client (CPU seconds)."""
        return max(0.0, self.machine - self.app - self.db - client) / self.elapsed

    def worker_cores(self) -> list[float]:
        cores = (c / self.elapsed for c in self.by_process.values())
        return sorted((round(c, 2) for c in cores if c >= 0.01), reverse=True)


def _machine_ticks() -> tuple[int, int]:
    """(busy, steal) ticks of all CPUs: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as fh:
        cpu = [int(x) for x in fh.readline().split()[1:9]]
    return sum(cpu) - cpu[3] - cpu[4] - cpu[7], cpu[7]


def _delta(before: dict[int, int], after: dict[int, int]) -> float:
    """Seconds of CPU between two snapshots; processes that appeared count from zero."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / _CLK


def busy_cores(seconds: float = 2.0) -> float:
    """Cores kept busy on the whole machine over ``seconds``."""

    b0, t0 = _machine_ticks()[0], time.monotonic()
    time.sleep(seconds)
    return (_machine_ticks()[0] - b0) / _CLK / (time.monotonic() - t0)


def wait_quiet(limit: float, timeout: float) -> float:
    """Wait (bounded) until other work on the machine uses less than ``limit`` cores."""
    deadline = time.monotonic() + timeout
    while True:
        load = busy_cores()
        if load <= limit or time.monotonic() >= deadline:
            if load > limit:
                log(f"warning: the machine is busy ({load:.2f} cores) before a run; going on")
            return load
        log(f"waiting for a quiet machine ({load:.2f} cores busy)")


@dataclass
class Run:
    scenario: str
    server: str
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    connections: int
    app_cpu_ms_per_req: float
    db_cpu_ms_per_req: float
    wrk_cpu_ms_per_req: float
    other_cores: float  # CPU used by everything else on the machine during the run
    steal_cores: float  # CPU the hypervisor took for other machines during the run
    worker_cores: list[float]  # each server process's CPU, busiest first (1.0 = a full core)
    rps_min: float = 0.0
    rps_max: float = 0.0
    samples: int = 1
    # Paced runs: the host's speed meanwhile (see HostMeter): the CPU time of a fixed
    # pure-Python loop, µs, median and 90th percentile over the run's slices.
    host_loop_us_p50: float = 0.0
    host_loop_us_p90: float = 0.0


def run_wrk(
    args: argparse.Namespace,
    server: Server,
    scenario: Scenario,
    lua: Path,
    seconds: float,
    connections: int,
    measure: bool = True,
) -> Run | None:
    threads = min(args.wrk_threads, connections)
    argv = [
        args.wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
        "--timeout", "10s", "--latency", "-s", str(lua), server.base,
    ]  # fmt: skip
    assert server.proc is not None
    dbname = make_url(args.database_url).database or ""
    before = cpu_snapshot(server.proc.pid, dbname)
    wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = cpu_snapshot(server.proc.pid, dbname)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    if not measure:
        return None
    r = json.loads(line.removeprefix("BENCH_JSON "))
    n = max(1, r["requests"])
    errors = sum(r[k] for k in ("status_errors", "connect_errors", "read_errors", "timeouts"))
    wrk_cpu = (wrk1.ru_utime + wrk1.ru_stime) - (wrk0.ru_utime + wrk0.ru_stime)
    use = CpuUse().add(before, after)
    (args.out / f"wrk_{scenario.key}_{server.name}_c{connections}.txt").write_text(done.stdout)
    return Run(
        scenario=scenario.key,
        server=server.name,
        requests=r["requests"],
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        max_ms=r["max_us"] / 1000,
        errors=errors,
        connections=connections,
        app_cpu_ms_per_req=use.app * 1000 / n,
        db_cpu_ms_per_req=use.db * 1000 / n,
        wrk_cpu_ms_per_req=wrk_cpu * 1000 / n,
        other_cores=use.other_cores(wrk_cpu),
        steal_cores=use.steal / use.elapsed,
        worker_cores=use.worker_cores(),
        rps_min=r["requests"] / (r["duration_us"] / 1e6),
        rps_max=r["requests"] / (r["duration_us"] / 1e6),
    )


# --- paced load ----------------------------------------------------------------------------------

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close\b", re.IGNORECASE)


async def _paced_requests(
    port: int, token: str, paths: list[str], rate: float, seconds: float, connections: int
) -> tuple[list[float], int, float]:
    """Open-loop load: request k is due at t0 + k / rate and goes out on whichever of
    ``connections`` keep-alive connections is free. Its latency counts from its due time,
    so waiting for a connection counts too (no coordinated omission, unlike wrk's closed
    loop, whose latency at saturation is the length of its own queue).

    The client's own pauses would count as the server's: it keeps at most ``connections``
    requests in flight as tasks, and Python's collector is off during the run.

    Returns the latencies (s), the failed requests and the client's CPU seconds."""
    import asyncio
    import gc

    loop = asyncio.get_running_loop()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    rng = random.Random(20261127)
    count = max(1, int(rate * seconds))
    head = f" HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    requests = [f"GET {rng.choice(paths)}{head}".encode() for _ in range(count)]
    latencies: list[float] = []
    failed = 0
    problems: list[BaseException] = []

    async def one(i: int, due: float, reader: Any, writer: Any) -> None:
        nonlocal failed
        try:
            writer.write(requests[i])
            header = await reader.readuntil(b"\r\n\r\n")
            length = _CONTENT_LENGTH.search(header)
            if length is None:  # every answer of the API carries one
                raise BenchError(f"an answer without Content-Length: {header[:200]!r}")
            await reader.readexactly(int(length.group(1)))
            latencies.append(loop.time() - due)
            if not header.startswith(b"HTTP/1.1 200 "):
                failed += 1
            if _CLOSE.search(header):  # the server ends this connection: open another
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except Exception as exc:  # raised again once the run is over
            problems.append(exc)
        finally:
            pool.put_nowait((reader, writer))

    inflight: set[asyncio.Task[None]] = set()
    collecting = gc.isenabled()
    gc.disable()
    cpu0 = time.process_time()
    try:
        t0 = loop.time() + 0.05
        for i in range(count):
            if problems:
                break
            due = t0 + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, due, *await pool.get()))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        await asyncio.gather(*inflight)
    finally:
        cpu = time.process_time() - cpu0
        if collecting:
            gc.enable()
    while not pool.empty():
        pool.get_nowait()[1].close()
    if problems:
        raise problems[0]
    return latencies, failed, cpu


# A fixed pure-Python loop, timed in the thread's CPU time every 50 ms by a process of its
# own (about 1 % of a core). CPU time leaves out being preempted by the servers: what moves
# it is the speed the host gives a core (a shared physical core, frequency). On a quiet
# 2-vCPU VM this was seen to drift by 2x within a second, in runs of tens of milliseconds:
# an open-loop run near a server's limit backlogs in such a run, so each paced result
# carries the meter's reading of its own slices.
_HOST_METER = """
import sys, time
while True:
    c = time.thread_time()
    s = 0
    for i in range(3000):
        s += i
    sys.stdout.write(f"{(time.thread_time() - c) * 1e6:.0f}\\n")
    sys.stdout.flush()
    time.sleep(0.05)
"""


class HostMeter:
    """``with HostMeter() as meter:`` ... then ``meter.samples``: the loop's CPU µs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HostMeter:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _HOST_METER], stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        self._proc.stdout.readline()  # started: its start-up is not the run's
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        self.samples = [float(x) for x in out.split()]


@dataclass
class _Paced:
    """What the slices of one server's paced run add up to."""

    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    client_cpu: float = 0.0
    cpu: CpuUse = field(default_factory=CpuUse)
    host_loop_us: list[float] = field(default_factory=list)


def paced_runs(
    args: argparse.Namespace, servers: list[Server], scenario: Scenario, token: str, rate: float
) -> dict[str, Run]:
    """``args.paced_duration`` seconds at ``rate`` requests/s for each server (see
    _paced_requests), in ``args.paced_slices`` slices taken in turn, A B B A A B ...:
    the speed of a shared host drifts by tens of percent within minutes, and one server
    measured after the other would see a different machine. The slices are pooled."""
    import asyncio

    dbname = make_url(args.database_url).database or ""
    seconds = args.paced_duration / max(1, args.paced_slices)
    pooled = {server.name: _Paced() for server in servers}
    for k in range(max(1, args.paced_slices)):
        for server in in_turn(servers, k):
            assert server.proc is not None
            wait_quiet(args.quiet_cores, args.quiet_timeout)
            before = cpu_snapshot(server.proc.pid, dbname)
            with HostMeter() as meter:
                latencies, failed, client_cpu = asyncio.run(
                    _paced_requests(
                        server.port, token, scenario.paths, rate, seconds, args.connections
                    )
                )
            after = cpu_snapshot(server.proc.pid, dbname)
            acc = pooled[server.name]
            acc.host_loop_us += meter.samples
            acc.latencies += latencies
            acc.failed += failed
            acc.client_cpu += client_cpu
            acc.cpu.add(before, after)
    return {name: _paced_result(args, scenario, name, acc, rate) for name, acc in pooled.items()}


def _paced_result(
    args: argparse.Namespace, scenario: Scenario, name: str, acc: _Paced, rate: float
) -> Run:
    n = len(acc.latencies)
    ms = sorted(x * 1000 for x in acc.latencies)
    r = Run(
        scenario=scenario.key,
        server=name,
        requests=n,
        rps=n / acc.cpu.elapsed,
        p50_ms=_pct(ms, 50),
        p90_ms=_pct(ms, 90),
        p99_ms=_pct(ms, 99),
        max_ms=ms[-1],
        errors=acc.failed,
        connections=args.connections,
        app_cpu_ms_per_req=acc.cpu.app * 1000 / n,
        db_cpu_ms_per_req=acc.cpu.db * 1000 / n,
        wrk_cpu_ms_per_req=acc.client_cpu * 1000 / n,
        other_cores=acc.cpu.other_cores(acc.client_cpu),
        steal_cores=acc.cpu.steal / acc.cpu.elapsed,
        worker_cores=acc.cpu.worker_cores(),
        rps_min=rate,
        rps_max=rate,
    )
    if acc.host_loop_us:
        loop = sorted(acc.host_loop_us)
        r.host_loop_us_p50, r.host_loop_us_p90 = _pct(loop, 50), _pct(loop, 90)
    log(
        f"{scenario.key:22} {name:8} paced {rate:7,.0f}/s  p50 {r.p50_ms:6.1f} ms"
        f"  p99 {r.p99_ms:6.1f} ms  max {r.max_ms:6.1f} ms  errors {r.errors}"
        f"  other {r.other_cores:.2f}  host loop p50/p90 {r.host_loop_us_p50:.0f}"
        f"/{r.host_loop_us_p90:.0f} us"
    )
    return r


def add_paced_arguments(p: argparse.ArgumentParser, share_help: str) -> None:
    """--paced-share, --paced-duration and --paced-slices, read by ``paced_runs``."""
    p.add_argument(
        "--paced-share", type=float, default=0.5, help=f"{share_help}, open loop (0: skip)"
    )
    p.add_argument(
        "--paced-duration", type=float, default=20.0, help="seconds of that run, per server"
    )
    p.add_argument(
        "--paced-slices",
        type=int,
        default=4,
        help="slices of that run, servers in turn (A B B A ...), pooled",
    )


def _pct(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * q / 100 + 0.5) - 1))]


def in_turn(servers: list[Server], k: int) -> list[Server]:
    """The order of the servers in round ``k``: A B, B A, A B, ... so that neither is always
    measured first (the speed of a shared host drifts within minutes)."""
    return servers if k % 2 == 0 else servers[::-1]


def measured_runs(
    args: argparse.Namespace,
    servers: list[Server],
    scenario: Scenario,
    lua: Path,
    seconds: float,
    connections: int,
    repeat: int,
) -> dict[str, Run]:
    """``repeat`` runs of each server on a quiet machine, the servers in turn (``in_turn``),
    combined by their medians.

    A run during which other processes took more than --quiet-cores is run
    again (at most --retries times per sample; then the quietest is kept).
    Repeating matters beyond noise: wrk opens its connections once, and how
    gunicorn's workers happen to share them changes throughput from run to run.
    """
    samples: dict[str, list[Run]] = {server.name: [] for server in servers}
    for k in range(repeat):
        for server in in_turn(servers, k):
            samples[server.name].append(
                _quiet_sample(args, server, scenario, lua, seconds, connections)
            )
    return {name: combine(runs) for name, runs in samples.items()}


def _quiet_sample(
    args: argparse.Namespace,
    server: Server,
    scenario: Scenario,
    lua: Path,
    seconds: float,
    connections: int,
) -> Run:
    attempts: list[Run] = []
    for attempt in range(args.retries + 1):
        wait_quiet(args.quiet_cores, args.quiet_timeout)
        r = run_wrk(args, server, scenario, lua, seconds, connections)
        assert r is not None
        attempts.append(r)
        noisy = r.other_cores > args.quiet_cores
        log(
            f"{scenario.key:22} {server.name:8} c={connections:<3} {r.rps:7,.0f} req/s"
            f"  p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:6.1f} ms  errors {r.errors}"
            f"  workers {'/'.join(f'{c:.2f}' for c in r.worker_cores)} cores"
            f"  other {r.other_cores:.2f}"
            + ("  (noisy: again)" if noisy and attempt < args.retries else "")
        )
        if not noisy:
            break
    return min(attempts, key=lambda x: x.other_cores)


def combine(samples: list[Run]) -> Run:
    """Medians of the samples (max of max latency, sum of errors), with the spread of req/s."""

    def med(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in samples))

    middle = sorted(samples, key=lambda r: r.rps)[len(samples) // 2]
    return Run(
        scenario=middle.scenario,
        server=middle.server,
        requests=sum(r.requests for r in samples),
        rps=med("rps"),
        p50_ms=med("p50_ms"),
        p90_ms=med("p90_ms"),
        p99_ms=med("p99_ms"),
        max_ms=max(r.max_ms for r in samples),
        errors=sum(r.errors for r in samples),
        connections=middle.connections,
        app_cpu_ms_per_req=med("app_cpu_ms_per_req"),
        db_cpu_ms_per_req=med("db_cpu_ms_per_req"),
        wrk_cpu_ms_per_req=med("wrk_cpu_ms_per_req"),
        other_cores=max(r.other_cores for r in samples),
        steal_cores=max(r.steal_cores for r in samples),
        worker_cores=middle.worker_cores,
        rps_min=min(r.rps for r in samples),
        rps_max=max(r.rps for r in samples),
        samples=len(samples),
    )


def _fetch(base: str, path: str, token: str) -> tuple[int, str | None, bytes]:
    """Status, ETag and body bytes of a GET."""
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            return r.status, r.headers.get("ETag"), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, None, exc.read()


def _canonical(body: bytes) -> str:
    """A JSON document re-encoded one way: equal for equal values with keys in equal order."""
    return json.dumps(json.loads(body), ensure_ascii=False)


def check_same_answers(
    product: Server, anchor: Server, scenarios: list[Scenario], token: str, ids: int = 100
) -> dict[str, int]:
    """The anchor must answer every benchmarked request exactly as the product does.

    Same status (200), same ETag, the same JSON document (equal parsed values, keys
    in the same order); by id for the first ``ids`` ids wrk requests. Not the same
    bytes: the product answers compact UTF-8 JSON (orjson), the anchor the stdlib's
    ``json.dumps`` with its spaces. Returns the number of requests compared per
    scenario.
    """
    compared: dict[str, int] = {}
    for s in scenarios:
        for path in s.paths[:ids]:
            p_status, p_etag, p_body = _fetch(product.base, path, token)
            a_status, a_etag, a_body = _fetch(anchor.base, path, token)
            same_json = p_status == a_status == 200 and _canonical(p_body) == _canonical(a_body)
            if not same_json or p_etag != a_etag:
                raise BenchError(
                    f"{s.key}: product {p_status} and anchor {a_status} differ on {path} "
                    f"(ETag {p_etag} / {a_etag}; same JSON document: {same_json})\n"
                    f"product: {p_body[:400]!r}\nanchor:  {a_body[:400]!r}"
                )
            compared[s.key] = compared.get(s.key, 0) + 1
    log(
        "anchor and product return the same JSON documents (and ETag) for every scenario: "
        + ", ".join(f"{k} {n}" for k, n in compared.items())
    )
    return compared


# --- report --------------------------------------------------------------------------------------


def cpu_ratio(product: Run, anchor: Run) -> float:
    """Anchor's CPU per request over the product's (server and PostgreSQL)."""
    used = product.app_cpu_ms_per_req + product.db_cpu_ms_per_req
    return (anchor.app_cpu_ms_per_req + anchor.db_cpu_ms_per_req) / used if used else 0.0


def evaluate(
    scenarios: list[Scenario],
    runs: dict[tuple[str, str], Run],
    paced: dict[tuple[str, str], Run] | None = None,
) -> list[tuple[str, bool, str]]:
    """The targets. A list's p99 is read on the paced run when there is one: at a stated
    load, like the mail bench's half-load p99. wrk's closed loop keeps the machine saturated,
    so its p99 is the length of wrk's own queue (16 connections over 2 cores: the bare
    anchor's p99 there is 41-64 ms), reported beside it but not a target."""
    checks = []
    for s in scenarios:
        p = runs.get((s.key, "product"))
        a = runs.get((s.key, "anchor"))
        if p is None:
            continue
        pp = (paced or {}).get((s.key, "product"))
        if p.errors or (a is not None and a.errors) or (pp is not None and pp.errors):
            checks.append((f"{s.label}: no failed requests", False, "errors during the run"))
        if s.is_list and pp is not None:
            pa = (paced or {}).get((s.key, "anchor"))
            checks.append(
                (
                    f"{s.label}: product p99 < {LIST_P99_MS:.0f} ms at {pp.rps_min:,.0f} req/s",
                    pp.p99_ms < LIST_P99_MS,
                    f"{pp.p99_ms:.1f} ms" + (f"; anchor {pa.p99_ms:.1f} ms" if pa else ""),
                )
            )
        elif s.is_list:
            checks.append(
                (
                    f"{s.label}: product p99 < {LIST_P99_MS:.0f} ms",
                    p.p99_ms < LIST_P99_MS,
                    f"{p.p99_ms:.1f} ms",
                )
            )
        if s.key in RATIO_SCENARIOS and a is not None:
            ratio = p.rps / a.rps
            checks.append(
                (
                    f"{s.label}: product req/s >= {MIN_RATIO:.0%} of anchor",
                    ratio >= MIN_RATIO,
                    f"{ratio:.0%}; by CPU {cpu_ratio(p, a):.0%}",
                )
            )
    return checks


def render(
    scenarios: list[Scenario],
    runs: dict[tuple[str, str], Run],
    light: dict[tuple[str, str], Run],
    checks: list[tuple[str, bool, str]],
    paced: dict[tuple[str, str], Run] | None = None,
    paced_share: float = 0.0,
) -> str:
    out = io.StringIO()
    w = out.write
    n = next(iter(runs.values())).samples if runs else 0
    w(
        f"Under load: medians of {n} runs each (req/s: median (min..max)):\n\n"
        "| scenario | product req/s | p50 ms | p99 ms | anchor req/s | p50 ms | p99 ms "
        "| product/anchor req/s | by CPU |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for s in scenarios:
        p, a = runs.get((s.key, "product")), runs.get((s.key, "anchor"))
        cells = [s.label]
        for r in (p, a):
            rps = f"{r.rps:,.0f} ({r.rps_min:,.0f}..{r.rps_max:,.0f})" if r else ""
            cells += [rps, f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}"] if r else ["-"] * 3
        cells.append(f"{p.rps / a.rps:.0%}" if p and a else "-")
        cells.append(f"{cpu_ratio(p, a):.0%}" if p and a else "-")
        w("| " + " | ".join(cells) + " |\n")
    w(
        "\n`by CPU`: anchor's CPU per request (server + PostgreSQL) / product's, the throughput\n"
        "ratio on a CPU-bound machine whatever the worker split or noise of a run.\n"
    )
    if light:
        c = next(iter(light.values())).connections
        w(
            f"\nService time, {c} connection(s) (no queueing):\n\n"
            "| scenario | product req/s | p50 ms | p99 ms | anchor req/s | p50 ms | p99 ms |\n"
            "|---|---:|---:|---:|---:|---:|---:|\n"
        )
        for s in scenarios:
            cells = [s.label]
            for r in (light.get((s.key, "product")), light.get((s.key, "anchor"))):
                cells += [f"{r.rps:,.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}"] if r else ["-"] * 3
            w("| " + " | ".join(cells) + " |\n")
    if paced:
        c = next(iter(paced.values())).connections
        w(
            f"\nPaced: {paced_share:.0%} of the anchor's req/s above, offered to both servers"
            f" open loop over {c} connections; latency from each request's due time:\n\n"
            "| scenario | req/s offered | product p50 ms | p99 ms | max ms | host loop µs "
            "| anchor p50 ms | p99 ms | max ms | host loop µs |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        for s in scenarios:
            p, a = paced.get((s.key, "product")), paced.get((s.key, "anchor"))
            if p is None:
                continue
            cells = [s.label, f"{p.rps_min:,.0f}"]
            for r in (p, a):
                if r:
                    cells += [f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.1f}"]
                    cells += [f"{r.host_loop_us_p50:.0f} / {r.host_loop_us_p90:.0f}"]
            w("| " + " | ".join(cells) + " |\n")
        w(
            "\nHost loop: CPU µs of a fixed pure-Python loop timed every 50 ms during the"
            " paced slices, median / 90th percentile (higher: a slower host).\n"
        )
    w(
        "\nCPU per request under load, ms (app: the server's processes; db: PostgreSQL; "
        "wrk: the load generator); CPU of each server process (cores); "
        "cores used by other processes meanwhile:\n\n"
        "| scenario | product app | db | wrk | processes | other "
        "| anchor app | db | wrk | processes | other |\n"
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|\n"
    )
    for s in scenarios:
        cells = [s.label]
        for r in (runs.get((s.key, "product")), runs.get((s.key, "anchor"))):
            cpu = (
                [
                    f"{r.app_cpu_ms_per_req:.2f}",
                    f"{r.db_cpu_ms_per_req:.2f}",
                    f"{r.wrk_cpu_ms_per_req:.2f}",
                    "/".join(f"{c:.2f}" for c in r.worker_cores),
                    f"{r.other_cores:.2f}",
                ]
                if r
                else []
            )
            cells += cpu or ["-"] * 5
        w("| " + " | ".join(cells) + " |\n")
    w("\nTargets:\n\n")
    for name, ok, got in checks:
        w(f"- {'PASS' if ok else 'FAIL'}  {name} (measured {got})\n")
    return out.getvalue()


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--database-url", default=DEFAULT_URL, help="dedicated benchmark database")
    p.add_argument("--reuse", action="store_true", help="keep a database seeded alike before")
    p.add_argument("--tickets", type=int, default=1_000_000)
    p.add_argument("--customers", type=int, default=400)
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--seed", type=int, default=20261126, help="random seed of the data set")
    p.add_argument("--seed-only", action="store_true", help="prepare the database and stop")
    p.add_argument("--duration", type=int, default=15, help="seconds of load per run")
    p.add_argument(
        "--warmup", type=int, default=3, help="seconds of load before each run (0: none)"
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per scenario and server; medians are reported"
    )
    p.add_argument("--connections", type=int, default=16, help="wrk connections")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    p.add_argument("--wrk", default="wrk", help="the wrk binary")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers of both servers")
    p.add_argument(
        "--threads", type=int, default=PRODUCT_THREADS, help="gunicorn threads per worker"
    )
    p.add_argument(
        "--light-connections",
        type=int,
        default=1,
        help="also run each scenario at this concurrency to show service time (0: skip)",
    )
    p.add_argument("--light-duration", type=int, default=8, help="seconds of that run")
    add_paced_arguments(p, "also offer each server this share of the anchor's req/s")
    p.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="before each run, wait until other processes use fewer cores than this",
    )
    p.add_argument("--quiet-timeout", type=float, default=300.0, help="longest such wait, s")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="runs again a run during which other processes used more than --quiet-cores",
    )
    p.add_argument("--product-port", type=int, default=18701)
    p.add_argument("--anchor-port", type=int, default=18702)
    p.add_argument("--deep-pages", type=int, default=200, help="cursor walk of scenario (e)")
    p.add_argument("--sample-ids", type=int, default=10000, help="ids for GET /tickets/{id}")
    p.add_argument("--only", default="", help="comma list of scenario keys to run")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="logs, SQL, results")
    args = p.parse_args(argv)
    if args.tickets < 1000:
        p.error("--tickets must be at least 1000")
    if args.duration < 1 or args.warmup < 0 or args.light_duration < 1 or args.repeat < 1:
        p.error("--duration, --light-duration and --repeat must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        return _main(args, servers)
    except BenchError as exc:
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for server in servers:
            server.stop()
        if servers:
            log("servers stopped")


def _main(args: argparse.Namespace, servers: list[Server]) -> int:
    if shutil.which(args.wrk) is None:
        raise BenchError(f"{args.wrk} not found: apt-get install -y wrk (or --wrk PATH)")
    from gateway.migrations import upgrade

    spec = SeedSpec(args.tickets, args.customers, args.agents, args.seed)
    t0 = time.perf_counter()
    must_seed = prepare_database(args.database_url, spec, args.reuse)
    upgrade(args.database_url)
    facts_seed: dict[str, Any] = {}
    if must_seed:
        log(f"seeding {spec.tickets:,} tickets with COPY")
        facts_seed = seed(args.database_url, spec)
        mark_seeded(args.database_url, spec)
        log(f"seeded in {time.perf_counter() - t0:.0f} s")
    if args.seed_only:
        return 0
    revision = product_revision()
    if revision["uncommitted_product_files"]:
        log(
            f"note: measuring {revision['commit']} plus uncommitted changes to "
            f"{len(revision['uncommitted_product_files'])} files under gateway/ and web/"
        )
    token = admin_token(args.database_url)
    facts = dataset_facts(args.database_url, args.seed, args.sample_ids)
    log(
        f"{facts['tickets']:,} tickets, {facts['ticket_tags']:,} tags "
        f"({facts['tagged_x']:,} x), {facts['ticket_metadata']:,} metadata rows, "
        f"{facts['database_size']}"
    )
    scenarios = scenarios_for(facts["agent_id"])
    if args.only:
        keep = {k.strip() for k in args.only.split(",")}
        unknown = keep - {s.key for s in scenarios}
        if unknown:
            raise BenchError(f"unknown scenarios {sorted(unknown)}")
        scenarios = [s for s in scenarios if s.key in keep or s.key == "by_id"]
    captured = capture_product_sql(
        args.database_url, token, scenarios, facts["ids"], args.deep_pages
    )
    if args.only:  # by_id is always captured (the anchor needs it) but only run when asked
        scenarios = [s for s in scenarios if s.key in keep]
    sql_path = args.out / "anchor_sql.json"
    sql_path.write_text(json.dumps(captured, indent=1))
    log(f"product SQL captured in {sql_path}")

    product = product_server(args, args.out)
    anchor = anchor_server(args, args.out, sql_path)
    for server in (product, anchor):
        servers.append(server)
        server.start()
    compared = check_same_answers(product, anchor, scenarios, token)

    runs: dict[tuple[str, str], Run] = {}
    light: dict[tuple[str, str], Run] = {}
    passes = [(runs, args.connections, args.duration, args.repeat)]
    if args.light_connections > 0:
        passes.append((light, args.light_connections, args.light_duration, 1))
    paced: dict[tuple[str, str], Run] = {}
    for s in scenarios:
        lua = args.out / f"wrk_{s.key}.lua"
        write_lua(lua, token, s.paths)
        if args.warmup > 0:
            for server in (product, anchor):
                run_wrk(args, server, s, lua, args.warmup, args.connections, measure=False)
        for into, connections, seconds, repeat in passes:
            for name, run in measured_runs(
                args, [product, anchor], s, lua, seconds, connections, repeat
            ).items():
                into[(s.key, name)] = run
        if args.paced_share > 0:
            # Both servers get the same offered load: a share of what the anchor served.
            rate = args.paced_share * runs[(s.key, "anchor")].rps
            for name, run in paced_runs(args, [product, anchor], s, token, rate).items():
                paced[(s.key, name)] = run

    checks = evaluate(scenarios, runs, paced)
    table = render(scenarios, runs, light, checks, paced, args.paced_share)
    dirty = " + uncommitted changes" if revision["uncommitted_product_files"] else ""
    print(
        f"\nSupportgate API benchmark of {revision['commit']}{dirty}: "
        f"{facts['tickets']:,} tickets, workers={args.workers} "
        f"threads={args.threads} (gthread), wrk -t{args.wrk_threads} -c{args.connections} "
        f"-d{args.duration:g}s x {args.repeat} after {args.warmup:g} s warm-up\n"
    )
    print(table)
    result = {
        "at": datetime.now(UTC).isoformat(),
        "product": revision,
        "args": {k: str(v) for k, v in vars(args).items()},
        "dataset": {k: v for k, v in facts.items() if k != "ids"} | {"seed_counts": facts_seed},
        "scenarios": {s.key: {"label": s.label, "path": s.path} for s in scenarios},
        "runs": [asdict(r) for r in runs.values()],
        "light_runs": [asdict(r) for r in light.values()],
        "paced_runs": [asdict(r) for r in paced.values()],
        "checks": [{"target": n, "pass": ok, "measured": got} for n, ok, got in checks],
        "anchor_answers_compared": compared,
        "token_sha256_prefix": hashlib.sha256(token.encode()).hexdigest()[:12],
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "results.md").write_text(table)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
