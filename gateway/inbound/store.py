"""The durable first step of inbound mail: store the raw bytes.

``accept_raw`` only stores; it does not parse (parsing belongs to the ingest
step, after the sender has its ``250``). The caller commits, then answers.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from gateway.db import new_id, utcnow
from gateway.events import enqueue_many
from gateway.inbound.models import InboundMail

_INBOUND = cast(Table, InboundMail.__table__)


def accept_raw(
    session: Session,
    raw: bytes,
    *,
    source: str,
    envelope_from: str = "",
    recipients: list[str] | None = None,
    source_ref: str | None = None,
) -> uuid.UUID:
    """Store one received message and queue its ingestion (same transaction); its row id.

    ``source_ref`` identifies the message at its source (e.g. an IMAP mailbox,
    UIDVALIDITY and UID); storing the same ref twice returns the first row's id.
    """
    if source_ref is not None:
        existing = session.scalar(
            select(InboundMail.id).where(InboundMail.source_ref == source_ref)
        )
        if existing is not None:
            return existing
    [mail_id] = accept_many(
        session, [Received(raw, envelope_from, list(recipients or []), source_ref)], source=source
    )
    return uuid.UUID(mail_id)


@dataclass(frozen=True)
class Received:
    """One message as the SMTP edge received it, not yet stored."""

    raw: bytes
    envelope_from: str = ""
    recipients: list[str] = field(default_factory=list)
    source_ref: str | None = None


def accept_many(session: Session, received: Sequence[Received], *, source: str) -> list[str]:
    """Store several received messages and queue their ingestion, in ``session``.

    Bulk INSERTs, so a batch that commits together (the SMTP edge's group
    commit) costs one commit and one fsync for all.
    Returns the new rows' ids in the order given.
    """
    now = utcnow()
    rows = [
        {
            "id": new_id(),
            "received_at": now,
            "source": source,
            "source_ref": item.source_ref,
            "envelope_from": item.envelope_from,
            "recipients": list(item.recipients),
            "raw": item.raw,
            "size": len(item.raw),
            "sha256": hashlib.sha256(item.raw).hexdigest(),
            "state": "received",
            "attempts": 0,
        }
        for item in received
    ]
    if not rows:
        return []
    session.execute(_INBOUND.insert(), rows)
    ids = [str(row["id"]) for row in rows]
    enqueue_many(session, [("inbound.ingest", i, {"inbound_id": i}) for i in ids])
    return ids
