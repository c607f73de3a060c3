"""``SUPPORTGATE_IMAP_URL``: which mailbox the IMAP poller reads, and how.

    imap://USER:PASSWORD@HOST[:PORT][/MAILBOX][?move_to=FOLDER&poll_interval=SECONDS&idle=BOOL]
    imaps://...                       (TLS from the first byte; the default port is 993)

``imap://`` is plain IMAP on port 143 (no STARTTLS): meant for a server on the
same host or network. User, password and mailbox names are percent-decoded
(``%40`` for ``@``, ``%2F`` for ``/``). The mailbox defaults to ``INBOX``.
Query options:

==================  ========  ====================================================
``move_to``         unset     move processed mail to this folder (created when
                              missing) instead of flagging it where it is
``poll_interval``   ``30``    seconds between checks when the server has no IDLE
``idle``            ``true``  ``false`` polls even when the server offers IDLE
==================  ========  ====================================================

Anything else is refused with :class:`InvalidImapUrl`, a ``ConfigurationError``
(one line for the CLI) that is also a ``ValueError``; its message names the
variable and never contains the password.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.errors import ConfigurationError

VARIABLE = "SUPPORTGATE_IMAP_URL"
DEFAULT_PORTS = {"imap": 143, "imaps": 993}
DEFAULT_POLL_INTERVAL = 30.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Longer keys are hashed so that "imap:<key>:<uidvalidity>:<uid>" fits
# inbound_mail.source_ref (200 characters).
_MAX_KEY = 120


class InvalidImapUrl(ConfigurationError, ValueError):
    """``SUPPORTGATE_IMAP_URL`` cannot be used; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid configuration: {VARIABLE}: {reason}")


@dataclass(frozen=True)
class ImapConfig:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    tls: bool = False
    mailbox: str = "INBOX"
    move_to: str | None = None
    poll_interval: float = DEFAULT_POLL_INTERVAL
    idle: bool = True

    @property
    def key(self) -> str:
        """Stable name of the mailbox: the checkpoint key and the ``source_ref`` prefix."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        key = f"{self.user}@{host}:{self.port}/{self.mailbox}"
        if len(key) > _MAX_KEY:
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return key

    def redacted(self) -> str:
        """The URL without the password, for logs."""
        scheme = "imaps" if self.tls else "imap"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{self.user}@{host}:{self.port}/{self.mailbox}"


def parse_imap_url(url: str | None) -> ImapConfig:
    """Read ``SUPPORTGATE_IMAP_URL``; raise :class:`InvalidImapUrl` with the reason."""
    if not url or not url.strip():
        raise InvalidImapUrl("not set (expected imap://user:password@host:port/MAILBOX)")
    if _CONTROL.search(url):
        raise InvalidImapUrl("contains control characters")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidImapUrl("must start with imap:// or imaps://")
    if not parts.hostname:
        raise InvalidImapUrl("no host (expected imap://user:password@host:port/MAILBOX)")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise InvalidImapUrl("the port must be a number from 1 to 65535") from None
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if not user or parts.password is None:
        raise InvalidImapUrl("user and password are required (imap://user:password@host/...)")
    if parts.fragment:
        raise InvalidImapUrl("a #fragment is not allowed")
    mailbox = _mailbox(unquote(parts.path[1:] if parts.path.startswith("/") else parts.path))
    options = _options(parts.query)
    move_to = options.get("move_to")
    if move_to is not None:
        move_to = _mailbox(move_to, what="move_to")
        if move_to == mailbox:
            raise InvalidImapUrl("move_to must name another folder than the polled mailbox")
    return ImapConfig(
        host=parts.hostname,
        port=port,
        user=user,
        password=password,
        tls=scheme == "imaps",
        mailbox=mailbox,
        move_to=move_to,
        poll_interval=_poll_interval(options.get("poll_interval")),
        idle=_boolean(options.get("idle"), "idle", default=True),
    )


def _options(query: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidImapUrl("malformed query string") from None
    unknown = sorted(set(parsed) - {"move_to", "poll_interval", "idle"})
    if unknown:
        raise InvalidImapUrl(f"unknown option {unknown[0]!r} (known: move_to, poll_interval, idle)")
    return {name: values[-1] for name, values in parsed.items()}


def _mailbox(name: str, what: str = "the mailbox") -> str:
    name = name.strip()
    if not name:
        if what == "the mailbox":
            return "INBOX"
        raise InvalidImapUrl(f"{what} must not be empty")
    if _CONTROL.search(name):
        raise InvalidImapUrl(f"{what} contains control characters")
    # INBOX is case-insensitive (RFC 3501 5.1): one spelling, one checkpoint.
    return "INBOX" if name.upper() == "INBOX" else name


def _poll_interval(value: str | None) -> float:
    if value is None:
        return DEFAULT_POLL_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0.1 <= seconds <= 86400:
        raise InvalidImapUrl("poll_interval must be a number of seconds from 0.1 to 86400")
    return seconds


def _boolean(value: str | None, name: str, *, default: bool) -> bool:
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidImapUrl(f"{name} must be true or false")


def encode_mailbox(name: str) -> str:
    """A mailbox name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = base64.b64encode("".join(pending).encode("utf-16-be")).decode()
            out.append("&" + data.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    encoded = "".join(out).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{encoded}"'
