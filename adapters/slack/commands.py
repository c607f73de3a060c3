"""The ``/ticket`` slash command's grammar: pure parsing, no I/O.

/ticket <number>                 show one ticket
/ticket list [status]            list (default: every status not solved or closed)
/ticket assign <number> @user    assign (also: me, or an agent's email address)
/ticket resolve <number>         mark solved
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.tickets.workflow import STATUSES

USAGE = (
    "*Usage*\n"
    "• `/ticket <number>` shows a ticket\n"
    "• `/ticket list [status]` lists tickets (status: " + ", ".join(STATUSES) + ")\n"
    "• `/ticket assign <number> @user` assigns it (or `me`, or an agent's email)\n"
    "• `/ticket resolve <number>` marks it solved"
)

_NUMBER = re.compile(r"^#?([0-9]{1,9})$")
_MENTION = re.compile(r"^<@([A-Z0-9]+)(?:\|[^>]*)?>$")
_EMAIL = re.compile(r"^(?:<mailto:[^|>]+\|)?([^@\s<>|]+@[^@\s<>|]+?)>?$")


class UsageError(ValueError):
    """The command's text does not parse; the message says why."""


@dataclass(frozen=True)
class Show:
    number: int


@dataclass(frozen=True)
class ListTickets:
    status: str | None


@dataclass(frozen=True)
class Assign:
    number: int
    # Exactly one of these: a Slack user id, "me", an email address.
    slack_user: str | None = None
    me: bool = False
    email: str | None = None


@dataclass(frozen=True)
class Resolve:
    number: int


Command = Show | ListTickets | Assign | Resolve


def _number(word: str) -> int:
    match = _NUMBER.match(word)
    if not match:
        raise UsageError(f"{word!r} is not a ticket number")
    return int(match.group(1))


def parse(text: str) -> Command:
    words = (text or "").split()
    if not words:
        raise UsageError("say which ticket, or `list`")
    verb = words[0].lower()
    if verb == "list":
        if len(words) > 2:
            raise UsageError("`list` takes at most one status")
        if len(words) == 1:
            return ListTickets(None)
        status = words[1].lower().replace("-", "_")
        if status not in STATUSES:
            raise UsageError(f"{words[1]!r} is not a status ({', '.join(STATUSES)})")
        return ListTickets(status)
    if verb == "assign":
        if len(words) != 3:
            raise UsageError("`assign` takes a ticket number and a user: `assign 42 @ann`")
        number, who = _number(words[1]), words[2]
        if who.lower() == "me":
            return Assign(number, me=True)
        if mention := _MENTION.match(who):
            return Assign(number, slack_user=mention.group(1))
        if email := _EMAIL.match(who):
            return Assign(number, email=email.group(1).lower())
        raise UsageError(
            f"{who!r} is not a user Slack identified: pick them from the @-menu "
            "(or write `me`, or their email address)"
        )
    if verb == "resolve":
        if len(words) != 2:
            raise UsageError("`resolve` takes one ticket number")
        return Resolve(_number(words[1]))
    if len(words) == 1:
        return Show(_number(words[0]))
    raise UsageError(f"unknown command {words[0]!r}")
