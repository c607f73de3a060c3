"""The durable first step of inbound mail: store the raw bytes.

``accept_raw`` only stores; it does not parse (parsing belongs to the ingest
step, after the sender has its ``250``). The caller commits, then answers.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.events import enqueue
from gateway.inbound.models import InboundMail


def accept_raw(
    session: Session,
    raw: bytes,
    *,
    source: str,
    envelope_from: str = "",
    recipients: list[str] | None = None,
    source_ref: str | None = None,
) -> InboundMail:
    """Store one received message and queue its ingestion (same transaction).

    ``source_ref`` identifies the message at its source (e.g. an IMAP mailbox,
    UIDVALIDITY and UID); storing the same ref twice returns the first row.
    """
    if source_ref is not None:
        existing = session.scalar(select(InboundMail).where(InboundMail.source_ref == source_ref))
        if existing is not None:
            return existing
    mail = InboundMail(
        source=source,
        source_ref=source_ref,
        envelope_from=envelope_from,
        recipients=list(recipients or []),
        raw=raw,
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        state="received",
    )
    session.add(mail)
    session.flush()
    enqueue(session, "inbound.ingest", str(mail.id), {"inbound_id": str(mail.id)})
    return mail
