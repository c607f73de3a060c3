"""Opaque keyset cursors.

A cursor is the sort key of the last row returned, base64url-encoded JSON
tagged with what it belongs to; a cursor from another listing or sort is a
422, never a silent restart.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from gateway.errors import ValidationFailed


def encode_cursor(kind: str, *values: Any) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, kinds: tuple[str, ...]) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValidationFailed.on("cursor", "not a cursor this API issued") from None
    if not isinstance(values, list) or not values or values[0] not in kinds:
        raise ValidationFailed.on("cursor", "not a cursor for this listing and sort")
    return values
