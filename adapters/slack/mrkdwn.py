"""Slack's message markup to plain text (what a reply email carries)."""

from __future__ import annotations

import html
import re

_ANGLE = re.compile(r"<([^<>]*)>")


def _token(match: re.Match[str]) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return "@" + (label or target[1:])
    if target.startswith("#"):
        return "#" + (label or target[1:])
    if target.startswith("!"):
        # <!here>, <!channel>, <!subteam^ID|@team>, <!date^…|fallback>
        return label or "@" + target[1:].split("^", 1)[0]
    address = target.removeprefix("mailto:")
    if label and label not in (target, address):
        return f"{label} ({address})"
    return address


def to_plain(text: str) -> str:
    """``<@U1|ann>`` → ``@ann``, ``<https://x|docs>`` → ``docs (https://x)``,
    ``&lt;`` → ``<``; everything else is kept as the agent typed it."""
    return html.unescape(_ANGLE.sub(_token, text or ""))
