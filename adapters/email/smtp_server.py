"""The inbound SMTP edge: check recipients, store durably, answer.

Routing of replies:

    RCPT to the support address or support+<tag>   250 2.1.5
    RCPT to anything else                          550 5.1.1
    DATA over SUPPORTGATE_MAX_MESSAGE_BYTES        552 5.3.4 (SIZE is advertised)
    DATA stored and committed                      250 2.0.0 (only then)
    DATA could not be stored (database, disk)      451 4.3.0 (the sender retries)
    any other internal failure                     451 4.3.0, never a 5xx

Nothing is parsed here: the raw bytes are stored with ``accept_many`` and the
ingest task does the rest after the sender has its answer.

Group commit: messages whose DATA ends while a batch is being stored wait
and go in the next batch, one transaction (and one fsync) for all of them;
each sender still gets its 250 only after the commit that holds its message.
With one client at a time every batch holds one message, so nothing waits
for company. A batch that fails is retried one message at a time, so one bad
message costs only its own sender a 451.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.db import Database
from gateway.inbound.addresses import SupportAddress
from gateway.inbound.store import Received, accept_many
from gateway.mail_policy import DOT_ATOM

log = logging.getLogger("supportgate.smtp")

MAX_RECIPIENTS = 100
MAX_BATCH = 64
MAX_BATCH_BYTES = 16 * 1024 * 1024


# ``<local@domain>`` with both halves ASCII dot-atoms (RFC 5321's common case), then the
# parameters after any spaces or tabs.
_PLAIN_PATH = re.compile(rf"<({DOT_ATOM}@{DOT_ATOM})>[ \t]*")


class GatewaySMTP(SMTP):
    """aiosmtpd's server with the enhanced status code the contract names for 552."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own, without the ``typing.Protocol`` class it defines on every MAIL
        and RCPT (4 % of this server's CPU under load); tests/unit compares the two.
        A plain ``<local@domain>`` is read by one regex (~1 µs, against ~40 µs for the
        stdlib's address parser, ~10 % of this server's CPU a message); anything else,
        or parameters that begin with a comment, goes to the parser.
        One difference: an address the stdlib parser trips over (``MAIL FROM:a@``
        raises ``IndexError``, ``<a@[>`` ``AttributeError``) is malformed (553), not an
        internal failure (451)."""
        if not arg:
            return "", ""
        plain = _PLAIN_PATH.match(arg)
        if plain is not None and not arg.startswith("(", plain.end()):
            addr, rest = plain.group(1), arg[plain.end() :]
        else:
            try:
                if arg.lstrip().startswith("<"):
                    address, rest = get_angle_addr(arg)
                else:
                    address, rest = get_addr_spec(arg)
                addr = address.addr_spec
            except (HeaderParseError, IndexError, AttributeError):
                return None, None
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    async def push(self, status: str) -> None:
        if status.startswith("552 "):
            limit = self.data_size_limit or 0
            status = f"552 5.3.4 Message size exceeds the limit of {limit} bytes"
        await super().push(status)


class GroupCommit:
    """Stores received messages in batches, each in one transaction (see the module doc)."""

    def __init__(
        self,
        db: Database,
        executor: ThreadPoolExecutor,
        *,
        max_batch: int = MAX_BATCH,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.db = db
        self.executor = executor
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.pending: list[tuple[Received, asyncio.Future[str]]] = []
        self.draining = False
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0

    async def store(self, item: Received) -> str:
        """The stored row's id, once its transaction has committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self.pending.append((item, future))
        if not self.draining:
            self.draining = True
            self._drainer = loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Received, asyncio.Future[str]]]:
        size, count = 0, 0
        for item, _ in self.pending:
            if count and (count >= self.max_batch or size + len(item.raw) > self.max_bytes):
                break
            size, count = size + len(item.raw), count + 1
        batch, self.pending = self.pending[:count], self.pending[count:]
        return batch

    def _write(self, items: list[Received]) -> list[str]:
        with self.db.transaction() as session:
            return accept_many(session, items, source="smtp")

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch = self._take()
                self.batches += 1
                try:
                    ids = await loop.run_in_executor(
                        self.executor, self._write, [item for item, _ in batch]
                    )
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0][1], error=exc)
                        continue
                    log.warning(
                        "could not store a batch of inbound messages; storing them one by one",
                        exc_info=True,
                    )
                    for item, future in batch:
                        try:
                            [one] = await loop.run_in_executor(self.executor, self._write, [item])
                        except Exception as error:
                            _settle(future, error=error)
                        else:
                            _settle(future, result=one)
                    continue
                for (_, future), mail_id in zip(batch, ids, strict=True):
                    _settle(future, result=mail_id)
        finally:
            self.draining = False


def _settle(
    future: asyncio.Future[str], *, result: str | None = None, error: BaseException | None = None
) -> None:
    if future.done():  # its sender went away; a stored message is still ingested
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


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
            max_workers=4, thread_name_prefix="smtp-store"
        )
        self.store = GroupCommit(db, self.executor)
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

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.in_flight += 1
        try:
            mail_id = await self.store.store(
                Received(bytes(raw), envelope.mail_from or "", list(envelope.rcpt_tos))
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
