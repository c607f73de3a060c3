"""Slack state: stored events, per-thread leases, posts, user mapping, replies.

Services never commit (the edge does), except the lease helpers, which take
a :class:`~gateway.db.Database` because a lease is its own unit of work.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from gateway.conversations.models import Message
from gateway.conversations.services import record_message
from gateway.db import Database, utcnow
from gateway.events import enqueue
from gateway.permissions import Principal
from gateway.slack.models import SlackEvent, SlackPost, SlackThread, SlackUser
from gateway.tickets.models import Ticket
from gateway.tickets.services import check_writable
from gateway.users.models import User
from gateway.users.services import find_user_by_email

# A Slack user looked up by users.info is trusted this long; one that mapped to
# nobody is looked up again sooner (an admin may have just added them).
KNOWN_USER_TTL = timedelta(hours=24)
UNKNOWN_USER_TTL = timedelta(minutes=5)
LEASE = timedelta(seconds=120)
NOTE_PREFIX = "note:"


# --- events ---------------------------------------------------------------------


def store_event(session: Session, body: dict[str, Any]) -> bool:
    """Store an Events API callback and queue its processing; False when its
    ``event_id`` was stored before (a retry), in which case nothing changes."""
    event = body.get("event") or {}
    event_id = str(body["event_id"])[:64]
    values: dict[str, Any] = {
        "event_id": event_id,
        "event_type": str(event.get("type") or "unknown")[:64],
        "team_id": (str(body["team_id"])[:32] if body.get("team_id") else None),
        "payload": body,
        "state": "received",
        "received_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert(SlackEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(SlackEvent.id)
    )
    stored = session.execute(stmt).scalar_one_or_none()
    if stored is None:
        return False
    enqueue(session, "slack.event", event_id, {"event_id": event_id})
    return True


def finish_event(event: SlackEvent, state: str, outcome: str) -> None:
    event.state = state
    event.outcome = outcome[:300]
    event.processed_at = utcnow()


def lock_event(session: Session, event_id: str) -> SlackEvent | None:
    stmt = select(SlackEvent).where(SlackEvent.event_id == event_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


# --- threads --------------------------------------------------------------------


def ticket_for_thread(session: Session, channel: str, thread_ts: str) -> Ticket | None:
    thread = session.scalar(
        select(SlackThread).where(SlackThread.channel == channel, SlackThread.ts == thread_ts)
    )
    return session.get(Ticket, thread.ticket_id) if thread is not None else None


def acquire_lease(db: Database, ticket_id: uuid.UUID) -> str | None:
    """Take the thread of a ticket for posting; None while another poster has it.

    One poster per thread at a time is what keeps its posts in order; a poster
    that died frees it when the lease runs out.
    """
    owner = secrets.token_hex(8)
    now = utcnow()
    with db.transaction() as session:
        result = session.execute(
            update(SlackThread)
            .where(
                SlackThread.ticket_id == ticket_id,
                (SlackThread.lease_until.is_(None)) | (SlackThread.lease_until < now),
            )
            .values(lease_until=now + LEASE, lease_owner=owner)
        )
        taken = int(result.rowcount or 0)  # type: ignore[attr-defined]
    return owner if taken else None


def release_lease(db: Database, ticket_id: uuid.UUID, owner: str) -> None:
    with db.transaction() as session:
        session.execute(
            update(SlackThread)
            .where(SlackThread.ticket_id == ticket_id, SlackThread.lease_owner == owner)
            .values(lease_until=None, lease_owner=None)
        )


def pending_posts(session: Session, ticket_id: uuid.UUID) -> list[tuple[SlackPost, Message]]:
    """Messages of the ticket still to be posted in its thread, oldest first."""
    rows = session.execute(
        select(SlackPost, Message)
        .join(Message, Message.id == SlackPost.message_id)
        .where(SlackPost.ticket_id == ticket_id, SlackPost.state != "posted")
        .order_by(Message.created_at, Message.id)
    ).all()
    return [(post, message) for post, message in rows]


# --- users ----------------------------------------------------------------------


def _agent(user: User | None) -> User | None:
    return user if user is not None and user.is_staff and user.active else None


def known_agent(session: Session, slack_user_id: str) -> tuple[bool, User | None]:
    """(decided, agent): the agent a Slack user maps to, from ``users.slack_user_id``
    or a fresh cache entry. ``decided`` is False when Slack must be asked
    (``users.info``) and the answer passed to :func:`remember_slack_user`."""
    direct = session.scalar(select(User).where(User.slack_user_id == slack_user_id))
    if direct is not None:
        return True, _agent(direct)
    cached = session.get(SlackUser, slack_user_id)
    if cached is None:
        return False, None
    ttl = KNOWN_USER_TTL if cached.user_id is not None else UNKNOWN_USER_TTL
    if cached.fetched_at < utcnow() - ttl:
        return False, None
    if cached.is_bot or cached.user_id is None:
        return True, None
    return True, _agent(session.get(User, cached.user_id))


def remember_slack_user(
    session: Session, slack_user_id: str, email: str | None, is_bot: bool
) -> User | None:
    """Cache what ``users.info`` said; returns the agent with that profile email."""
    user = None if is_bot or not email else find_user_by_email(session, email)
    agent = _agent(user)
    cached = session.get(SlackUser, slack_user_id)
    if cached is None:
        cached = SlackUser(slack_user_id=slack_user_id)
        session.add(cached)
    cached.email = email.lower()[:320] if email else None
    cached.user_id = agent.id if agent else None
    cached.is_bot = is_bot
    cached.fetched_at = utcnow()
    session.flush()
    return agent


# --- replies from a thread ----------------------------------------------------------


def split_note(text: str) -> tuple[str, str]:
    """("note", rest) for a message that starts with ``note:``, else ("reply", text)."""
    stripped = text.lstrip()
    if stripped[: len(NOTE_PREFIX)].lower() == NOTE_PREFIX:
        return "note", stripped[len(NOTE_PREFIX) :].strip()
    return "reply", text.strip()


def record_thread_message(
    session: Session,
    agent: User,
    ticket: Ticket,
    *,
    kind: str,
    text: str,
    channel: str,
    ts: str,
) -> Message:
    """An agent's message written in the ticket's thread: a public reply (emailed
    to the customer) or an internal note. Raises Conflict for a ticket that is
    archived or deleted."""
    check_writable(ticket)
    message = record_message(
        session,
        Principal.of(agent),
        ticket,
        kind=kind,
        channel="slack",
        body_text=text,
        body_html=None,
        send_email=kind == "reply",
    )
    session.add(
        SlackPost(
            message_id=message.id,
            ticket_id=ticket.id,
            origin="slack",
            channel=channel,
            ts=ts,
            state="posted",
            created_at=message.created_at,
        )
    )
    session.flush()
    return message
