"""Outbound tasks: the ticket's parent message, its thread, its updates.

    slack.post       post the parent message once (a stored ts is never posted again)
    slack.thread     post the ticket's pending messages in its thread, oldest first
    slack.update     chat.update of the parent when what it shows changed
    slack.ephemeral  tell one user something only they see

One poster per thread at a time (a lease on the slack_threads row), and the
thread task posts every earlier pending message before its own, so a retry or
two workers never reorder a thread. Each post is committed ``posting`` before
the Web API call; one found ``posting`` by the next attempt may have reached
Slack, and is looked up by its metadata before it is posted again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError

from adapters.slack.blocks import digest, message_text, ticket_blocks, ticket_text
from adapters.slack.cards import message_card, ticket_card
from adapters.slack.client import SlackApi, SlackPermanentError
from gateway.db import Database, utcnow
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.slack.models import SlackPost, SlackThread
from gateway.slack.services import acquire_lease, pending_posts, release_lease
from gateway.tickets.models import Ticket

log = logging.getLogger("supportgate.slack")

# How far before an uncertain attempt the lookup of its message starts.
LOOKBACK_SECONDS = 120.0
TICKET_EVENT = "supportgate_ticket"
MESSAGE_EVENT = "supportgate_message"


@dataclass
class Poster:
    db: Database
    api: SlackApi

    # --- tasks ---------------------------------------------------------------------

    def post_ticket(self, payload: dict[str, Any]) -> None:
        """``slack.post``: the parent message, and whatever waits for it."""
        ticket_id = uuid.UUID(payload["ticket_id"])
        with self._lease(ticket_id):
            parent = self._ensure_parent(ticket_id)
            if parent is not None:
                self._post_pending(ticket_id, *parent)

    def post_thread(self, payload: dict[str, Any]) -> None:
        """``slack.thread``: the ticket's pending messages, in order."""
        self.post_ticket(payload)

    def update_ticket(self, payload: dict[str, Any]) -> None:
        """``slack.update``: chat.update of the parent when what it shows changed."""
        ticket_id = uuid.UUID(payload["ticket_id"])
        with self.db.transaction() as session:
            if session.get(SlackThread, ticket_id) is None:
                return  # never mirrored (Slack was off then); its next message posts it
        with self._lease(ticket_id):
            parent = self._ensure_parent(ticket_id)
            if parent is None:
                return
            channel, ts = parent
            with self.db.transaction() as session:
                ticket = session.get(Ticket, ticket_id)
                thread = session.get(SlackThread, ticket_id)
                if ticket is None or thread is None:
                    return
                card = ticket_card(ticket)
                text, blocks = ticket_text(card), ticket_blocks(card)
                shown = digest(text, blocks)
                if shown == thread.rendered:
                    return
            self.api.update_message(channel, ts, text, blocks)
            with self.db.transaction() as session:
                thread = session.get(SlackThread, ticket_id)
                if thread is not None:
                    thread.rendered = shown

    def post_ephemeral(self, payload: dict[str, Any]) -> None:
        """``slack.ephemeral``: a message only one user sees (an error, a refusal)."""
        self.api.post_ephemeral(
            payload["channel"], payload["user"], payload["text"], payload.get("thread_ts")
        )

    # --- steps ---------------------------------------------------------------------

    @contextmanager
    def _lease(self, ticket_id: uuid.UUID) -> Iterator[None]:
        owner = acquire_lease(self.db, ticket_id)
        if owner is None:
            with self.db.transaction() as session:
                if session.get(SlackThread, ticket_id) is None:
                    raise _Gone()
            raise ServiceUnavailable(
                "another poster is writing to this ticket's thread", data={"retry_after": 2}
            )
        try:
            yield
        finally:
            release_lease(self.db, ticket_id, owner)

    def _ensure_parent(self, ticket_id: uuid.UUID) -> tuple[str, str] | None:
        """(channel, ts) of the ticket's parent message, posting it if need be."""
        with self.db.transaction() as session:
            thread = session.get(SlackThread, ticket_id)
            ticket = session.get(Ticket, ticket_id)
            if thread is None or ticket is None:
                return None
            if thread.ts:
                return thread.channel, thread.ts
            channel = thread.channel
        channel = self.api.channel_id(channel)
        with self.db.transaction() as session:
            thread = session.get(SlackThread, ticket_id)
            ticket = session.get(Ticket, ticket_id)
            if thread is None or ticket is None:
                return None
            card = ticket_card(ticket)
            text, blocks = ticket_text(card), ticket_blocks(card)
            uncertain, since = thread.state == "posting", thread.posting_since
            if not uncertain:
                thread.state, thread.posting_since = "posting", utcnow()
            thread.channel = channel
        ts = None
        if uncertain and since is not None:
            ts = self._look_up(channel, "ticket_id", str(ticket_id), since.timestamp(), None)
        if ts is None:
            channel, ts = self._post(
                SlackThread,
                ticket_id,
                channel,
                text,
                blocks=blocks,
                metadata={
                    "event_type": TICKET_EVENT,
                    "event_payload": {"ticket_id": str(ticket_id)},
                },
            )
        with self.db.transaction() as session:
            thread = session.get(SlackThread, ticket_id)
            if thread is None:
                return None
            thread.channel, thread.ts, thread.state = channel, ts, "posted"
            thread.rendered = digest(text, blocks)
        log.info("ticket posted to Slack", extra={"ticket_id": str(ticket_id), "slack_ts": ts})
        return channel, ts

    def _post_pending(self, ticket_id: uuid.UUID, channel: str, parent_ts: str) -> None:
        with self.db.transaction() as session:
            todo = [
                (
                    post.message_id,
                    post.state,
                    post.posting_since,
                    message_text(message_card(session, message)),
                )
                for post, message in pending_posts(session, ticket_id)
            ]
        for message_id, state, since, text in todo:
            ts = None
            if state == "posting" and since is not None:
                ts = self._look_up(
                    channel, "message_id", str(message_id), since.timestamp(), parent_ts
                )
            else:
                with self.db.transaction() as session:
                    post = session.get(SlackPost, message_id)
                    if post is None:
                        continue  # the message was removed (ticket purged)
                    post.state, post.posting_since = "posting", utcnow()
            if ts is None:
                channel, ts = self._post(
                    SlackPost,
                    message_id,
                    channel,
                    text,
                    thread_ts=parent_ts,
                    metadata={
                        "event_type": MESSAGE_EVENT,
                        "event_payload": {"message_id": str(message_id)},
                    },
                )
            with self.db.transaction() as session:
                post = session.get(SlackPost, message_id)
                if post is not None:
                    post.channel, post.ts, post.state = channel, ts, "posted"

    def _post(
        self,
        model: type[SlackThread] | type[SlackPost],
        key: uuid.UUID,
        channel: str,
        text: str,
        **kwargs: Any,
    ) -> tuple[str, str]:
        try:
            return self.api.post_message(channel, text, **kwargs)
        except (SlackApiError, SlackPermanentError, RateLimited):
            # Slack answered, so nothing was posted: the next attempt posts without a look-up.
            with self.db.transaction() as session:
                row = session.get(model, key)
                if row is not None and row.state == "posting":
                    row.state = "pending"
            raise

    def _look_up(
        self, channel: str, key: str, value: str, since: float, thread_ts: str | None
    ) -> str | None:
        """The ts of a post an earlier attempt may have made (None: not made)."""
        try:
            found = self.api.find_by_metadata(
                channel, key, value, oldest=since - LOOKBACK_SECONDS, thread_ts=thread_ts
            )
        except SlackPermanentError as exc:
            # A channel given by name cannot be read back (conversations.* take ids):
            # posting again is the only way forward, and it is logged as such.
            log.warning(
                "could not check whether an earlier attempt posted; posting again",
                extra={"channel": channel, "error": exc.error, key: value},
            )
            return None
        if found:
            log.info(
                "an earlier attempt had posted; kept its ts", extra={key: value, "slack_ts": found}
            )
        return found


class _Gone(Exception):
    """The ticket's thread row is gone (ticket purged): nothing to post."""


def handlers(poster: Poster) -> dict[str, Any]:
    def quietly_gone(fn: Any) -> Any:
        def run(payload: dict[str, Any]) -> None:
            try:
                fn(payload)
            except _Gone:
                log.info("ticket gone before its Slack post", extra={"payload": payload})

        return run

    return {
        "slack.post": quietly_gone(poster.post_ticket),
        "slack.thread": quietly_gone(poster.post_thread),
        "slack.update": quietly_gone(poster.update_ticket),
        "slack.ephemeral": poster.post_ephemeral,
    }
