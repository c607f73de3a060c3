"""``slack.event``: one stored Events API callback, processed from the store.

    not a person's thread message (bot, our own, other subtypes) → ignored
    a thread we do not know                                      → ignored
    a Slack user that maps to no active agent                    → ignored, and the
                                                                   user is told (ephemeral)
    a ticket that is archived or deleted                         → ignored, user told
    "note: …"                                                    → internal note
    anything else                                                → public reply, emailed
                                                                   to the customer
    files shared with it                                         → attachments of that
                                                                   message (refused ones: user told)

The event row goes from ``received`` to ``processed`` or ``ignored`` in the
transaction that records the outcome, so a retried task does nothing twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from adapters.slack.client import SlackApi
from adapters.slack.events import skip_reason
from adapters.slack.files import Fetched, FileFetcher, Refused
from adapters.slack.mrkdwn import to_plain
from gateway.attachments.services import add_stored_file
from gateway.db import Database
from gateway.errors import Conflict
from gateway.events import enqueue
from gateway.permissions import Principal
from gateway.slack.services import (
    finish_event,
    known_agent,
    lock_event,
    record_thread_message,
    remember_slack_user,
    split_note,
    ticket_for_thread,
)
from gateway.tickets.models import Ticket
from gateway.users.models import User

log = logging.getLogger("supportgate.slack")

UNKNOWN_USER = (
    "I could not send that: your Slack account is not linked to a Supportgate agent. "
    "An admin can link it with `supportgate user add <your email> --role agent "
    "--slack-id {user}` (or by giving you an agent account with your Slack profile's email)."
)


@dataclass
class EventProcessor:
    db: Database
    api: SlackApi
    fetcher: FileFetcher | None

    def agent_for(self, slack_user_id: str) -> uuid.UUID | None:
        with self.db.transaction() as session:
            decided, agent = known_agent(session, slack_user_id)
            if decided:
                return agent.id if agent else None
        email, is_bot = self.api.user_profile(slack_user_id)
        with self.db.transaction() as session:
            agent = remember_slack_user(session, slack_user_id, email, is_bot)
            return agent.id if agent else None

    def process(self, payload: dict[str, Any]) -> None:
        event_id = str(payload["event_id"])
        with self.db.transaction() as session:
            row = lock_event(session, event_id)
            if row is None or row.state != "received":
                return
            event = dict((row.payload or {}).get("event") or {})
            reason = skip_reason(event)
            if reason is None and event.get("user") == self.api.identity().user_id:
                reason = "our own message"
            ticket = None
            if reason is None:
                ticket = ticket_for_thread(session, event["channel"], event["thread_ts"])
                if ticket is None:
                    reason = "a thread that is not a ticket's"
            if reason is not None or ticket is None:
                finish_event(row, "ignored", reason or "not a ticket thread")
                return
            ticket_id = ticket.id
        user, channel = event["user"], event["channel"]

        agent_id = self.agent_for(user)
        if agent_id is None:
            self._refuse(event_id, "unknown Slack user", UNKNOWN_USER.format(user=user), event)
            return

        fetched: list[Fetched | Refused] = []
        if event.get("files") and self.fetcher is not None:
            fetched = self.fetcher.fetch_all(list(event["files"]))
        kept = [f for f in fetched if isinstance(f, Fetched)]
        refused = [f for f in fetched if isinstance(f, Refused)]

        kind, text = split_note(to_plain(str(event.get("text") or "")))
        if not text:
            if not kept:
                self._refuse(
                    event_id, "empty message", "Nothing was sent: the message is empty.", event
                )
                return
            text = "Attached: " + ", ".join(f.filename for f in kept)

        with self.db.transaction() as session:
            row = lock_event(session, event_id)
            if row is None or row.state != "received":
                return
            ticket = session.get(Ticket, ticket_id)
            agent = session.get(User, agent_id)
            if ticket is None or agent is None:
                finish_event(row, "ignored", "the ticket or the agent is gone")
                return
            try:
                message = record_thread_message(
                    session, agent, ticket, kind=kind, text=text, channel=channel, ts=event["ts"]
                )
            except Conflict as exc:
                finish_event(row, "ignored", exc.detail)
                self._tell(session, event_id, event, f"Not sent: {exc.detail}.")
                return
            for item in kept:
                add_stored_file(
                    session,
                    Principal.of(agent),
                    ticket,
                    message,
                    filename=item.filename,
                    content_type=item.content_type,
                    sha256=item.sha256,
                    size=item.size,
                )
            if refused:
                lines = "\n".join(f"• {r.filename}: {r.reason}" for r in refused)
                self._tell(session, event_id, event, f"These files were not attached:\n{lines}")
            what = "note" if kind == "note" else "reply"
            finish_event(row, "processed", f"{what} {message.id} on ticket #{ticket.number}")
        log.info(
            "Slack thread message recorded",
            extra={"event_id": event_id, "kind": kind, "ticket": str(ticket_id), "user": user},
        )

    def _refuse(self, event_id: str, outcome: str, text: str, event: dict[str, Any]) -> None:
        with self.db.transaction() as session:
            row = lock_event(session, event_id)
            if row is None or row.state != "received":
                return
            finish_event(row, "ignored", outcome)
            self._tell(session, event_id, event, text)

    @staticmethod
    def _tell(session: Any, event_id: str, event: dict[str, Any], text: str) -> None:
        enqueue(
            session,
            "slack.ephemeral",
            f"event:{event_id}",
            {
                "channel": event["channel"],
                "user": event["user"],
                "thread_ts": event.get("thread_ts"),
                "text": text,
            },
        )
