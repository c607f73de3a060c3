"""Authorisation matrix, generated from Flask's URL map.

Every route x method of ``app.url_map`` (less HEAD, OPTIONS and ``static``) is
called by every principal, each acting on objects that belong to someone else:

    anonymous    no Authorization header
    bad_token    a well-formed but unknown bearer token
    customer_a   Alice, on Bob's ticket / Bob's user
    customer_b   Bob, on Alice's ticket / Alice's user
    agent        on Bob's ticket / Bob's user
    admin        on Bob's ticket / Bob's user
    owner        Alice on her *own* ticket / her own user (what a customer may
                 do to what is hers)

The expected status of each call is in EXPECTED, one explicit entry per
(rule, method); a route without an entry fails the suite, so a new route
cannot ship without an authorisation decision. Request bodies are valid, so
a status reflects authorisation, never validation. A refused call must leave
the database exactly as it was.
"""

from __future__ import annotations

import atexit
import io
import re
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text

from gateway.config import Settings
from gateway.events import OutboxTask
from gateway.users.services import get_user, issue_token
from web.app import create_app

PRINCIPALS = ("anonymous", "bad_token", "customer_a", "customer_b", "agent", "admin", "owner")
PUBLIC_RULES = {"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"}
# Routes authenticated by a request signature, not a bearer token (no Bearer challenge).
SIGNED_RULES = {"/slack/events"}
SKIPPED_METHODS = {"HEAD", "OPTIONS"}

# --- expectation helpers ------------------------------------------------------


def public(ok: int = 200) -> dict[str, int]:
    """No authentication at all: a bad token is ignored, not refused."""
    return dict.fromkeys(PRINCIPALS, ok)


def authenticated(ok: int) -> dict[str, int]:
    """Any authenticated user."""
    return {"anonymous": 401, "bad_token": 401, **dict.fromkeys(PRINCIPALS[2:], ok)}


def staff_only(ok: int) -> dict[str, int]:
    return {**authenticated(403), "agent": ok, "admin": ok}


def admin_only(ok: int) -> dict[str, int]:
    return {**authenticated(403), "admin": ok}


def slack_signed() -> dict[str, int]:
    """Only a Slack signature authenticates: every principal here is refused."""
    return dict.fromkeys(PRINCIPALS, 401)


def others_ticket(staff: int, *, owner: int, agent: int | None = None) -> dict[str, int]:
    """A ticket route: customers on someone else's ticket get 404, exactly as
    for a missing ticket (never 403); ``owner`` is the customer on their own."""
    return {
        "anonymous": 401,
        "bad_token": 401,
        "customer_a": 404,
        "customer_b": 404,
        "agent": staff if agent is None else agent,
        "admin": staff,
        "owner": owner,
    }


@dataclass(frozen=True)
class Expect:
    statuses: Mapping[str, int]
    query: str = ""
    # State of the target ticket before the call: "open", "deleted" or "archived".
    state: str = "open"

    def __post_init__(self) -> None:
        assert set(self.statuses) == set(PRINCIPALS), self.statuses


TICKET = "/api/v1/tickets/<ref>"
USER = "/api/v1/users/<user_id>"
ATTACHMENT = "/api/v1/attachments/<attachment_id>"

# (rule, method) -> one Expect per variant of the call (query string, state).
EXPECTED: dict[tuple[str, str], tuple[Expect, ...]] = {
    # operations and self-description: public
    ("/healthz", "GET"): (Expect(public()),),
    ("/readyz", "GET"): (Expect(public()),),
    ("/metrics", "GET"): (Expect(public()),),
    ("/api/v1/openapi.json", "GET"): (Expect(public()),),
    ("/api/v1/meta/statuses", "GET"): (Expect(authenticated(200)),),
    ("/api/v1/meta/priorities", "GET"): (Expect(authenticated(200)),),
    # tickets
    ("/api/v1/tickets", "POST"): (Expect(authenticated(201)),),
    ("/api/v1/tickets", "GET"): (
        Expect(authenticated(200)),
        Expect(authenticated(200), query="include_archived=true"),
        Expect(admin_only(200), query="include_deleted=true"),
    ),
    (TICKET, "GET"): (Expect(others_ticket(200, owner=200)),),
    (TICKET, "PATCH"): (Expect(others_ticket(200, owner=200)),),
    (TICKET, "DELETE"): (
        Expect(others_ticket(204, owner=403)),
        # purge: admin only; the policy wants a soft delete first, so the ticket
        # is soft-deleted already (and so invisible to its own customer too).
        Expect(others_ticket(204, agent=403, owner=404), query="purge=true", state="deleted"),
    ),
    (TICKET + "/restore", "POST"): (
        Expect(others_ticket(200, owner=404), state="deleted"),
        Expect(others_ticket(200, owner=403)),
    ),
    (TICKET + "/archive", "POST"): (Expect(others_ticket(200, owner=403)),),
    (TICKET + "/unarchive", "POST"): (Expect(others_ticket(200, owner=403), state="archived"),),
    (TICKET + "/history", "GET"): (Expect(others_ticket(200, owner=403)),),
    (TICKET + "/messages", "GET"): (Expect(others_ticket(200, owner=200)),),
    (TICKET + "/messages", "POST"): (Expect(others_ticket(201, owner=201)),),
    ("/api/v1/messages/<message_id>/raw", "GET"): (Expect(admin_only(200)),),
    # attachments: customers upload to and read their own tickets; staff remove
    (TICKET + "/attachments", "GET"): (Expect(others_ticket(200, owner=200)),),
    (TICKET + "/attachments", "POST"): (Expect(others_ticket(201, owner=201)),),
    (ATTACHMENT, "GET"): (Expect(others_ticket(200, owner=200)),),
    (ATTACHMENT + "/preview", "GET"): (Expect(others_ticket(200, owner=200)),),
    (ATTACHMENT, "DELETE"): (Expect(others_ticket(204, owner=403)),),
    # metadata and tags: customers may read their own ticket's metadata, not change it
    (TICKET + "/metadata", "GET"): (Expect(others_ticket(200, owner=200)),),
    (TICKET + "/metadata/<key>", "PUT"): (Expect(others_ticket(200, owner=403)),),
    (TICKET + "/metadata/<key>", "DELETE"): (Expect(others_ticket(204, owner=403)),),
    (TICKET + "/tags/<tag>", "PUT"): (Expect(others_ticket(200, owner=403)),),
    (TICKET + "/tags/<tag>", "DELETE"): (Expect(others_ticket(200, owner=403)),),
    ("/api/v1/tags", "GET"): (Expect(staff_only(200)),),
    # custom field definitions: staff read them, admins change them
    ("/api/v1/custom-fields", "GET"): (Expect(staff_only(200)),),
    ("/api/v1/custom-fields", "POST"): (Expect(admin_only(201)),),
    ("/api/v1/custom-fields/<key>", "PATCH"): (Expect(admin_only(200)),),
    ("/api/v1/custom-fields/<key>", "DELETE"): (Expect(admin_only(204)),),
    # users, tokens, policies: admin only
    ("/api/v1/me", "GET"): (Expect(authenticated(200)),),
    ("/api/v1/users", "GET"): (Expect(admin_only(200)),),
    ("/api/v1/users", "POST"): (Expect(admin_only(201)),),
    (USER, "GET"): (Expect(admin_only(200)),),
    (USER, "PATCH"): (Expect(admin_only(200)),),
    (USER + "/erase", "POST"): (Expect(admin_only(200)),),
    (USER + "/tokens", "GET"): (Expect(admin_only(200)),),
    (USER + "/tokens", "POST"): (Expect(admin_only(201)),),
    (USER + "/tokens/<token_id>", "DELETE"): (Expect(admin_only(204)),),
    ("/api/v1/policies/deletion", "GET"): (Expect(admin_only(200)),),
    ("/api/v1/policies/deletion", "PUT"): (Expect(admin_only(200)),),
    # live events: the API redirects every authenticated caller to the events
    # server, where each sees only what it may (tests/integration/test_events.py)
    ("/api/v1/events", "GET"): (Expect(authenticated(307)),),
    # Slack's endpoint authenticates by Slack's request signature alone: a bearer
    # token is none (tests/integration/slack/test_events_endpoint.py signs them)
    ("/slack/events", "POST"): (Expect(slack_signed()),),
    # the dead-letter list: admin only
    ("/api/v1/admin/failed-tasks", "GET"): (Expect(admin_only(200)),),
    ("/api/v1/admin/failed-tasks/<task_id>/retry", "POST"): (Expect(admin_only(200)),),
}


# Valid bodies, per (rule, method), by whether the caller is a customer.
def _ticket_create(customer: bool, victim_email: str) -> dict[str, Any]:
    body: dict[str, Any] = {"title": "Matrix", "description": "made by the matrix"}
    if not customer:
        body["customer_email"] = victim_email
    return body


@dataclass(frozen=True)
class Multipart:
    """A multipart/form-data body (file uploads)."""

    files: dict[str, tuple[bytes, str]]

    def encode(self) -> dict[str, Any]:
        from werkzeug.datastructures import FileStorage, MultiDict
        from werkzeug.test import encode_multipart

        form = MultiDict(
            [(k, FileStorage(io.BytesIO(v), name)) for k, (v, name) in self.files.items()]
        )
        boundary, data = encode_multipart(form)
        return {"data": data, "content_type": f"multipart/form-data; boundary={boundary}"}


# Valid multipart bodies, per (rule, method).
UPLOADS: dict[tuple[str, str], Multipart] = {
    (TICKET + "/attachments", "POST"): Multipart({"file": (b"matrix file\n", "matrix.txt")}),
}

BODIES: dict[tuple[str, str], Callable[[bool, str], dict[str, Any]]] = {
    ("/api/v1/tickets", "POST"): _ticket_create,
    (TICKET, "PATCH"): lambda customer, _: (
        {"status": "solved"} if customer else {"priority": "high", "status": "open"}
    ),
    (TICKET + "/messages", "POST"): lambda _c, _e: {"body": "hello from the matrix"},
    ("/api/v1/users", "POST"): lambda _c, _e: {
        "email": f"new-{uuid.uuid4().hex[:8]}@example.com",
        "role": "agent",
    },
    (USER, "PATCH"): lambda _c, _e: {"name": "Renamed"},
    (TICKET + "/metadata/<key>", "PUT"): lambda _c, _e: {"value": "changed"},
    ("/api/v1/custom-fields", "POST"): lambda _c, _e: {
        "key": "plan",
        "label": "Plan",
        "type": "text",
    },
    ("/api/v1/custom-fields/<key>", "PATCH"): lambda _c, _e: {"label": "Renamed"},
    ("/api/v1/policies/deletion", "PUT"): lambda _c, _e: {
        "purge_deleted_after_days": 30,
        "archive_closed_after_days": 90,
        "require_soft_delete_before_purge": True,
    },
}


# --- the URL map, at collection time -------------------------------------------


def _routes(app: Flask) -> list[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        # The console's HTML pages authenticate by session cookie, not bearer token;
        # its own table of who sees what is tests/api/test_console.py.
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue
        for method in (rule.methods or set()) - SKIPPED_METHODS:
            out.add((rule.rule, method))
    return sorted(out)


_SCRATCH = tempfile.TemporaryDirectory(prefix="sg-collect-")
atexit.register(_SCRATCH.cleanup)


def _collection_app() -> Flask:
    # Only asked for its URL map / OpenAPI document: the database is never opened.
    settings = Settings(
        database_url=f"sqlite:///{_SCRATCH.name}/unused.db",
        data_dir=_SCRATCH.name,
        _env_file=None,  # type: ignore[call-arg]
    )
    return create_app(settings)


_MISSING = Expect(dict.fromkeys(PRINCIPALS, -1), query="<no entry in EXPECTED>")


def _cases() -> list[Any]:
    cases = []
    for rule, method in _routes(_collection_app()):
        for expect in EXPECTED.get((rule, method), (_MISSING,)):
            for principal in PRINCIPALS:
                label = f"{method} {rule}{'?' + expect.query if expect.query else ''}"
                if expect.state != "open":
                    label += f" [{expect.state}]"
                cases.append(
                    pytest.param(rule, method, expect, principal, id=f"{label} as {principal}")
                )
    return cases


# --- the world every case acts in ------------------------------------------------


@dataclass
class World:
    callers: dict[str, Any]
    tickets: dict[str, dict[str, Any]]  # owner name -> ticket
    objects: dict[str, dict[str, str]]  # owner name -> path parameter -> value


def _raw_email(db, ticket_id: str, message_id: str, sender: str) -> None:
    """Record ``message_id`` as having come by mail, as inbound ingestion does."""
    import hashlib

    from gateway.inbound.models import InboundMail

    raw = f"From: {sender}\r\nSubject: matrix\r\n\r\nHello\r\n".encode()
    with db.transaction() as session:
        session.add(
            InboundMail(
                source="smtp",
                envelope_from=sender,
                recipients=["support@example.com"],
                raw=raw,
                size=len(raw),
                sha256=hashlib.sha256(raw).hexdigest(),
                state="processed",
                ticket_id=uuid.UUID(ticket_id),
                message_id=uuid.UUID(message_id),
            )
        )


@pytest.fixture
def world(admin, agent, customer_a, customer_b, make_ticket, db) -> World:
    """Alice's and Bob's objects: a ticket (with a metadata key, a tag and a
    message that came by mail), the user, a spare token; and a custom field."""
    field = {"key": "tier", "label": "Tier", "type": "enum", "options": ["gold", "silver"]}
    assert admin.post("/api/v1/custom-fields", json=field).status_code == 201
    tickets, objects = {}, {}
    for name, caller in (("customer_a", customer_a), ("customer_b", customer_b)):
        ticket = make_ticket(
            customer_email=caller.email,
            title=f"{name}'s",
            metadata={"source": "matrix"},
            tags=["matrix"],
        )
        message = caller.post(f"/api/v1/tickets/{ticket['id']}/messages", json={"body": "Hi"})
        assert message.status_code == 201
        message_id = message.get_json()["id"]
        _raw_email(db, ticket["id"], message_id, caller.email)
        with db.transaction() as session:
            token, _ = issue_token(session, get_user(session, caller.id))
            token_id = str(token.id)
            dead = OutboxTask(
                kind="email.send",
                idempotency_key=f"matrix:{name}",
                payload={"outbound_id": str(uuid.uuid4())},
                state="dead",
                attempts=8,
                last_error="relay refused",
            )
            session.add(dead)
            session.flush()
            task_id = str(dead.id)
        attachment = caller.client.post(
            f"/api/v1/tickets/{ticket['id']}/attachments",
            headers={"Authorization": f"Bearer {caller.token}"},
            **Multipart({"file": (b"hello\n", "hello.txt")}).encode(),
        )
        assert attachment.status_code == 201, attachment.get_json()
        tickets[name] = admin.get(f"/api/v1/tickets/{ticket['id']}").get_json()
        objects[name] = {
            "attachment_id": attachment.get_json()["id"],
            "ref": ticket["id"],
            "user_id": caller.id,
            "token_id": token_id,
            "task_id": task_id,
            "message_id": message_id,
            "tag": "matrix",
            "key": "source",  # metadata key; custom-field rules get "tier"
            "field_key": "tier",
        }
    callers = {
        "customer_a": customer_a,
        "customer_b": customer_b,
        "agent": agent,
        "admin": admin,
        "owner": customer_a,
    }
    return World(callers, tickets, objects)


def victim_of(principal: str) -> str:
    """Whose objects the principal acts on."""
    if principal == "owner":
        return "customer_a"
    return "customer_a" if principal == "customer_b" else "customer_b"


def token_of(principal: str, world: World) -> str | None:
    if principal == "anonymous":
        return None
    if principal == "bad_token":
        return "sg_" + uuid.uuid4().hex + uuid.uuid4().hex[:11]
    return world.callers[principal].token


def fill(rule: str, params: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        try:
            return params[match.group(1)]
        except KeyError:
            raise AssertionError(f"{rule}: no object for <{match.group(1)}> in the world") from None

    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", value, rule)


def call(client, method: str, path: str, token: str | None, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, Multipart):
        kwargs = body.encode()
    else:
        kwargs = {} if body is None else {"json": body}
    return client.open(path, method=method, headers=headers, **kwargs)


def fingerprint(db) -> dict[str, Any]:
    """Everything an authorisation bug could change, read straight from the DB."""
    queries = {
        "tickets": "SELECT id, version, title, status, priority, assignee_id, deleted_at, "
        "archived_at, message_count, note_count, custom_fields FROM tickets ORDER BY id",
        "tags": "SELECT ticket_id, tag FROM ticket_tags ORDER BY 1, 2",
        "metadata": "SELECT ticket_id, key, value FROM ticket_metadata ORDER BY 1, 2",
        "messages": "SELECT id, ticket_id, kind FROM messages ORDER BY id",
        "attachments": "SELECT id, ticket_id, sha256 FROM attachments ORDER BY id",
        "users": "SELECT id, email, role, name, active, slack_user_id FROM users ORDER BY id",
        "tokens": "SELECT id, user_id, revoked_at FROM api_tokens ORDER BY id",
        "custom_fields": "SELECT key, label, type, options::text, required, deleted_at "
        "FROM custom_field_definitions ORDER BY key",
        "policy": "SELECT purge_deleted_after_days, archive_closed_after_days, "
        "require_soft_delete_before_purge, updated_at FROM deletion_policy",
    }
    with db.engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(text(sql))] for name, sql in queries.items()}


def problem_of(response) -> dict[str, Any]:
    assert response.mimetype == "application/problem+json", response.data[:300]
    return response.get_json()


# --- the matrix ----------------------------------------------------------------


@pytest.mark.parametrize(("rule", "method", "expect", "principal"), _cases())
def test_authorization_matrix(client, admin, db, world, rule, method, expect, principal):
    assert expect is not _MISSING, (
        f"{method} {rule} has no entry in EXPECTED: decide who may call it and add one"
    )
    victim = victim_of(principal)
    ticket = world.tickets[victim]
    if expect.state == "deleted":
        assert admin.delete(f"/api/v1/tickets/{ticket['id']}").status_code == 204
    elif expect.state == "archived":
        assert admin.post(f"/api/v1/tickets/{ticket['id']}/archive").status_code == 200
    params = dict(world.objects[victim])
    if rule.startswith("/api/v1/custom-fields/"):
        params["key"] = params["field_key"]
    path = fill(rule, params) + (f"?{expect.query}" if expect.query else "")
    is_customer = principal in ("customer_a", "customer_b", "owner")
    make_body = BODIES.get((rule, method))
    body = make_body(is_customer, world.callers[victim].email) if make_body else None
    body = UPLOADS.get((rule, method), body)

    before = fingerprint(db)
    response = call(client, method, path, token_of(principal, world), body)
    wanted = expect.statuses[principal]

    assert response.status_code == wanted, (
        f"{principal} {method} {path}: expected {wanted}, got {response.status_code}: "
        f"{response.data[:500]!r}"
    )
    assert response.status_code < 500
    if response.status_code >= 400:
        problem = problem_of(response)
        slug = {401: "unauthorized", 403: "forbidden", 404: "not-found"}[response.status_code]
        assert problem["type"].endswith(f"/problems/{slug}"), problem
        assert problem["status"] == response.status_code
        assert fingerprint(db) == before, f"a refused {method} {path} changed the database"
        if response.status_code == 401 and rule not in SIGNED_RULES:
            assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")
        if response.status_code == 404 and "<ref>" in rule:
            # Indistinguishable from a ticket that does not exist.
            missing = call(
                client,
                method,
                fill(rule, {**params, "ref": str(uuid.uuid4())})
                + (f"?{expect.query}" if expect.query else ""),
                token_of(principal, world),
                body,
            )
            assert missing.status_code == 404
            other = problem_of(missing)
            for key in ("type", "title", "status", "detail", "errors"):
                assert problem[key] == other[key], (key, problem, other)
            assert set(problem) == set(other)


def test_every_route_has_an_authorization_entry(app):
    routes = _routes(app)
    missing = [r for r in routes if r not in EXPECTED]
    assert not missing, f"routes without an entry in EXPECTED: {missing}"
    stale = [r for r in EXPECTED if r not in routes]
    assert not stale, f"EXPECTED names routes that no longer exist: {stale}"


def test_every_route_with_a_body_has_a_valid_body(app):
    from web.spec import iter_specs

    need = {(rule, method) for rule, method, spec in iter_specs(app) if spec.body is not None}
    assert need == set(BODIES), need ^ set(BODIES)


def test_public_routes_are_exactly_the_documented_ones(app):
    from web.spec import iter_specs

    public_rules = {rule for rule, _, spec in iter_specs(app) if spec.public}
    assert public_rules == PUBLIC_RULES
    for (rule, _), expects in EXPECTED.items():
        for expect in expects:
            anonymous_ok = expect.statuses["anonymous"] != 401
            assert anonymous_ok == (rule in PUBLIC_RULES), rule


def test_every_non_public_route_refuses_anonymous_and_bad_tokens_as_problem(
    app, client, admin, make_caller
):
    """A second, table-free sweep: anything not public is 401 before anything else
    (even for a path whose object does not exist and a body that is invalid), for
    no token, unknown tokens, a revoked token and the token of a deactivated user."""
    revoked = make_caller("agent", "revoked@example.com")
    tokens = admin.get(f"/api/v1/users/{revoked.id}/tokens").get_json()["items"]
    assert len(tokens) == 1
    gone = admin.delete(f"/api/v1/users/{revoked.id}/tokens/{tokens[0]['id']}")
    assert gone.status_code == 204
    inactive = make_caller("admin", "inactive@example.com")
    assert admin.patch(f"/api/v1/users/{inactive.id}", json={"active": False}).status_code == 200
    bad_tokens = (
        None,
        "sg_not-a-real-token",
        "not-even-our-prefix",
        revoked.token,
        inactive.token,
    )
    junk = defaultdict(lambda: str(uuid.uuid4()), ref="999999", key="nope", tag="nope")
    for rule, method in _routes(app):
        if rule in PUBLIC_RULES:
            continue
        for token in bad_tokens:
            response = call(client, method, fill(rule, junk), token, {"nonsense": True})
            assert response.status_code == 401, (method, rule, token, response.data[:300])
            assert problem_of(response)["type"].endswith("/problems/unauthorized")


# --- what customers may see ------------------------------------------------------


def _ids(items: list[dict[str, Any]]) -> set[str]:
    return {item["id"] for item in items}


def _walk(caller, path: str) -> list[dict[str, Any]]:
    items, url = [], path
    for _ in range(50):
        response = caller.get(url)
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        items += page["items"]
        if not page["next_cursor"]:
            return items
        sep = "&" if "?" in path else "?"
        url = f"{path}{sep}cursor={page['next_cursor']}"
    raise AssertionError("pagination did not end")


def test_customers_never_list_other_customers_tickets(
    admin, agent, customer_a, customer_b, make_ticket
):
    mine = [make_ticket(customer_email=customer_a.email, title=f"Alice {i}") for i in range(3)]
    theirs = [
        make_ticket(customer_email=customer_b.email, title=f"Bob {i}", tags=["shared"])
        for i in range(3)
    ]
    # Archived one of Bob's, so include_archived is exercised too.
    assert admin.post(f"/api/v1/tickets/{theirs[0]['id']}/archive").status_code == 200
    # A ticket Bob opened himself.
    own = customer_b.post("/api/v1/tickets", json={"title": "Bob's own"})
    assert own.status_code == 201
    theirs.append(own.get_json())
    agent_view = _ids(_walk(agent, "/api/v1/tickets?include_archived=true"))
    assert agent_view == _ids(mine) | _ids(theirs)

    for caller, own_tickets, others in (
        (customer_a, mine, theirs),
        (customer_b, theirs, mine),
    ):
        for query in (
            "",
            "include_archived=true",
            "limit=1",
            "limit=1&include_archived=true",
            "q=printer",
            "q=Bob",
            "q=Alice",
            "tag=shared",
            f"customer={customer_a.email}",
            f"customer={customer_b.email}",
            "sort=number",
            "status=new,open",
        ):
            seen = _walk(caller, "/api/v1/tickets" + (f"?{query}" if query else ""))
            assert not _ids(seen) & _ids(others), (caller.email, query)
            assert {t["customer"]["id"] for t in seen} <= {caller.id}, (caller.email, query)
        everything = _walk(caller, "/api/v1/tickets?include_archived=true")
        assert _ids(everything) == _ids(own_tickets)
        # Guessing ids and numbers of the other customer's tickets gets nothing either.
        for other in others:
            for ref in (other["id"], str(other["number"])):
                assert caller.get(f"/api/v1/tickets/{ref}").status_code == 404
        assert caller.get("/api/v1/tickets?include_deleted=true").status_code == 403


def test_customers_never_see_internal_notes(agent, customer_a, make_ticket):
    ticket = make_ticket(customer_email=customer_a.email, title="Where is my parcel")
    tid = ticket["id"]
    note = agent.post(f"/api/v1/tickets/{tid}/messages", json={"body": "secret", "internal": True})
    assert note.status_code == 201
    assert note.get_json()["kind"] == "note"
    reply = agent.post(f"/api/v1/tickets/{tid}/messages", json={"body": "On its way."})
    assert reply.status_code == 201

    # The agent sees both; the customer only the public reply.
    staff_view = agent.get(f"/api/v1/tickets/{tid}/messages").get_json()["items"]
    assert [m["kind"] for m in staff_view] == ["note", "reply"]
    response = customer_a.get(f"/api/v1/tickets/{tid}/messages")
    assert response.status_code == 200
    assert [m["kind"] for m in response.get_json()["items"]] == ["reply"]
    assert b"secret" not in response.data
    # ... also one page at a time.
    page = customer_a.get(f"/api/v1/tickets/{tid}/messages?limit=1").get_json()
    assert [m["kind"] for m in page["items"]] == ["reply"]
    assert page["next_cursor"] is None

    # The note is not counted, not searchable, not answerable for the customer.
    assert customer_a.get(f"/api/v1/tickets/{tid}").get_json()["message_count"] == 1
    assert agent.get(f"/api/v1/tickets/{tid}").get_json()["message_count"] == 2
    found = customer_a.get("/api/v1/tickets?q=secret").get_json()["items"]
    assert found == []
    assert _ids(agent.get("/api/v1/tickets?q=secret").get_json()["items"]) == {tid}
    answer = customer_a.post(
        f"/api/v1/tickets/{tid}/messages",
        json={"body": "what secret?", "in_reply_to": note.get_json()["id"]},
    )
    assert answer.status_code == 422
    # ... with the very answer a message id that does not exist gets.
    unknown = customer_a.post(
        f"/api/v1/tickets/{tid}/messages",
        json={"body": "what secret?", "in_reply_to": str(uuid.uuid4())},
    )
    assert answer.get_json()["errors"] == unknown.get_json()["errors"]
    # Customers cannot write notes, and cannot read the audit trail.
    sneaky = customer_a.post(
        f"/api/v1/tickets/{tid}/messages", json={"body": "x", "internal": True}
    )
    assert sneaky.status_code == 422
    assert customer_a.get(f"/api/v1/tickets/{tid}/history").status_code == 403
