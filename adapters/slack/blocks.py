"""Block Kit for tickets and messages: pure functions, no I/O.

The parent message of a ticket shows its number, title, customer, priority,
status and assignee, with the actions an agent can take:

    action_id      element                         value
    assign_self    button "Assign to me"           ticket id
    set_priority   static select (low … urgent)    "<ticket id>:<priority>"
    set_status     static select (allowed moves)   "<ticket id>:<status>"
    resolve        button "Resolve"                ticket id

A deleted or archived ticket is shown read-only (no actions).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from gateway.tickets.workflow import PRIORITIES, TRANSITIONS

SECTION_LIMIT = 3000
TEXT_LIMIT = 39000
PRIORITY_EMOJI = {"low": "⚪", "normal": "🔵", "high": "🟠", "urgent": "🔴"}
KIND_LABEL = {
    "customer": "wrote",
    "reply": "replied",
    "note": "added an internal note",
    "system": "system message",
}


def escape(text: str) -> str:
    """Slack's mrkdwn escaping of the three control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def label(value: str) -> str:
    return value.replace("_", " ").capitalize()


@dataclass(frozen=True)
class Person:
    name: str
    email: str

    def show(self) -> str:
        return escape(f"{self.name} <{self.email}>" if self.name else self.email)


@dataclass(frozen=True)
class TicketCard:
    id: str
    number: int
    title: str
    customer: Person
    priority: str
    status: str
    assignee: Person | None
    description: str = ""
    deleted: bool = False
    archived: bool = False


def ticket_text(card: TicketCard) -> str:
    """The notification text (and the fallback where blocks are not shown)."""
    return clip(f"[#{card.number}] {card.title} ({label(card.status)}, {card.priority})", 3000)


def _option(text: str, value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text}, "value": value}


def ticket_blocks(card: TicketCard, *, actions: bool = True) -> list[dict[str, Any]]:
    assignee = card.assignee.show() if card.assignee else "_unassigned_"
    state = ""
    if card.deleted:
        state = " · 🗑 deleted"
    elif card.archived:
        state = " · 🗄 archived"
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": clip(f"*[#{card.number}] {escape(card.title)}*{state}", SECTION_LIMIT),
            },
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Customer*\n{card.customer.show()}"},
                {"type": "mrkdwn", "text": f"*Assignee*\n{assignee}"},
                {
                    "type": "mrkdwn",
                    "text": f"*Priority*\n{PRIORITY_EMOJI.get(card.priority, '')} "
                    f"{label(card.priority)}",
                },
                {"type": "mrkdwn", "text": f"*Status*\n{label(card.status)}"},
            ],
        },
    ]
    if card.description.strip():
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": clip(escape(card.description.strip()), 300)}
                ],
            }
        )
    if actions and not card.deleted and not card.archived:
        blocks.append(_actions(card))
    return blocks


def _actions(card: TicketCard) -> dict[str, Any]:
    elements: list[dict[str, Any]] = [
        {
            "type": "button",
            "action_id": "assign_self",
            "text": {"type": "plain_text", "text": "Assign to me"},
            "value": card.id,
        }
    ]
    priorities = [_option(label(p), f"{card.id}:{p}") for p in PRIORITIES]
    elements.append(
        {
            "type": "static_select",
            "action_id": "set_priority",
            "placeholder": {"type": "plain_text", "text": "Priority"},
            "options": priorities,
            "initial_option": priorities[PRIORITIES.index(card.priority)],
        }
    )
    moves = sorted(TRANSITIONS.get(card.status, frozenset()))
    if moves:
        statuses = [_option(label(card.status), f"{card.id}:{card.status}")]
        statuses += [_option(label(s), f"{card.id}:{s}") for s in moves]
        elements.append(
            {
                "type": "static_select",
                "action_id": "set_status",
                "placeholder": {"type": "plain_text", "text": "Status"},
                "options": statuses,
                "initial_option": statuses[0],
            }
        )
    if card.status not in ("solved", "closed"):
        elements.append(
            {
                "type": "button",
                "action_id": "resolve",
                "style": "primary",
                "text": {"type": "plain_text", "text": "Resolve"},
                "value": card.id,
            }
        )
    return {"type": "actions", "block_id": f"ticket:{card.id}", "elements": elements}


def digest(text: str, blocks: list[dict[str, Any]]) -> str:
    """What Slack shows, as a hash: an update that would not change it is skipped."""
    raw = json.dumps([text, blocks], sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class MessageCard:
    id: str
    kind: str
    channel: str
    author: str
    body: str
    attachments: tuple[str, ...] = ()


def message_text(card: MessageCard) -> str:
    """A message of the conversation as a thread post (mrkdwn)."""
    what = KIND_LABEL.get(card.kind, card.kind)
    via = f" by {card.channel}" if card.channel in ("email", "api", "web") else ""
    head = f"*{escape(card.author)}* {what}{via}:"
    if card.kind == "note":
        head = f":lock: {head}"
    body = escape(card.body.strip()) or "_(no text)_"
    files = ""
    if card.attachments:
        files = "\n:paperclip: " + ", ".join(escape(name) for name in card.attachments)
    return clip(f"{head}\n{body}", TEXT_LIMIT - len(files) - 1) + files


def ticket_line(card: TicketCard) -> str:
    assignee = card.assignee.name or card.assignee.email if card.assignee else "unassigned"
    return (
        f"`#{card.number}` *{escape(clip(card.title, 80))}* — {label(card.status)} · "
        f"{card.priority} · {escape(card.customer.email)} · {escape(assignee)}"
    )
