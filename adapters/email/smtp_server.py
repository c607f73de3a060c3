"""The inbound SMTP edge: check recipients, store durably, answer.

Routing of replies:

    RCPT to the support address or support+<tag>   250 2.1.5
    RCPT to anything else                          550 5.1.1
    DATA over SUPPORTGATE_MAX_MESSAGE_BYTES        552 5.3.4 (SIZE is advertised)
    DATA stored and committed                      250 2.0.0 (only then)
    DATA could not be stored (database, disk)      451 4.3.0 (the sender retries)
    any other internal failure                     451 4.3.0, never a 5xx

Nothing is parsed here: the raw bytes are stored with ``accept_raw`` and the
ingest task does the rest after the sender has its answer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.db import Database
from gateway.inbound.addresses import SupportAddress
from gateway.inbound.store import accept_raw

log = logging.getLogger("supportgate.smtp")

MAX_RECIPIENTS = 100


class GatewaySMTP(SMTP):
    """aiosmtpd's server with the enhanced status code the contract names for 552."""

    async def push(self, status: str) -> None:
        if status.startswith("552 "):
            limit = self.data_size_limit or 0
            status = f"552 5.3.4 Message size exceeds the limit of {limit} bytes"
        await super().push(status)


class InboundHandler:
    def __init__(
        self,
        db: Database,
        support: SupportAddress,
        *,
        on_stored: Callable[[str], None] | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.db = db
        self.support = support
        self.on_stored = on_stored
        self.executor = executor or ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="smtp-store"
        )
        self.in_flight = 0

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        ours, _ = self.support.match(address)
        if not ours:
            return f"550 5.1.1 <{address[:200]}>: no such recipient here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _store(self, raw: bytes, mail_from: str, recipients: list[str]) -> str:
        with self.db.transaction() as session:
            mail = accept_raw(
                session, raw, source="smtp", envelope_from=mail_from, recipients=recipients
            )
            mail_id = str(mail.id)
        return mail_id

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            mail_id = await loop.run_in_executor(
                self.executor,
                self._store,
                bytes(raw),
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
            )
        except Exception:
            log.exception("could not store an inbound message; answered 451")
            return "451 4.3.0 Could not store the message now; please try again later"
        finally:
            self.in_flight -= 1
        log.info("stored inbound message", extra={"inbound_id": mail_id, "size": len(raw)})
        if self.on_stored is not None:
            try:
                self.on_stored(mail_id)
            except Exception:  # the sweeper picks it up; the message is safe
                log.exception("could not signal a stored message")
        return f"250 2.0.0 OK queued as {mail_id}"

    async def handle_exception(self, error: Exception) -> str:
        log.exception("SMTP session error", exc_info=error)
        return "451 4.3.0 Temporary failure; please try again later"


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert or not key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve_smtp(
    db: Database,
    support: SupportAddress,
    host: str,
    port: int,
    *,
    max_message_bytes: int,
    stop: asyncio.Event,
    tls: ssl.SSLContext | None = None,
    on_stored: Callable[[str], None] | None = None,
    ready: Callable[[int], Any] | None = None,
    drain_seconds: float = 30.0,
) -> None:
    """Serve until ``stop`` is set, then let stored-in-flight messages finish."""
    handler = InboundHandler(db, support, on_stored=on_stored)
    loop = asyncio.get_running_loop()

    def factory() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            data_size_limit=max_message_bytes,
            enable_SMTPUTF8=True,
            hostname=support.domain or "localhost",
            ident="Supportgate ESMTP",
            tls_context=tls,
            timeout=300,
            loop=loop,
        )

    server = await loop.create_server(factory, host=host, port=port)
    bound = server.sockets[0].getsockname()[1]
    log.info("SMTP listening", extra={"host": host, "port": bound})
    if ready is not None:
        ready(bound)
    try:
        await stop.wait()
    finally:
        server.close()
        deadline = loop.time() + drain_seconds
        while handler.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        handler.executor.shutdown(wait=True)
        log.info("SMTP stopped")
