"""The Slack mirror: domain events become ``slack.*`` outbox rows.

Installed per session factory by the entry points when Slack is configured
(:func:`install_mirror`); the rows are written by the event hook in the same
transaction as the change, so a ticket that commits is posted and one that
rolls back never is.

    event                          row              what the task does
    ticket.created                 slack.post       the parent message (once: stored ts)
    message.created (not Slack's)  slack.thread     the message in the thread, in order
    ticket.updated/deleted/        slack.update     chat.update of the parent when what it
      restored/archived                             shows changed

Messages that came from Slack (an agent's thread reply) are in the thread
already and are not posted back, which also keeps our posts from echoing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from gateway.conversations.models import Message
from gateway.events import Event, enqueue, set_event_hook
from gateway.slack.models import SlackPost, SlackThread
from gateway.tickets.models import Ticket

T = TypeVar("T")

HOOK_NAME = "slack"
UPDATE_EVENTS = frozenset(
    {"ticket.updated", "ticket.deleted", "ticket.restored", "ticket.archived"}
)


def install_mirror(sessions: sessionmaker[Session], channel: str | None) -> None:
    """Mirror tickets into ``channel`` (None turns the mirror off)."""
    set_event_hook(sessions, HOOK_NAME, _Mirror(channel) if channel else None)


def _added(session: Session, cls: type[T], match: Callable[[T], bool]) -> T | None:
    """An object of ``cls`` added to ``session`` and not flushed yet (see
    gateway.db.deferred_flush), for which ``match`` holds."""
    return next((o for o in session.new if isinstance(o, cls) and match(o)), None)


def ensure_thread(session: Session, ticket: Ticket, channel: str) -> SlackThread:
    thread = session.get(SlackThread, ticket.id) or _added(
        session, SlackThread, lambda t: t.ticket_id == ticket.id
    )
    if thread is None:
        thread = SlackThread(ticket_id=ticket.id, channel=channel, state="pending")
        session.add(thread)
    return thread


class _Mirror:
    def __init__(self, channel: str) -> None:
        self.channel = channel

    def __call__(self, session: Session, event: Event, ticket: Any) -> None:
        if event.type == "ticket.created":
            ensure_thread(session, ticket, self.channel)
            enqueue(session, "slack.post", str(ticket.id), {"ticket_id": str(ticket.id)})
        elif event.type == "message.created":
            message_id = uuid.UUID(event.data["message_id"])
            message = session.get(Message, message_id) or _added(
                session, Message, lambda m: m.id == message_id
            )
            if message is None or message.channel == "slack":
                return
            ensure_thread(session, ticket, self.channel)
            session.add(
                SlackPost(
                    message_id=message.id,
                    ticket_id=ticket.id,
                    origin="gateway",
                    state="pending",
                    created_at=message.created_at,
                )
            )
            enqueue(
                session,
                "slack.thread",
                str(message.id),
                {"ticket_id": str(ticket.id), "message_id": str(message.id)},
            )
        elif event.type in UPDATE_EVENTS and not event.data.get("purged"):
            # Many updates of one ticket collapse in the task: it renders the
            # ticket as it is then and skips Slack when nothing shown changed.
            enqueue(
                session,
                "slack.update",
                f"{ticket.id}:{uuid.uuid4().hex}",
                {"ticket_id": str(ticket.id)},
            )
