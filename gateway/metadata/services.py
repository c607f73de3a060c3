"""Ticket metadata and custom field values."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.errors import FieldError, ValidationFailed
from gateway.metadata.models import CustomFieldDefinition, TicketMetadata


def metadata_for(
    session: Session, ticket_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, dict[str, str]]:
    ids = list(ticket_ids)
    result: dict[uuid.UUID, dict[str, str]] = defaultdict(dict)
    if not ids:
        return result
    rows = session.execute(
        select(TicketMetadata.ticket_id, TicketMetadata.key, TicketMetadata.value)
        .where(TicketMetadata.ticket_id.in_(ids))
        .order_by(TicketMetadata.key)
    )
    for ticket_id, key, value in rows:
        result[ticket_id][key] = value
    return result


def set_metadata(session: Session, ticket_id: uuid.UUID, key: str, value: str) -> str | None:
    """Set one key; returns the previous value (None when new)."""
    row = session.scalar(
        select(TicketMetadata).where(
            TicketMetadata.ticket_id == ticket_id, TicketMetadata.key == key
        )
    )
    if row is None:
        session.add(TicketMetadata(ticket_id=ticket_id, key=key, value=value))
        return None
    old = row.value
    row.value = value
    return old


def _coerce(defn: CustomFieldDefinition, value: Any) -> Any:
    kind = defn.type
    if kind == "text":
        if not isinstance(value, str) or len(value) > 4096:
            raise ValueError("must be text of at most 4096 characters")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind == "date":
        if not isinstance(value, str):
            raise ValueError("must be a date (YYYY-MM-DD)")
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise ValueError("must be a date (YYYY-MM-DD)") from None
    if kind == "enum":
        if value not in (defn.options or []):
            raise ValueError(f"must be one of {', '.join(map(str, defn.options or []))}")
        return value
    raise ValueError(f"field has an unknown type {kind}")


def validate_custom_fields(
    session: Session, current: dict[str, Any], changes: dict[str, Any], *, creating: bool
) -> dict[str, Any]:
    """Merge ``changes`` into ``current`` and check the result against the definitions.

    A ``None`` value removes the key. Raises ValidationFailed naming each bad field.
    """
    definitions = {d.key: d for d in session.scalars(select(CustomFieldDefinition))}
    merged = dict(current)
    errors: list[FieldError] = []
    for key, value in changes.items():
        field = f"custom_fields.{key}"
        defn = definitions.get(key)
        if defn is None:
            errors.append(FieldError(field, "no custom field with this key is defined"))
            continue
        if value is None:
            merged.pop(key, None)
            continue
        try:
            merged[key] = _coerce(defn, value)
        except ValueError as exc:
            errors.append(FieldError(field, str(exc)))
    if creating or changes:
        for key, defn in definitions.items():
            if defn.required and key not in merged:
                errors.append(FieldError(f"custom_fields.{key}", "is required"))
    if errors:
        raise ValidationFailed("some custom fields are invalid", errors=errors)
    return merged
