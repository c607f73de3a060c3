from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from gateway.metadata.models import CustomFieldDefinition
from gateway.permissions import Principal
from gateway.tickets.schemas import TicketCreate
from gateway.tickets.services import create_ticket
from gateway.users.services import find_user_by_email


def ids(caller, query=""):
    r = caller.get(f"/api/v1/tickets?{query}")
    assert r.status_code == 200, r.get_json()
    return [t["id"] for t in r.get_json()["items"]]


def walk(caller, query, limit, between_pages=None):
    seen, cursor, pages = [], None, 0
    while True:
        q = f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        r = caller.get(f"/api/v1/tickets?{q}")
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        seen += [t["id"] for t in body["items"]]
        cursor = body["next_cursor"]
        pages += 1
        if between_pages:
            between_pages(pages)
        if not cursor:
            return seen


def bulk(db, admin, n, **fields):
    with db.transaction() as s:
        principal = Principal.of(find_user_by_email(s, admin.email))
        made = [
            create_ticket(s, principal, TicketCreate(title=f"bulk {i}", **fields)) for i in range(n)
        ]
        return [str(t.id) for t in made]


def test_pagination_returns_each_ticket_once_under_concurrent_inserts(admin, db):
    original = set(bulk(db, admin, 1000))
    inserted = []

    def insert(page):
        inserted.extend(bulk(db, admin, 3))

    for sort in ("-updated_at", "created_at", "-number", "priority", "-status"):
        seen = walk(admin, f"sort={sort}", 37, insert)
        assert len(seen) == len(set(seen)), f"duplicates with sort={sort}"
        assert original <= set(seen), f"missing tickets with sort={sort}"


def test_filters(admin, agent, customer_a, make_ticket):
    a = make_ticket(
        priority="high",
        tags=["x", "y"],
        metadata={"plan": "gold"},
        customer_email=customer_a.email,
        assignee_id=agent.id,
    )
    b = make_ticket(priority="low", tags=["x"], metadata={"plan": "free"})
    c = make_ticket(title="Router reboots", description="weird lights")
    admin.patch(f"/api/v1/tickets/{a['id']}", json={"status": "open"})
    admin.patch(f"/api/v1/tickets/{b['id']}", json={"status": "pending"})
    assert set(ids(admin, "status=open,pending")) == {a["id"], b["id"]}
    assert ids(admin, "status=open&priority=high") == [a["id"]]
    assert set(ids(admin, "priority=high,low")) == {a["id"], b["id"]}
    assert ids(admin, f"assignee={agent.id}") == [a["id"]]
    assert ids(agent, "assignee=me") == [a["id"]]
    assert set(ids(admin, "assignee=none")) == {b["id"], c["id"]}
    assert ids(admin, f"customer={customer_a.email.upper()}") == [a["id"]]
    assert set(ids(admin, "tag=x")) == {a["id"], b["id"]}
    assert ids(admin, "tag=x&tag=Y") == [a["id"]]
    assert ids(admin, "metadata.plan=gold") == [a["id"]]
    assert ids(admin, "metadata.plan=gold&tag=x&status=open") == [a["id"]]
    assert ids(admin, "metadata.plan=none") == []
    assert ids(admin, "q=router") == [c["id"]]
    assert ids(admin, "q=LIGHTS") == [c["id"]]
    assert ids(admin, "q=100%25") == []
    admin.post(f"/api/v1/tickets/{b['id']}/messages", json={"body": "found the flux capacitor"})
    admin.post(
        f"/api/v1/tickets/{a['id']}/messages", json={"body": "secret capacitor", "internal": True}
    )
    assert set(ids(admin, "q=capacitor")) == {a["id"], b["id"]}
    # A customer's search never matches words of internal notes.
    assert ids(customer_a, "q=capacitor") == []


def test_date_filters(admin, make_ticket):
    t = make_ticket()
    created = datetime.fromisoformat(t["created_at"])
    before = (created - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    after = (created + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    assert ids(admin, f"created_after={before}") == [t["id"]]
    assert ids(admin, f"created_after={after}") == []
    assert ids(admin, f"created_before={after}") == [t["id"]]
    assert ids(admin, f"updated_after={before}") == [t["id"]]
    assert admin.get("/api/v1/tickets?created_after=yesterday").status_code == 422


def test_custom_field_filter(admin, db, make_ticket):
    with db.transaction() as s:
        s.add(
            CustomFieldDefinition(
                key="plan", label="Plan", type="enum", options=["gold", "free"], required=False
            )
        )
        s.add(CustomFieldDefinition(key="seats", label="Seats", type="number", required=False))
    gold = make_ticket(custom_fields={"plan": "gold", "seats": 5})
    make_ticket(custom_fields={"plan": "free"})
    assert ids(admin, "cf.plan=gold") == [gold["id"]]
    r = admin.post("/api/v1/tickets", json={"title": "x", "custom_fields": {"plan": "silver"}})
    assert r.status_code == 422
    assert r.get_json()["errors"][0]["field"] == "custom_fields.plan"
    r = admin.patch(f"/api/v1/tickets/{gold['id']}", json={"custom_fields": {"seats": "many"}})
    assert r.status_code == 422
    r = admin.patch(f"/api/v1/tickets/{gold['id']}", json={"custom_fields": {"seats": None}})
    assert r.get_json()["custom_fields"] == {"plan": "gold"}


def test_sort_by_priority_is_by_severity(admin, make_ticket):
    made = {p: make_ticket(priority=p)["id"] for p in ("urgent", "low", "high", "normal")}
    assert ids(admin, "sort=priority") == [made[p] for p in ("low", "normal", "high", "urgent")]
    assert ids(admin, "sort=-priority") == [made[p] for p in ("urgent", "high", "normal", "low")]


def test_sort_by_status_follows_the_workflow(admin, make_ticket):
    made = {}
    for status in ("closed", "new", "solved", "open"):
        t = make_ticket()
        if status != "new":
            admin.patch(f"/api/v1/tickets/{t['id']}", json={"status": status})
        made[status] = t["id"]
    assert ids(admin, "sort=status") == [made[s] for s in ("new", "open", "solved", "closed")]


def test_default_sort_is_most_recently_updated_first(admin, make_ticket):
    first, second = make_ticket(), make_ticket()
    assert ids(admin) == [second["id"], first["id"]]
    admin.patch(f"/api/v1/tickets/{first['id']}", json={"priority": "high"})
    assert ids(admin) == [first["id"], second["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("status=open,done", "status"),
        ("priority=meh", "priority"),
        ("sort=title", "sort"),
        ("assignee=someone", "assignee"),
        ("cursor=bm9wZQ", "cursor"),
        ("metadata.BAD=1", "metadata.BAD"),
        ("colour=red", "colour"),
    ],
)
def test_list_validation(admin, query, field):
    r = admin.get(f"/api/v1/tickets?{query}")
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"][0]["field"] == field


def test_limit_at_bounds(admin, make_ticket):
    for _ in range(3):
        make_ticket()
    assert len(ids(admin, "limit=1")) == 1
    assert len(ids(admin, "limit=100")) == 3


def test_cursor_of_another_sort_is_refused(admin, db):
    bulk(db, admin, 3)
    cursor = admin.get("/api/v1/tickets?limit=1").get_json()["next_cursor"]
    assert cursor
    assert admin.get(f"/api/v1/tickets?limit=1&sort=number&cursor={cursor}").status_code == 422


def test_random_filter_combinations_agree_with_python(admin, agent, make_ticket):
    rng = random.Random(7)
    statuses = ["open", "pending", "solved"]
    made = []
    for i in range(30):
        t = make_ticket(
            priority=rng.choice(["low", "normal", "high", "urgent"]),
            tags=rng.sample(["a", "b", "c"], rng.randint(0, 2)),
            assignee_id=agent.id if i % 3 == 0 else None,
        )
        status = rng.choice(statuses)
        t = admin.patch(f"/api/v1/tickets/{t['id']}", json={"status": status}).get_json()
        made.append(t)
    for _ in range(15):
        status = rng.sample(statuses, rng.randint(1, 2))
        tag = rng.choice(["a", "b", "c"])
        expected = {t["id"] for t in made if t["status"] in status and tag in t["tags"]}
        got = walk(admin, f"status={','.join(status)}&tag={tag}&sort=priority", 4)
        assert set(got) == expected
        assert len(got) == len(expected)
    assert datetime.now(UTC)


def test_one_statement_per_shape_serves_every_caller_with_their_own_values(
    admin, customer_a, customer_b, make_ticket
):
    """Requests of one shape share a cached statement: the values must not leak between them."""
    from gateway.tickets import listing

    mine = make_ticket(customer_email=customer_a.email, priority="high", tags=["x"])
    theirs = make_ticket(customer_email=customer_b.email, priority="high", tags=["x", "y"])
    low = make_ticket(customer_email=customer_b.email, priority="low", tags=["y"])
    before = len(listing._STATEMENTS)
    # The same shape (a customer, one priority, one tag) for two customers and two values.
    assert ids(customer_a, "priority=high&tag=x") == [mine["id"]]
    assert ids(customer_b, "priority=high&tag=x") == [theirs["id"]]
    assert ids(customer_b, "priority=low&tag=y") == [low["id"]]
    assert ids(customer_a, "priority=low&tag=y") == []
    shapes = len(listing._STATEMENTS) - before
    assert shapes <= 1  # 0 when an earlier test in this process made that shape
    # Another number of tags or of priorities is another shape, with its own answers.
    assert ids(customer_b, "tag=x&tag=y") == [theirs["id"]]
    assert set(ids(customer_b, "priority=high,low")) == {theirs["id"], low["id"]}
    assert set(ids(admin, "priority=high,low&tag=y")) == {theirs["id"], low["id"]}


def test_statement_cache_is_bounded_and_evicts_oldest_shapes(admin, make_ticket, monkeypatch):
    """A client cannot grow the cache of statements without bound (each number of tag
    filters is a new shape); evicted shapes are simply built again."""
    from gateway.tickets import listing

    monkeypatch.setattr(listing, "_STATEMENTS", {})
    monkeypatch.setattr(listing, "_STATEMENT_CACHE_SIZE", 3)
    tagged = make_ticket(tags=["a", "b", "c", "d", "e"])
    for round_ in range(2):
        for n in range(1, 6):
            query = "&".join(f"tag={t}" for t in "abcde"[:n])
            assert ids(admin, query) == [tagged["id"]], (round_, n)
            assert len(listing._STATEMENTS) <= 3


def _prepared(session) -> list[str]:
    from sqlalchemy import text

    found = session.execute(text("SELECT statement FROM pg_prepared_statements")).scalars()
    return [statement for statement in found if "FROM tickets" in statement]  # the lists


@pytest.mark.parametrize(
    ("params", "prepared"),
    [
        ({"status": "open"}, True),
        ({"status": "open", "metadata.region": "eu"}, False),
        ({"cf.plan": "pro"}, False),
        ({"tag": "x"}, False),
    ],
)
def test_only_statements_of_value_blind_filters_are_prepared(db, admin, params, prepared):
    """psycopg prepares a statement after five executions, and PostgreSQL may then use one
    generic plan for every value. A filter whose selectivity depends on its value (two
    metadata filters: 290 ms generic against 40 ms planned) is planned each time."""
    if db.dialect != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    from gateway.tickets.listing import ExtraFilters, list_tickets_out
    from gateway.tickets.schemas import TicketListQuery

    if "cf.plan" in params:
        with db.transaction() as s:
            s.add(CustomFieldDefinition(key="plan", label="Plan", type="text"))
    query = TicketListQuery.model_validate(
        {k: ([v] if k == "tag" else v) for k, v in params.items() if "." not in k}
    )
    extra = ExtraFilters.from_params({k: v for k, v in params.items() if "." in k})
    with db.transaction() as s:
        principal = Principal.of(find_user_by_email(s, admin.email))
        before = len(_prepared(s))
        for _ in range(8):
            list_tickets_out(s, principal, query, extra)
        new = len(_prepared(s)) - before
    assert (new > 0) is prepared, (params, new)


def test_several_metadata_filters_and_a_custom_field_combined(db, admin, make_ticket):
    """Two or more ``metadata.`` filters, or one beside ``cf.``, are looked up in the
    ticket's metadata document on PostgreSQL (migration 0010): the same answers as one
    lookup per key, with the core filters and across pages."""
    with db.transaction() as s:
        s.add(CustomFieldDefinition(key="tier", label="Tier", type="text"))
    rng = random.Random(7)
    made = []
    for i in range(30):
        metadata = {"region": rng.choice(["eu", "us"]), "source": rng.choice(["mail", "web"])}
        if i % 3 == 0:
            metadata["crm.id"] = f'C-{i} "q"'
        t = make_ticket(
            metadata=metadata,
            custom_fields={"tier": rng.choice(["pro", "free"])},
            priority=rng.choice(["low", "high"]),
        )
        made.append(t)

    def expect(**want: str) -> set[str]:
        found = set()
        for t in made:
            meta = t["metadata"]
            fields = {f"metadata.{k}": v for k, v in meta.items()}
            fields |= {f"cf.{k}": v for k, v in t["custom_fields"].items()}
            fields["priority"] = t["priority"]
            if all(fields.get(k) == v for k, v in want.items()):
                found.add(t["id"])
        return found

    for want in (
        {"metadata.region": "eu", "metadata.source": "web"},
        {"metadata.region": "us", "metadata.source": "mail", "priority": "high"},
        {"metadata.region": "eu", "cf.tier": "pro"},
        {"metadata.region": "us", "metadata.source": "web", "cf.tier": "free"},
        {"metadata.crm.id": 'C-3 "q"', "metadata.region": made[3]["metadata"]["region"]},
        {"metadata.region": "eu", "metadata.source": "nowhere"},
    ):
        query = "&".join(f"{k}={quote(v)}" for k, v in want.items())
        seen = walk(admin, f"{query}&sort=created_at", limit=4)
        assert len(seen) == len(set(seen))
        assert set(seen) == expect(**want), want
    # The document follows a change of the rows.
    target = made[0]
    admin.put(f"/api/v1/tickets/{target['id']}/metadata/source", json={"value": "phone"})
    region = target["metadata"]["region"]
    assert ids(admin, f"metadata.region={region}&metadata.source=phone") == [target["id"]]
