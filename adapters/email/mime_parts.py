"""Per-part details of inbound attachments: safe file names, Content-IDs, encodings."""

from __future__ import annotations

import binascii
import mimetypes
import quopri
import re
from email.message import Message

from adapters.email.charsets import clean_text
from adapters.email.header_values import decode_text

MAX_FILENAME = 255

# The stdlib's built-in table only: /etc/mime.types differs between hosts.
_MIME_TYPES = mimetypes.MimeTypes()
_EXTENSIONS = {
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/delivery-status": ".txt",
    "message/global-delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "text/rfc822-headers": ".txt",
    "message/global-headers": ".txt",
    "application/ms-tnef": ".dat",
    "application/octet-stream": ".bin",
}
_MESSAGE_TYPES = {"message/rfc822", "message/global"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def content_id(part: Message) -> str | None:
    """The Content-ID without angle brackets, or None."""
    value = part.get("content-id")
    if not isinstance(value, str):
        return None
    cid = clean_text(" ".join(value.split())).strip().strip("<>").strip()
    return cid or None


def filename(part: Message, content_type: str, index: int) -> str:
    """A file name safe to store and offer for download.

    RFC 2231 and RFC 2047 decoded, any directory part removed, control
    characters dropped, at most ``MAX_FILENAME`` characters; missing or empty
    it becomes ``attachment-<index><ext>`` (``winmail.dat`` for TNEF).
    Forwarded messages always end in ``.eml``.
    """
    try:
        name = part.get_filename()
    except Exception:  # a broken RFC 2231 charset: fall back to a generated name
        name = None
    if isinstance(name, str) and "=?" in name:
        name = decode_text("subject", name)
    name = _safe(clean_text(name)) if isinstance(name, str) else ""
    if not name:
        if content_type == "application/ms-tnef":
            return "winmail.dat"
        return f"attachment-{index}{_extension(content_type)}"
    if content_type in _MESSAGE_TYPES and not name.lower().endswith(".eml"):
        name = _shorten(name, MAX_FILENAME - 4) + ".eml"
    return name


def decode_transfer(part: Message, data: bytes) -> bytes | None:
    """``data`` decoded per the part's base64/quoted-printable encoding; None when identity."""
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64":
        try:
            return binascii.a2b_base64(b"".join(data.split()))
        except binascii.Error:
            return None
    if encoding == "quoted-printable":
        return quopri.decodestring(data)
    return None


def _extension(content_type: str) -> str:
    known = _EXTENSIONS.get(content_type)
    if known:
        return known
    return _MIME_TYPES.guess_extension(content_type, strict=False) or ".bin"


def _safe(name: str) -> str:
    name = _CONTROL.sub("", re.split(r"[/\\]", name)[-1]).strip()
    if name in {".", ".."}:
        return ""
    return _shorten(name, MAX_FILENAME)


def _shorten(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and len(ext) < 16:
        return stem[: limit - len(ext) - 1] + "." + ext
    return name[:limit]
