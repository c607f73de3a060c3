"""The transactional outbox.

Two kinds of rows are written in the same transaction as the change that
causes them:

* :class:`Event` — a live event (``ticket.created``, ``message.created`` …).
  ``seq`` is its insertion order; the relay gives each committed row its
  ``position`` in the stream (the SSE ``id:``) in commit order and publishes
  it, and a reconnecting client is replayed from here (gateway/stream.py).
* :class:`OutboxTask` — a side effect outside the database (an email to send,
  a Slack post), with a state machine so that a retry after a crash is
  detected rather than repeated blindly. ``idempotency_key`` is unique.

Nothing here sends anything: that is the relay's and the workers' job.
Other channels follow the domain through :func:`set_event_hook` (the Slack
mirror turns events into ``slack.*`` tasks in the same transaction).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    String,
    Table,
    Text,
    Uuid,
    event,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from gateway.db import Base, UTCDateTime, new_id, utcnow

JSONType = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer, "sqlite")

EVENT_TYPES = (
    "ticket.created",
    "ticket.updated",
    "ticket.deleted",
    "ticket.restored",
    "ticket.archived",
    "message.created",
    "attachment.created",
)

TASK_STATES = ("pending", "running", "done", "failed", "dead")


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_ticket", "ticket_id", "seq"),
        Index("ix_events_unpublished", "published_at", "seq"),
        Index("ix_events_position", "position", unique=True),
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(32))
    ticket_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    ticket_number: Mapped[int | None] = mapped_column(Integer)
    # Who may see it: staff always; the ticket's customer unless internal.
    customer_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The stream's ``id:``: assigned by the relay in commit order, dense, set
    # together with ``published_at`` (see gateway/stream.py).
    position: Mapped[int | None] = mapped_column(BigId)


class OutboxTask(Base):
    __tablename__ = "outbox_tasks"
    __table_args__ = (Index("ix_outbox_tasks_state", "state", "available_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


def record_event(
    session: Session,
    type_: str,
    *,
    ticket: Any,
    actor: dict[str, Any] | None,
    internal: bool = False,
    **extra: Any,
) -> Event:
    """Add an event row for ``ticket`` to the session (flushed with the change)."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_}")
    at = utcnow()
    data: dict[str, Any] = {
        "type": type_,
        "ticket_id": str(ticket.id),
        "ticket_number": ticket.number,
        "at": at.isoformat(),
        "actor": actor,
    }
    data.update({k: v for k, v in extra.items() if v is not None})
    event = Event(
        type=type_,
        ticket_id=ticket.id,
        ticket_number=ticket.number,
        customer_id=ticket.customer_id,
        internal=internal,
        data=data,
        created_at=at,
    )
    session.add(event)
    for hook in session.info.get(EVENT_HOOKS, {}).values():
        hook(session, event, ticket)
    return event


EVENT_HOOKS = "supportgate.event_hooks"
EventHook = Callable[[Session, Event, Any], None]


def set_event_hook(sessions: sessionmaker[Session], name: str, hook: EventHook | None) -> None:
    """Call ``hook(session, event, ticket)`` for every event recorded in sessions
    made from now on (``None`` removes the hook of that name).

    A hook runs inside the unit of work that records the event, so whatever it
    adds (outbox rows for another channel, say) commits or rolls back with the
    change. It must not commit, and its errors fail the unit of work.
    """
    info = dict(sessions.kw.get("info") or {})
    hooks = dict(info.get(EVENT_HOOKS) or {})
    if hook is None:
        hooks.pop(name, None)
    else:
        hooks[name] = hook
    info[EVENT_HOOKS] = hooks
    sessions.configure(info=info)


def enqueue(session: Session, kind: str, key: str, payload: dict[str, Any]) -> OutboxTask:
    """Add a side-effect task; the unique key makes a second enqueue a no-op upstream."""
    task = OutboxTask(kind=kind, idempotency_key=f"{kind}:{key}", payload=payload)
    session.add(task)
    return task


def enqueue_many(session: Session, tasks: list[tuple[str, str, dict[str, Any]]]) -> None:
    """``enqueue`` for many ``(kind, key, payload)`` at once, as one bulk INSERT.

    For the hot paths (the SMTP edge's group commit): no ORM objects, and the
    rows are still handed to :func:`watch_outbox`'s callback after the commit.
    """
    if not tasks:
        return
    now = utcnow()
    rows = [
        {
            "id": new_id(),
            "kind": kind,
            "idempotency_key": f"{kind}:{key}",
            "payload": payload,
            "state": "pending",
            "attempts": 0,
            "available_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for kind, key, payload in tasks
    ]
    session.execute(cast(Table, OutboxTask.__table__).insert(), rows)
    session.info.setdefault("outbox_new", []).extend((row["id"], row["kind"]) for row in rows)


def watch_outbox(
    sessions: sessionmaker[Session],
    callback: Callable[[list[tuple[uuid.UUID, str]]], None],
) -> None:
    """Call ``callback([(task id, kind), …])`` after each commit that wrote outbox tasks.

    The edge uses it to hand committed tasks to a queue at once (never before
    the commit); whatever the callback fails to hand over stays ``pending``
    for the relay.
    """

    @event.listens_for(sessions, "before_flush")
    def _collect(session: Session, _ctx: Any, _instances: Any) -> None:
        new = [obj for obj in session.new if isinstance(obj, OutboxTask)]
        if new:
            session.info.setdefault("outbox_new", []).extend(new)

    @event.listens_for(sessions, "after_commit")
    def _hand_over(session: Session) -> None:
        rows = session.info.pop("outbox_new", [])
        if rows:
            # Once each: a flush of some objects only (gateway.db.deferred_flush)
            # leaves the others in session.new for the next flush to see again.
            pairs = [row if isinstance(row, tuple) else (row.id, row.kind) for row in rows]
            callback(list(dict.fromkeys(pairs)))

    @event.listens_for(sessions, "after_rollback")
    def _forget(session: Session) -> None:
        session.info.pop("outbox_new", None)
