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
from gateway.mail_policy import DOT_ATOM, SMTP

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
    """The message as bytes (CRLF line ends) for the relay."""
    when = format_datetime(utcnow())
    return _compose_plain(mail, when) or _compose(mail, when)


# The plain case, written directly: headers of printable ASCII words (folded
# at spaces), names of letters, digits and single spaces, addresses
# dot-atoms, a 7-bit text body with short lines, nothing else. ``email`` would write the
# same bytes (tests/unit/test_compose.py compares the two on generated
# values), at a tenth of the cost: it parses each header it is given again.
_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_ADDRESS = re.compile(rf"{DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_PLAIN_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*")
_MESSAGE_ID = re.compile(r"<[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+>")
_MAX_LINE = 78


def _plain_address(name: str, addr: str) -> str | None:
    name = clean(name, 100)
    if not _ADDRESS.fullmatch(addr) or (name and not _NAME.fullmatch(name)):
        return None
    return f"{name} <{addr}>" if name else addr


def _address_lines(name: str, mailbox: str | None) -> list[str] | None:
    """One mailbox: on the header's line if it fits, else whole on the next (as email folds)."""
    if mailbox is None:
        return None
    if len(name) + 2 + len(mailbox) <= _MAX_LINE:
        return [f"{name}: {mailbox}"]
    if 1 + len(mailbox) <= _MAX_LINE:
        return [f"{name}:", f" {mailbox}"]
    return None  # email would fold inside the mailbox


def _folded(name: str, words: list[str]) -> list[str] | None:
    """Header lines of ``words``, folded as ``email`` folds: the value on the header's line
    if it fits, else whole on the next line if it fits there, else as many words a line
    as fit in 78 characters."""
    whole = " ".join(words)
    if len(name) + 2 + len(whole) <= _MAX_LINE:
        return [f"{name}: {whole}"]
    if 1 + len(whole) <= _MAX_LINE:
        return [f"{name}:", f" {whole}"]
    lines, line = [], f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) <= _MAX_LINE:
            line = f"{line} {word}"
        elif line == f"{name}:" or len(word) + 1 > _MAX_LINE:
            return None  # a word that does not fit a line: email encodes or splits it
        else:
            lines.append(line)
            line = f" {word}"
    lines.append(line)
    return lines


def _compose_plain(mail: Outgoing, when: str) -> bytes | None:
    if mail.html or mail.attachments:
        return None
    subject = clean(mail.subject, 900)
    if "=?" in subject or not _PLAIN_VALUE.fullmatch(subject):
        return None
    if not _MESSAGE_ID.fullmatch(mail.message_id):
        return None
    lines: list[str] = []
    for name, mailbox in (
        ("From", _plain_address(mail.from_name, mail.from_address)),
        ("To", _plain_address(mail.to_name, mail.to_address)),
        ("Reply-To", _plain_address(mail.from_name, mail.reply_to)),
    ):
        folded = _address_lines(name, mailbox)
        if folded is None:
            return None
        lines += folded
    headers: list[tuple[str, list[str]]] = [
        ("Subject", subject.split(" ")),
        ("Date", [when]),
        ("Message-ID", [mail.message_id]),
    ]
    if mail.in_reply_to:
        if not _PLAIN_VALUE.fullmatch(mail.in_reply_to) or "=?" in mail.in_reply_to:
            return None
        headers.append(("In-Reply-To", mail.in_reply_to.split(" ")))
    refs = [r for r in mail.references if r][-MAX_REFERENCES:]
    if refs:
        joined = " ".join(refs)
        if not _PLAIN_VALUE.fullmatch(joined) or "=?" in joined:
            return None
        headers.append(("References", joined.split(" ")))
    if mail.automatic:
        headers += [("Auto-Submitted", ["auto-replied"]), ("X-Auto-Response-Suppress", ["All"])]
    for name, words in headers:
        folded = _folded(name, words)
        if folded is None:
            return None
        lines += folded
    try:
        body = (mail.text or "").encode("ascii").splitlines()
    except UnicodeEncodeError:
        return None
    if any(len(line) > _MAX_LINE for line in body):
        return None
    lines += [
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: 7bit",
        "MIME-Version: 1.0",
        "",
    ]
    return "\r\n".join(lines).encode("ascii") + b"\r\n" + b"\r\n".join(body) + b"\r\n"


def _compose(mail: Outgoing, when: str) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(mail.from_name, mail.from_address)
    msg["To"] = _address(mail.to_name, mail.to_address)
    msg["Reply-To"] = _address(mail.from_name, mail.reply_to)
    msg["Subject"] = clean(mail.subject, 900)
    msg["Date"] = when
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
