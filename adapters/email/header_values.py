"""Decoding the header values the inbound parser exposes, within a CPU budget.

Values arrive raw (folded, RFC 2047 still encoded, 8-bit bytes surrogate-
escaped) as the ``email`` package stores them. Short values are decoded by
``email.policy.default``'s header registry (its classes built once:
``gateway.mail_policy``), the most faithful decoder the stdlib has, but
also slow and quadratic on some inputs (about 1 s for a 100 KiB ``To:``,
0.7 s for 8 KiB of quotes), so a value longer than
``POLICY_PARSE_LIMIT`` takes the cheaper compat32 path
(``email.header.decode_header``, ``email.utils.getaddresses``) instead.
Every function here may raise on hostile input; the parser calls them under a
guard. Message-IDs are never handed to the policy (Python 3.11 raises
``IndexError`` on Outlook-style ids such as ``<[abc]@host>``): they are cut
from the raw text.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from adapters.email.charsets import clean_text
from gateway.inbound.message import Address
from gateway.mail_policy import ATEXT, DOT_ATOM
from gateway.mail_policy import DEFAULT as DEFAULT_POLICY

POLICY_PARSE_LIMIT = 2 * 1024

_FOLD = re.compile(r"\r\n|\r|\n")
_WHITESPACE = re.compile(r"\s+")
_BRACKETED = re.compile(r"<([^<>]*)>")
_BARE_ID_SEPARATORS = re.compile(r"[\s,;]+")


def unfold(value: str) -> str:
    return _FOLD.sub("", value)


def raw_first(msg: Message, name: str) -> str | None:
    """The first raw value of header ``name`` (case-insensitive), untouched by any policy."""
    wanted = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == wanted:
            return value if isinstance(value, str) else str(value)
    return None


def decode_text(name: str, value: str) -> str:
    """An unstructured (or any) header value as display text, RFC 2047 decoded."""
    flat = unfold(value)
    if len(flat) <= POLICY_PARSE_LIMIT:
        try:
            return clean_text(str(DEFAULT_POLICY.header_fetch_parse(name, flat))).strip()
        except Exception:  # noqa: S110 -- the compat32 path below is the fallback
            pass
    try:
        return clean_text(str(make_header(decode_header(flat)))).strip()
    except Exception:
        return clean_text(flat).strip()


# The common shapes, read without the policy's parser (which costs ~0.2 ms a
# header): ``addr``, ``Name <addr>``, ``"Name" <addr>``, comma-separated,
# printable ASCII, no comments, groups, escapes or encoded words. The policy
# reads these the same way (tests/unit/test_parsing.py compares the two).
_SIMPLE_MAILBOX = re.compile(
    rf'[ \t]*(?:(?P<bare>{DOT_ATOM}@{DOT_ATOM})|(?:"(?P<quoted>[ -!#-\[\]-~]*)"'
    rf"|(?P<phrase>{ATEXT}+(?: {ATEXT}+)*))? *<(?P<angle>{DOT_ATOM}@{DOT_ATOM})>)[ \t]*"
)


def simple_mailboxes(flat: str) -> list[tuple[str, str]] | None:
    """(display name, addr-spec) of each mailbox of a simple address list; else None."""
    if "=?" in flat or not flat.isascii():
        return None
    pairs = []
    for item in flat.split(","):
        found = _SIMPLE_MAILBOX.fullmatch(item)
        if found is None:
            return None
        if found["bare"]:
            pairs.append(("", found["bare"]))
        else:
            pairs.append((found["quoted"] or found["phrase"] or "", found["angle"]))
    return pairs


def decode_addresses(name: str, value: str) -> list[Address]:
    """Mailboxes of an address header; addr-specs lower-cased, groups flattened."""
    flat = unfold(value)
    pairs = simple_mailboxes(flat)
    if pairs is None and len(flat) <= POLICY_PARSE_LIMIT:
        try:
            header = DEFAULT_POLICY.header_fetch_parse(name, flat)
            pairs = [(a.display_name, a.addr_spec) for a in header.addresses]
        except Exception:
            pairs = None
    if not pairs:  # the strict parser gave up: try the forgiving one
        pairs = [(decode_text("subject", n) if n else "", a) for n, a in getaddresses([flat])]
    found: list[Address] = []
    for display, spec in pairs:
        email = clean_text(spec).strip().strip("<>").strip().lower()
        if email and email != "@":
            found.append(Address(email=email, name=clean_text(display or "").strip()))
    return found


def decode_date(value: str) -> datetime | None:
    """An aware datetime (UTC when the header has no zone), or None when unparseable."""
    try:
        when = parsedate_to_datetime(_WHITESPACE.sub(" ", unfold(value)).strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def message_ids(value: str) -> list[str]:
    """``<id@host>`` tokens of a Message-ID/In-Reply-To/References value, in order.

    Angle brackets are kept; whitespace inside an id is dropped; without any
    brackets, whitespace/comma separated tokens containing ``@`` count.
    """
    text = clean_text(unfold(value))
    ids = [_WHITESPACE.sub("", found) for found in _BRACKETED.findall(text)]
    if not any(ids):
        ids = [tok.strip("<>") for tok in _BARE_ID_SEPARATORS.split(text) if "@" in tok]
    unique: list[str] = []
    for found in ids:
        token = f"<{found}>"
        if found and token not in unique:
            unique.append(token)
    return unique


def message_id(value: str) -> str | None:
    """The one id of a Message-ID header; a bracket-less token without ``@`` is accepted."""
    ids = message_ids(value)
    if ids:
        return ids[0]
    bare = clean_text(unfold(value)).strip().strip("<>").strip()
    return f"<{bare}>" if bare and not _WHITESPACE.search(bare) else None
