"""Slash command and button actions, handled while Slack waits (< 3 s).

Both are one short database transaction: the change commits before Slack
gets its answer, so an acknowledged click or command has happened. Slack
never retries these; a failure is shown to the user who asked:

    /ticket …   the answer (or the error, or the usage text) is the response
                itself, ephemeral
    buttons     the parent message is updated by the ``slack.update`` task the
                change queues; a refusal is sent as an ephemeral message
                (``slack.ephemeral`` task)
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from adapters.slack.blocks import ticket_blocks, ticket_line, ticket_text
from adapters.slack.cards import ticket_card
from adapters.slack.client import SlackPermanentError
from adapters.slack.commands import USAGE, Assign, ListTickets, Resolve, Show, UsageError, parse
from adapters.slack.inbound import UNKNOWN_USER, EventProcessor
from gateway.db import Database
from gateway.errors import GatewayError, RateLimited
from gateway.events import enqueue
from gateway.permissions import Principal
from gateway.tickets.models import Ticket
from gateway.tickets.schemas import TicketUpdate
from gateway.tickets.services import get_ticket, update_ticket
from gateway.users.models import User
from gateway.users.services import find_user_by_email

log = logging.getLogger("supportgate.slack")

ACTION_IDS = ("assign_self", "set_priority", "set_status", "resolve")
OPEN_STATUSES = ("new", "open", "pending", "on_hold")
LIST_LIMIT = 20


class Refusal(Exception):
    """A request we answer with an explanation instead of doing it."""


def ephemeral(text: str, blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"response_type": "ephemeral", "text": text}
    if blocks is not None:
        response["blocks"] = blocks
    return response


@dataclass
class Interactions:
    db: Database
    users: EventProcessor  # its agent_for(): slack_user_id, the cache, then users.info

    def _agent(self, slack_user_id: str) -> uuid.UUID:
        try:
            agent_id = self.users.agent_for(slack_user_id)
        except RateLimited as exc:
            raise Refusal(
                "Slack is rate-limiting us right now; try again in "
                f"{exc.data.get('retry_after', 30)} s."
            ) from exc
        except SlackPermanentError as exc:
            raise Refusal(
                f"Supportgate could not look up a Slack user ({exc.error}); an admin should "
                "check the Slack app's scopes (users:read, users:read.email)."
            ) from exc
        if agent_id is None:
            raise Refusal(UNKNOWN_USER.format(user=slack_user_id))
        return agent_id

    # --- /ticket ---------------------------------------------------------------------

    def command(self, command: dict[str, Any]) -> dict[str, Any]:
        """The response to ``/ticket …`` (always ephemeral)."""
        try:
            parsed = parse(str(command.get("text") or ""))
        except UsageError as exc:
            return ephemeral(f":warning: {exc}.\n{USAGE}")
        try:
            actor = self._agent(str(command["user_id"]))
            target = None
            if isinstance(parsed, Assign) and parsed.slack_user:
                target = self._agent_or_none(parsed.slack_user)
            with self.db.transaction() as session:
                agent = session.get(User, actor)
                if agent is None:
                    raise Refusal(UNKNOWN_USER.format(user=command["user_id"]))
                principal = Principal.of(agent)
                if isinstance(parsed, Show):
                    ticket = get_ticket(session, principal, str(parsed.number))
                    card = ticket_card(ticket)
                    return ephemeral(ticket_text(card), ticket_blocks(card))
                if isinstance(parsed, ListTickets):
                    return self._list(session, parsed.status)
                if isinstance(parsed, Assign):
                    ticket = get_ticket(session, principal, str(parsed.number))
                    if parsed.me:
                        target = agent.id
                    elif parsed.email:
                        found = find_user_by_email(session, parsed.email)
                        target = found.id if found else None
                    if target is None:
                        raise Refusal(
                            "That user is not a Supportgate agent, so they cannot be assigned."
                        )
                    update_ticket(session, principal, ticket, TicketUpdate(assignee_id=target))
                    assignee = ticket.assignee
                    who = (assignee.name or assignee.email) if assignee else "nobody"
                    return ephemeral(f"Assigned #{ticket.number} to {who}.")
                assert isinstance(parsed, Resolve)
                ticket = get_ticket(session, principal, str(parsed.number))
                update_ticket(session, principal, ticket, TicketUpdate(status="solved"))
                return ephemeral(f"Resolved #{ticket.number}.")
        except Refusal as exc:
            return ephemeral(f":warning: {exc}")
        except GatewayError as exc:
            return ephemeral(f":warning: {exc.detail}")

    def _agent_or_none(self, slack_user_id: str) -> uuid.UUID | None:
        try:
            return self._agent(slack_user_id)
        except Refusal:
            return None

    def _list(self, session: Any, status: str | None) -> dict[str, Any]:
        statuses = (status,) if status else OPEN_STATUSES
        rows = list(
            session.scalars(
                select(Ticket)
                .where(
                    Ticket.status.in_(statuses),
                    Ticket.deleted_at.is_(None),
                    Ticket.archived_at.is_(None),
                )
                .order_by(Ticket.updated_at.desc(), Ticket.id)
                .limit(LIST_LIMIT + 1)
            ).unique()
        )
        what = status.replace("_", " ") if status else "open"
        if not rows:
            return ephemeral(f"No {what} tickets.")
        lines = [ticket_line(ticket_card(t)) for t in rows[:LIST_LIMIT]]
        if len(rows) > LIST_LIMIT:
            lines.append("…and more: narrow it with `/ticket list <status>`.")
        text = f"*{what.capitalize()} tickets* (latest first)\n" + "\n".join(lines)
        return ephemeral(text)

    # --- buttons and selects ------------------------------------------------------------

    def action(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        """Apply one block action; a refusal goes back to the user, ephemeral."""
        user = str((body.get("user") or {}).get("id") or "")
        try:
            self._apply(user, action)
        except Refusal as exc:
            self._tell(body, user, f":warning: {exc}")
        except GatewayError as exc:
            self._tell(body, user, f":warning: {exc.detail}")

    def _apply(self, user: str, action: dict[str, Any]) -> None:
        action_id = str(action.get("action_id"))
        value = str(action.get("value") or (action.get("selected_option") or {}).get("value") or "")
        ticket_ref, _, argument = value.partition(":")
        agent_id = self._agent(user)
        try:
            ticket_id = uuid.UUID(ticket_ref)
            change = {
                "assign_self": lambda: TicketUpdate(assignee_id=agent_id),
                "set_priority": lambda: TicketUpdate(priority=argument),
                "set_status": lambda: TicketUpdate(status=argument),
                "resolve": lambda: TicketUpdate(status="solved"),
            }[action_id]()
        except (ValueError, KeyError, ValidationError) as exc:
            raise Refusal(f"That action ({action_id} {value!r}) is not one we understand.") from exc
        with self.db.transaction() as session:
            agent = session.get(User, agent_id)
            if agent is None:
                raise Refusal(UNKNOWN_USER.format(user=user))
            principal = Principal.of(agent)
            ticket = get_ticket(session, principal, ticket_id)
            update_ticket(session, principal, ticket, change)
        log.info("Slack action applied", extra={"action": action_id, "ticket": str(ticket_id)})

    def _tell(self, body: dict[str, Any], user: str, text: str) -> None:
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get(
            "channel_id"
        )
        if not channel or not user:
            log.warning("cannot tell a Slack user about a refused action", extra={"text": text})
            return
        container = body.get("container") or {}
        with self.db.transaction() as session:
            enqueue(
                session,
                "slack.ephemeral",
                f"action:{uuid.uuid4().hex}",
                {
                    "channel": channel,
                    "user": user,
                    "thread_ts": container.get("thread_ts"),
                    "text": text,
                },
            )
