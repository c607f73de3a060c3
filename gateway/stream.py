"""The live event stream: one dense sequence of positions, in commit order.

Every domain change writes an :class:`~gateway.events.Event` row in its own
transaction. The row's ``seq`` is *not* a usable stream id: on PostgreSQL it
comes from a sequence when the row is inserted, and transactions commit in any
order, so seq 11 can become visible before seq 10. A reader that resumed
"after 11" would never see 10.

So the stream has its own numbering, ``Event.position``, given by the relay:

    relay pass -- one at a time: a PostgreSQL transaction advisory lock
                  (RELAY_LOCK), SQLite's single writer (BEGIN IMMEDIATE)
      base  = max(position)                              -- committed positions
      rows  = events without a position, ordered by seq  -- only committed rows
              are visible (READ COMMITTED: each statement has a fresh snapshot)
      give rows base+1, base+2, ... and published_at; COMMIT (releases the lock)
      hand them to the sink (Redis / the in-process hub)

What that guarantees:

* positions are dense (1, 2, 3, …): a pass that rolls back leaves no hole,
  because the next one recomputes ``max`` under the same lock;
* positions follow commit order: an event gets one only after its
  transaction committed, and a later pass only hands out larger ones;
* once position *p* is visible in the database (or arrives from Redis),
  every position below *p* is visible too — passes commit one after the other.

Announcements may arrive out of order when two relays race (each publishes
after its commit, outside the lock); readers reorder by position.

Consequences for readers: a replay is ``position > last_id ORDER BY position``,
and a subscriber that sees *p+2* right after *p* knows *p+1* exists and can
read it from the database (a Redis message lost on a reconnect, a relay that
died between commit and publish). Positions may still be missing for good
where rows were deleted (customer erasure), so readers skip ahead after one
read. ``seq`` keeps ordering the events of one transaction within a pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, Table, bindparam, func, select, text, update

from gateway.db import Database, utcnow
from gateway.events import Event
from gateway.permissions import Principal, can_see_internal

# pg_advisory_lock key of the relay ("SGevents" as a 64-bit integer).
RELAY_LOCK = 0x5347_6576_656E_7473
EVENTS: Table = Event.__table__  # type: ignore[assignment]
COLUMNS = (
    EVENTS.c.position,
    EVENTS.c.type,
    EVENTS.c.ticket_id,
    EVENTS.c.customer_id,
    EVENTS.c.internal,
    EVENTS.c.data,
)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A published event, as readers and the wire see it."""

    position: int
    type: str
    ticket_id: str | None
    customer_id: str | None
    internal: bool
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> StreamEvent:
        return cls(
            position=int(row.position),
            type=row.type,
            ticket_id=str(row.ticket_id) if row.ticket_id else None,
            customer_id=str(row.customer_id) if row.customer_id else None,
            internal=bool(row.internal),
            data=dict(row.data),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "type": self.type,
            "ticket_id": self.ticket_id,
            "customer_id": self.customer_id,
            "internal": self.internal,
            "data": self.data,
        }

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> StreamEvent:
        return cls(
            position=int(item["position"]),
            type=str(item["type"]),
            ticket_id=item.get("ticket_id"),
            customer_id=item.get("customer_id"),
            internal=bool(item.get("internal")),
            data=dict(item["data"]),
        )


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What one subscriber may and wants to see.

    ``customer_id`` set: only that customer's tickets (a customer caller).
    ``internal``: whether internal events (notes) are shown — staff only.
    ``ticket_id``: narrowed to one ticket (``?ticket_id=``).
    """

    customer_id: str | None = None
    internal: bool = True
    ticket_id: str | None = None

    @classmethod
    def for_principal(cls, principal: Principal, ticket_id: uuid.UUID | None = None) -> EventFilter:
        staff = principal.is_staff
        return cls(
            customer_id=None if staff else str(principal.user_id),
            internal=can_see_internal(principal),
            ticket_id=str(ticket_id) if ticket_id else None,
        )

    @property
    def everything(self) -> bool:
        return self.customer_id is None and self.internal and self.ticket_id is None

    def matches(self, event: StreamEvent) -> bool:
        if event.internal and not self.internal:
            return False
        if self.customer_id is not None and event.customer_id != self.customer_id:
            return False
        return self.ticket_id is None or event.ticket_id == self.ticket_id

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        if not self.internal:
            stmt = stmt.where(EVENTS.c.internal.is_(False))
        if self.customer_id is not None:
            stmt = stmt.where(EVENTS.c.customer_id == uuid.UUID(self.customer_id))
        if self.ticket_id is not None:
            stmt = stmt.where(EVENTS.c.ticket_id == uuid.UUID(self.ticket_id))
        return stmt


# --- reading ------------------------------------------------------------------


def latest_position(conn: Connection) -> int:
    """The highest position handed out so far (0 for an empty stream)."""
    return int(conn.scalar(select(func.coalesce(func.max(EVENTS.c.position), 0))) or 0)


def read_after(
    conn: Connection,
    after: int,
    *,
    upto: int | None = None,
    limit: int = 1000,
    where: EventFilter | None = None,
) -> list[StreamEvent]:
    """Published events with ``after < position <= upto``, oldest first, at most ``limit``."""
    stmt = (
        select(*COLUMNS).where(EVENTS.c.position > after).order_by(EVENTS.c.position).limit(limit)
    )
    if upto is not None:
        stmt = stmt.where(EVENTS.c.position <= upto)
    if where is not None:
        stmt = where.apply(stmt)
    return [StreamEvent.from_row(row) for row in conn.execute(stmt)]


def has_unpublished(db: Database) -> bool:
    """A cheap check before a relay pass takes any lock.

    On SQLite every transaction of ours starts with BEGIN IMMEDIATE (a write
    lock), so this reads on the driver connection in autocommit instead.
    """
    if db.dialect == "sqlite":
        raw = db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT 1 FROM events WHERE published_at IS NULL LIMIT 1")
            found = cursor.fetchone()
            cursor.close()
            return found is not None
        finally:
            raw.close()
    with db.engine.connect() as conn:
        row = conn.execute(
            select(EVENTS.c.seq).where(EVENTS.c.published_at.is_(None)).limit(1)
        ).first()
        return row is not None


# --- the relay pass -----------------------------------------------------------


def _claim(conn: Connection, limit: int) -> list[StreamEvent]:
    base = latest_position(conn)
    rows = conn.execute(
        select(EVENTS.c.seq, *COLUMNS[1:])
        .where(EVENTS.c.published_at.is_(None))
        .order_by(EVENTS.c.seq)
        .limit(limit)
    ).all()
    if not rows:
        return []
    now = utcnow()
    conn.execute(
        update(EVENTS)
        .where(EVENTS.c.seq == bindparam("b_seq"))
        .values(position=bindparam("b_position"), published_at=now),
        [{"b_seq": row.seq, "b_position": base + i} for i, row in enumerate(rows, start=1)],
    )
    return [
        StreamEvent(
            position=base + i,
            type=row.type,
            ticket_id=str(row.ticket_id) if row.ticket_id else None,
            customer_id=str(row.customer_id) if row.customer_id else None,
            internal=bool(row.internal),
            data=dict(row.data),
        )
        for i, row in enumerate(rows, start=1)
    ]


# PostgreSQL: the whole claim in one statement (one round trip). Its snapshot
# is taken after the lock was granted, so ``max`` sees every earlier pass.
CLAIM_PG = text(
    """
    WITH base AS (SELECT coalesce(max(position), 0) AS top FROM events),
         todo AS (SELECT seq, row_number() OVER (ORDER BY seq) AS n
                  FROM events WHERE published_at IS NULL ORDER BY seq LIMIT :limit)
    UPDATE events AS e SET position = base.top + todo.n, published_at = now()
    FROM todo, base WHERE e.seq = todo.seq
    RETURNING e.position, e.type, e.ticket_id, e.customer_id, e.internal, e.data
    """
)


def relay_pass(db: Database, sink: Callable[[list[StreamEvent]], None], *, limit: int = 500) -> int:
    """Position up to ``limit`` committed events, commit, then hand them to ``sink``.

    Returns how many were positioned. The relay lock (module docstring) is a
    transaction lock: passes are serialised, and each commits before the next
    may start. Sinks are called after the commit, outside the lock, so two
    relays racing may announce their passes out of order — readers put them
    back in order (adapters/live/hub.py). An exception from ``sink``
    propagates *after* the positions were committed: the events are then in
    the database for replay and hole filling, just not announced.
    """
    with db.engine.connect() as conn:
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RELAY_LOCK})
                rows = conn.execute(CLAIM_PG, {"limit": limit}).all()
                events = sorted((StreamEvent.from_row(r) for r in rows), key=lambda e: e.position)
            else:
                events = _claim(conn, limit)
        if events:
            sink(events)
        return len(events)
