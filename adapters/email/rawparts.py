"""The original bytes of ``message/*`` parts, cut out of the raw message.

The ``email`` package parses a forwarded ``message/rfc822`` into a Message
object and forgets its bytes; regenerating them refolds headers and rewrites
line endings, so the attachment would not have the sender's ``sha256``. Here
the raw message is split again along the boundaries the parser found (the
same rules as ``email.feedparser``: a delimiter line is ``--boundary``, the
line break before it belongs to it), and a span is only trusted when the
piece count matches the parsed tree. Otherwise the caller falls back to
regenerating.
"""

from __future__ import annotations

import re
from email.message import Message

# email.feedparser's idea of a header line (and of the unix "From " line).
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")


def raw_bodies(raw: bytes, root: Message, wanted: set[int]) -> dict[int, bytes]:
    """Map ``id(part)`` to the raw body bytes for each part in ``wanted`` that could be located.

    Only multipart containers are descended into, never ``message/*`` parts.
    """
    found: dict[int, bytes] = {}
    stack: list[tuple[bytes, Message]] = [(raw, root)]
    while stack and len(found) < len(wanted):
        data, part = stack.pop()
        body = body_of(data)
        if id(part) in wanted:
            found[id(part)] = body
            continue
        if part.get_content_maintype() != "multipart" or not part.is_multipart():
            continue
        children = [c for c in part.get_payload() if isinstance(c, Message)]
        boundary = part.get_boundary()
        if not boundary:
            continue
        pieces = _split(body, boundary.encode("utf-8", "surrogateescape"))
        if len(pieces) == len(children):
            stack.extend(zip(pieces, children, strict=True))
    return found


def body_of(entity: bytes) -> bytes:
    """What follows the header block of a MIME entity (feedparser's rules)."""
    position = 0
    for line in entity.splitlines(keepends=True):
        if not _HEADER_LINE.match(line):
            if not line.strip(b"\r\n"):
                return entity[position + len(line) :]
            return entity[position:]
        position += len(line)
    return b""


def _split(body: bytes, boundary: bytes) -> list[bytes]:
    delimiter = re.compile(re.escape(b"--" + boundary) + rb"(--)?[ \t]*(?:\r\n|\r|\n)?$")
    pieces: list[bytes] = []
    current: list[bytes] | None = None
    for line in body.splitlines(keepends=True):
        match = delimiter.match(line)
        if match is None:
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            pieces.append(_drop_final_eol(b"".join(current)))
        if match.group(1):
            return pieces
        current = []
    if current is not None:
        pieces.append(b"".join(current))
    return pieces


def _drop_final_eol(piece: bytes) -> bytes:
    if piece.endswith(b"\r\n"):
        return piece[:-2]
    if piece.endswith((b"\n", b"\r")):
        return piece[:-1]
    return piece
