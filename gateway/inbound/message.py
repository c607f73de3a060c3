"""The normalised form of an inbound email, produced by the parser.

Everything here is already decoded: header values are ``str`` (RFC 2047
decoded), addresses are lower-cased ``addr-spec``s, bodies are text. The
parser never raises: what it could not decode is noted in ``defects`` and,
past a safety cap, the message is ``quarantined`` with the reason (the raw
bytes stay stored either way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Address:
    email: str
    name: str = ""


@dataclass
class InboundAttachment:
    filename: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str | None = None


@dataclass
class DeliveryReport:
    """What a DSN (RFC 3464 ``multipart/report; report-type=delivery-status``) says."""

    original_message_id: str | None
    recipients: list[str] = field(default_factory=list)
    action: str | None = None
    status: str | None = None
    diagnostic: str | None = None


@dataclass
class InboundMessage:
    message_id: str | None = None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    subject: str = ""
    sender: Address | None = None
    reply_to: list[Address] = field(default_factory=list)
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    date: datetime | None = None
    # Selected headers, lower-cased names, decoded values (first occurrence).
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    html: str | None = None
    attachments: list[InboundAttachment] = field(default_factory=list)
    report: DeliveryReport | None = None
    defects: list[str] = field(default_factory=list)
    quarantined: str | None = None
