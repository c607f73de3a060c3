"""Reading an RFC 3464 delivery status notification (a bounce).

A DSN is ``multipart/report; report-type=delivery-status`` with three parts:
a human-readable explanation, ``message/delivery-status`` (one block of
per-message fields, then one block per recipient), and the original message
(``message/rfc822``) or just its headers (``text/rfc822-headers``). The
RFC 6533 ``global`` variants are read the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from adapters.email.charsets import clean_text, decode_lenient
from adapters.email.header_values import message_id, raw_first, unfold
from gateway.inbound.message import DeliveryReport

REPORT_TYPES = {"delivery-status", "global-delivery-status"}
_STATUS_TYPES = {"message/delivery-status", "message/global-delivery-status"}
_MESSAGE_TYPES = {"message/rfc822", "message/global"}
_HEADERS_TYPES = {"text/rfc822-headers", "message/global-headers"}
_TYPED_VALUE = re.compile(r"^\s*[A-Za-z0-9-]+\s*;\s*")
_FIELD = re.compile(r"^([!-9;-~]+)\s*:\s*(.*)$")


def is_delivery_report(part: Message) -> bool:
    """``multipart/report`` of a delivery-status type, or (leniently) holding a status part."""
    if part.get_content_type() != "multipart/report":
        return False
    if str(part.get_param("report-type", "")).lower() in REPORT_TYPES:
        return True
    children = part.get_payload()
    return isinstance(children, list) and any(
        isinstance(c, Message) and c.get_content_type() in _STATUS_TYPES for c in children
    )


def delivery_report(report: Message) -> DeliveryReport:
    """Fill a DeliveryReport from a ``multipart/report`` part; fields it lacks stay None."""
    children = report.get_payload()
    parts = [c for c in children if isinstance(c, Message)] if isinstance(children, list) else []
    result = DeliveryReport(original_message_id=None)
    for part in parts:
        ctype = part.get_content_type()
        if ctype in _STATUS_TYPES and not result.recipients:
            _read_status(part, result)
        elif ctype in _MESSAGE_TYPES or ctype in _HEADERS_TYPES:
            result.original_message_id = result.original_message_id or _original_id(part)
    return result


def _read_status(part: Message, result: DeliveryReport) -> None:
    blocks = [b for b in _field_blocks(part) if "final-recipient" in b or "action" in b]
    for block in blocks:
        recipient = block.get("final-recipient") or block.get("original-recipient")
        if recipient:
            result.recipients.append(_TYPED_VALUE.sub("", recipient).strip("<> ").lower())
    chosen = next((b for b in blocks if b.get("action", "").lower() == "failed"), None)
    chosen = chosen or (blocks[0] if blocks else {})
    result.action = chosen.get("action", "").lower() or None
    result.status = chosen.get("status") or None
    diagnostic = chosen.get("diagnostic-code")
    result.diagnostic = _TYPED_VALUE.sub("", diagnostic) if diagnostic else None


def _field_blocks(part: Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):  # email.feedparser already split the blocks
        return [_fields(block.raw_items()) for block in payload if isinstance(block, Message)]
    data = part.get_payload(decode=True)
    text = decode_lenient(data) if isinstance(data, bytes) else ""
    blocks = re.split(r"\r?\n(?:[ \t]*\r?\n)+", text)
    return [_fields(_parse_lines(block)) for block in blocks]


def _parse_lines(block: str) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
        elif match := _FIELD.match(line):
            fields.append((match.group(1), match.group(2)))
    return fields


def _fields(items: Iterable[tuple[str, object]]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in items:
        key = str(name).lower()
        if key not in fields:
            fields[key] = " ".join(clean_text(unfold(str(value))).split())
    return fields


def _original_id(part: Message) -> str | None:
    payload = part.get_payload()
    if isinstance(payload, list):
        original = next((m for m in payload if isinstance(m, Message)), None)
    else:
        data = part.get_payload(decode=True)
        headers = data if isinstance(data, bytes) else b""
        original = BytesHeaderParser(policy=compat32).parsebytes(headers)
    if original is None:
        return None
    value = raw_first(original, "message-id")
    return message_id(value) if value else None
