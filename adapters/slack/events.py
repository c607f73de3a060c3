"""Which Events API callbacks are worth storing: pure rules, no I/O.

Only a person's message in a thread can become a ticket message. Everything
else is acknowledged and dropped here, before it costs a database write;
bots are dropped whoever they are, so our own posts never echo.
"""

from __future__ import annotations

from typing import Any

# A person's message (file_share: with files; thread_broadcast: "also send to channel").
PERSON_SUBTYPES = frozenset({"", "file_share", "thread_broadcast"})


def skip_reason(event: dict[str, Any]) -> str | None:
    """Why an event is not an agent's thread message, or None when it may be."""
    if event.get("type") != "message":
        return f"event type {event.get('type')!r} is not handled"
    if event.get("bot_id") or event.get("bot_profile") or event.get("subtype") == "bot_message":
        return "a bot's message"
    subtype = event.get("subtype") or ""
    if subtype not in PERSON_SUBTYPES:
        return f"message subtype {subtype!r} is not handled"
    thread_ts = event.get("thread_ts")
    if not thread_ts or thread_ts == event.get("ts"):
        return "not a reply in a thread"
    if not event.get("user") or not event.get("channel"):
        return "no user or channel"
    return None
