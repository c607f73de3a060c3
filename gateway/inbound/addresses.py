"""Our addresses: the support address and per-ticket reply addresses.

A reply address is ``<local>+t<number>-<tag>@<domain>``. The tag is 128 bits
of HMAC-SHA256 over the recipient's address, keyed with the ticket's own
random ``reply_token``: it names the ticket *and* who it was sent to, so a
reply address that leaks to someone else does not let them post.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.tickets.models import Ticket

TAG_RE = re.compile(r"^t(\d{1,10})-([0-9a-f]{32})$")


@dataclass(frozen=True)
class SupportAddress:
    local: str
    domain: str

    @classmethod
    def parse(cls, address: str) -> SupportAddress:
        local, _, domain = address.strip().lower().rpartition("@")
        return cls(local, domain)

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"

    def match(self, recipient: str) -> tuple[bool, str | None]:
        """(is one of ours, the +tag or None) for an envelope or header address."""
        local, _, domain = recipient.strip().strip("<>").lower().rpartition("@")
        if domain != self.domain:
            return False, None
        if local == self.local:
            return True, None
        base, plus, tag = local.partition("+")
        if plus and base == self.local and tag:
            return True, tag
        return False, None


def reply_tag(ticket: Ticket, recipient: str) -> str:
    digest = hmac.new(
        ticket.reply_token.encode(), recipient.strip().lower().encode(), hashlib.sha256
    ).hexdigest()
    return f"t{ticket.number}-{digest[:32]}"


def reply_address(support: SupportAddress, ticket: Ticket, recipient: str) -> str:
    return f"{support.local}+{reply_tag(ticket, recipient)}@{support.domain}"


def ticket_for_tag(session: Session, tag: str, sender: str) -> Ticket | None:
    """The ticket a +tag names, when it was issued to ``sender``; else None."""
    found = TAG_RE.match(tag)
    if not found:
        return None
    ticket = session.scalar(select(Ticket).where(Ticket.number == int(found.group(1))))
    if ticket is None:
        return None
    expected = reply_tag(ticket, sender).split("-", 1)[1]
    return ticket if hmac.compare_digest(expected, found.group(2)) else None
