"""The ticket status workflow and the priority scale, as data.

Routing table of statuses (anything not listed is an invalid transition):

    new      → open, pending, on_hold, solved, closed   (initial only)
    open     → pending, on_hold, solved, closed
    pending  → open, on_hold, solved, closed
    on_hold  → open, pending, solved, closed
    solved   → open, closed
    closed   → (none: a customer's reply opens a follow-up ticket)
"""

from __future__ import annotations

from gateway.errors import InvalidTransition

STATUSES: tuple[str, ...] = ("new", "open", "pending", "on_hold", "solved", "closed")

TRANSITIONS: dict[str, frozenset[str]] = {
    "new": frozenset({"open", "pending", "on_hold", "solved", "closed"}),
    "open": frozenset({"pending", "on_hold", "solved", "closed"}),
    "pending": frozenset({"open", "on_hold", "solved", "closed"}),
    "on_hold": frozenset({"open", "pending", "solved", "closed"}),
    "solved": frozenset({"open", "closed"}),
    "closed": frozenset(),
}

# In order of severity; the index is what the database stores and sorts by.
PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "urgent")
DEFAULT_PRIORITY = "normal"
PRIORITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(PRIORITIES)}
STATUS_RANK: dict[str, int] = {name: rank for rank, name in enumerate(STATUSES)}

CHANNELS: tuple[str, ...] = ("email", "slack", "api", "web")


def check_transition(current: str, target: str) -> None:
    """Raise InvalidTransition unless ``current → target`` is allowed."""
    if target == current:
        return
    if target not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "none"
        raise InvalidTransition(
            f"a ticket cannot go from {current} to {target} (allowed: {allowed})",
            data={"from": current, "to": target, "allowed": sorted(TRANSITIONS.get(current, ()))},
        )


def priority_name(rank: int) -> str:
    return PRIORITIES[rank]
