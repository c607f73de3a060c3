"""Building outgoing messages from clean values.

Headers are set from values we own (ticket title, names, our addresses),
stripped of CR/LF and other controls first, never copied from inbound
headers: no header injection through a title or a display name.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime

from gateway.db import utcnow
from gateway.mail_policy import SMTP

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
MAX_REFERENCES = 20


def clean(value: str, limit: int = 200) -> str:
    """A header-safe one-line version of ``value``."""
    return _CONTROL.sub(" ", value).strip()[:limit]


def make_message_id(domain: str) -> str:
    return f"<{uuid.uuid4().hex}@{clean(domain, 200) or 'localhost'}>"


def subject_for(title: str, number: int) -> str:
    return f"Re: {clean(title, 250)} [#{number}]"


def _address(name: str, addr: str) -> HeaderAddress:
    local, _, domain = addr.rpartition("@")
    return HeaderAddress(display_name=clean(name, 100), username=local, domain=domain)


@dataclass
class Outgoing:
    from_name: str
    from_address: str
    to_name: str
    to_address: str
    reply_to: str
    subject: str
    message_id: str
    text: str
    html: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    automatic: bool = False
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)


def compose(mail: Outgoing) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(mail.from_name, mail.from_address)
    msg["To"] = _address(mail.to_name, mail.to_address)
    msg["Reply-To"] = _address(mail.from_name, mail.reply_to)
    msg["Subject"] = clean(mail.subject, 900)
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = mail.message_id
    if mail.in_reply_to:
        msg["In-Reply-To"] = mail.in_reply_to
    refs = [r for r in mail.references if r][-MAX_REFERENCES:]
    if refs:
        msg["References"] = " ".join(refs)
    if mail.automatic:
        # RFC 3834: answers of ours must not be answered automatically, and
        # Exchange is asked not to send its out-of-office replies to them.
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(mail.text or "")
    if mail.html:
        msg.add_alternative(mail.html, subtype="html")
    for filename, content_type, data in mail.attachments:
        maintype, _, subtype = content_type.partition("/")
        msg.add_attachment(
            data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=clean(filename, 200) or "attachment",
        )
    return msg.as_bytes()
