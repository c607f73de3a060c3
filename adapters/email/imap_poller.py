"""The IMAP poller: mail that lands in a mailbox becomes inbound mail.

Each message is one unit of work, in this order, each step durable before the next:

1. ``UID FETCH <uid> (BODY.PEEK[])`` (PEEK: the server must not mark it ``\\Seen``
   before we hold it);
2. :func:`~gateway.inbound.store.accept_raw` in one committed transaction, with
   ``source_ref = "imap:<mailbox key>:<UIDVALIDITY>:<UID>"``;
3. mark it processed: add :data:`PROCESSED_KEYWORD` (``\\Seen`` on servers that
   refuse keywords) and, with ``?move_to=``, move it there (``UID MOVE``, or
   ``COPY`` + ``\\Deleted`` + ``EXPUNGE`` without the MOVE extension);
4. advance the checkpoint (``imap_checkpoints``: UIDVALIDITY and last UID).

A crash between 2 and 3 fetches the message again next time and its
``source_ref`` finds the stored row; a crash between 3 and 4 is covered by the
flag. Which messages are new: UIDs above the checkpoint that do not carry the
processed flag. The flag is what protects us when UIDVALIDITY changes (a
mailbox restored or recreated: the same messages come back under new UIDs, so
new ``source_ref`` values): the checkpoint restarts at UID 0 and only unflagged
messages are taken. During that catch-up the checkpoint is written once, at the
end, so an interrupted catch-up starts over (still skipping flagged mail).

Why a keyword: ``$SupportgateProcessed`` is ours alone, whereas ``\\Seen`` also
changes when a person reads the mailbox. Servers whose ``PERMANENTFLAGS`` lack
``\\*`` cannot store keywords; there we set ``\\Seen`` and honour it only
during a UIDVALIDITY catch-up, so mail a person opened before we polled is
still imported in normal operation.

Waiting: ``IDLE`` where offered (re-issued every :data:`IDLE_RENEW` seconds, below
the 29 minutes of RFC 2177), otherwise ``NOOP`` every ``poll_interval``. Any
failure (network, protocol, database) is logged and retried after an
exponential backoff with jitter; :meth:`ImapPoller.run` returns only once its
stop event is set, after finishing the message in hand and logging out.

The run loop handles every error a session can raise: ``ImapError`` and its
subclasses (see :mod:`adapters.email.imap_client`), ``OSError``,
``TimeoutError``, ``aioimaplib.AioImapException`` and SQLAlchemy's errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import ssl
import threading
from collections.abc import Awaitable
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from typing import Any, TypeVar

from aioimaplib import STOP_WAIT_SERVER_PUSH, Abort, AioImapException
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from adapters.email.imap_client import (
    COMMAND_TIMEOUT,
    CommandRefused,
    Connection,
    ConnectionLost,
    ImapError,
    Selected,
    fetched_body,
    open_session,
    response_text,
    search_uids,
)
from adapters.email.imap_url import ImapConfig, InvalidImapUrl, encode_mailbox, parse_imap_url
from gateway.config import Settings
from gateway.db import Database
from gateway.errors import ConfigurationError, ServiceUnavailable
from gateway.inbound.models import ImapCheckpoint, InboundMail
from gateway.inbound.store import accept_raw

__all__ = [
    "PROCESSED_KEYWORD",
    "Backoff",
    "CommandRefused",
    "ConnectionLost",
    "ImapConfig",
    "ImapError",
    "ImapPoller",
    "InvalidImapUrl",
    "check_connection",
    "parse_imap_url",
    "poll_once",
    "run",
]

log = logging.getLogger("supportgate.imap")
T = TypeVar("T")

PROCESSED_KEYWORD = "$SupportgateProcessed"
IDLE_RENEW = 24 * 60.0


class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of
    ``min(maximum, initial * 2**n)`` seconds, so that many pollers do not
    reconnect in step after an outage."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0) -> None:
        self.initial, self.maximum = initial, maximum
        self.attempt = 0
        self._random = secrets.SystemRandom()

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return self._random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class ImapPoller:
    """Reads one mailbox into ``inbound_mail`` (see the module docstring)."""

    def __init__(
        self,
        config: ImapConfig,
        database: Database,
        *,
        timeout: float = COMMAND_TIMEOUT,
        idle_renew: float = IDLE_RENEW,
        backoff: Backoff | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config, self.database = config, database
        self.timeout, self.idle_renew = timeout, idle_renew
        self.backoff = backoff or Backoff()
        self.ssl_context = ssl_context
        self.failures = 0  # sessions that ended in an error (for tests and metrics)
        self.stored = 0
        self.idle_refused = False

    # -- public ---------------------------------------------------------------

    async def poll_once(self, stop: asyncio.Event | None = None) -> int:
        """Connect, take every new message, log out; return how many were newly stored."""
        async with open_session(self.config, self.timeout, self.ssl_context) as conn:
            return await self._drain(conn, stop)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; errors are logged and retried, never raised."""
        if not self.config.tls and self.config.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "imap without TLS: the password crosses the network in clear",
                extra={"mailbox": self.config.key},
            )
        while not stop.is_set():
            try:
                async with open_session(self.config, self.timeout, self.ssl_context) as conn:
                    while not stop.is_set():
                        conn.client.protocol.new_mail.clear()
                        await self._drain(conn, stop)
                        self.backoff.reset()
                        # Announced while we worked: IDLE would not announce it again.
                        if not stop.is_set() and not conn.client.protocol.new_mail.is_set():
                            await self._wait_for_mail(conn, stop)
            except Exception as exc:
                self.failures += 1
                delay = self.backoff.next_delay()
                log.warning(
                    "imap session failed; reconnecting",
                    extra={
                        "mailbox": self.config.key,
                        "error": f"{type(exc).__name__}: {exc}",
                        "retry_in": round(delay, 2),
                        "failures": self.failures,
                    },
                )
                await _wait_event(stop, delay)
        log.info("imap poller stopped", extra={"mailbox": self.config.key})

    # -- taking messages ------------------------------------------------------

    async def _drain(self, conn: Connection, stop: asyncio.Event | None) -> int:
        """Take every new message in UID order; return how many were newly stored."""
        box = conn.selected
        checkpoint = self._load_checkpoint()
        catch_up = checkpoint is not None and checkpoint[0] != box.uidvalidity
        last = 0 if checkpoint is None or catch_up else checkpoint[1]
        if checkpoint is None:
            self._save_checkpoint(box.uidvalidity, 0)
        elif catch_up:
            log.warning(
                "imap UIDVALIDITY changed; rescanning unflagged mail",
                extra={
                    "mailbox": self.config.key,
                    "old_uidvalidity": checkpoint[0],
                    "uidvalidity": box.uidvalidity,
                    "old_last_uid": checkpoint[1],
                },
            )
        criteria = ["UID", f"{last + 1}:*"]
        if box.keywords:
            criteria += ["UNKEYWORD", PROCESSED_KEYWORD]
        elif catch_up:
            criteria.append("UNSEEN")
        response = await conn.ok(conn.client.uid_search(*criteria, charset=None), "UID SEARCH")
        # "n:*" always matches the highest UID, even below n: filter.
        uids = sorted(uid for uid in search_uids(response) if uid > last)
        stored, interrupted = 0, False
        for uid in uids:
            if stop is not None and stop.is_set():
                interrupted = True
                break
            stored += await _finish_even_if_cancelled(self._take(conn, uid, save=not catch_up))
        if catch_up and not interrupted:
            self._save_checkpoint(box.uidvalidity, max(uids, default=0))
        return stored

    async def _take(self, conn: Connection, uid: int, *, save: bool) -> int:
        response = await conn.ok(
            conn.client.uid("fetch", str(uid), "(BODY.PEEK[])"), f"UID FETCH {uid}", unlimited=True
        )
        raw = fetched_body(response, uid)
        new = 0
        if raw is None:
            log.info(
                "imap message vanished before fetch", extra={"mailbox": self.config.key, "uid": uid}
            )
        else:
            new = self._store(conn.selected.uidvalidity, uid, raw)
            await self._mark_processed(conn, uid)
        if save:
            self._save_checkpoint(conn.selected.uidvalidity, uid)
        return new

    def _store(self, uidvalidity: int, uid: int, raw: bytes) -> int:
        ref = f"imap:{self.config.key}:{uidvalidity}:{uid}"
        envelope_from, recipients = envelope_from_headers(raw)
        found = None
        try:
            with self.database.transaction() as session:
                found = session.scalar(select(InboundMail.id).where(InboundMail.source_ref == ref))
                if found is None:
                    found = accept_raw(
                        session,
                        raw,
                        source="imap",
                        envelope_from=envelope_from,
                        recipients=recipients,
                        source_ref=ref,
                    )
                    new = 1
                else:
                    new = 0
        except IntegrityError:
            # Another poller on the same mailbox stored it between our check and insert.
            new = 0
        log.info(
            "imap message stored" if new else "imap message already stored",
            extra={
                "mailbox": self.config.key,
                "uid": uid,
                "uidvalidity": uidvalidity,
                "inbound_id": str(found) if found else None,
                "size": len(raw),
            },
        )
        self.stored += new
        return new

    async def _mark_processed(self, conn: Connection, uid: int) -> None:
        """Flag, then move if asked. A refusal is logged, not fatal: the mail is
        stored and the checkpoint keeps us from taking it again."""
        client, target = conn.client, self.config.move_to
        flag = processed_flag(conn.selected)
        response = await conn.call(
            client.uid("store", str(uid), "+FLAGS.SILENT", f"({flag})"), "UID STORE"
        )
        if response.result != "OK":
            log.warning(
                "imap could not flag processed mail",
                extra={"mailbox": self.config.key, "uid": uid, "error": response_text(response)},
            )
        if not target:
            return
        dest = encode_mailbox(target)
        if conn.has("MOVE"):
            response = await conn.call(client.uid("move", str(uid), dest), "UID MOVE")
        else:
            response = await conn.call(client.uid("copy", str(uid), dest), "UID COPY")
            if response.result == "OK":
                await conn.call(
                    client.uid("store", str(uid), "+FLAGS.SILENT", "(\\Deleted)"), "UID STORE"
                )
                # Without UIDPLUS, EXPUNGE also removes mail others marked \Deleted.
                expunge = (
                    client.uid("expunge", str(uid)) if conn.has("UIDPLUS") else client.expunge()
                )
                response = await conn.call(expunge, "EXPUNGE")
        if response.result != "OK":
            log.warning(
                "imap could not move processed mail",
                extra={
                    "mailbox": self.config.key,
                    "uid": uid,
                    "move_to": target,
                    "error": response_text(response),
                },
            )

    # -- waiting --------------------------------------------------------------

    async def _wait_for_mail(self, conn: Connection, stop: asyncio.Event) -> None:
        if self.config.idle and conn.has("IDLE") and not self.idle_refused:
            try:
                await self._idle(conn, stop)
                return
            except Abort as exc:
                # Advertised but refused (seen behind some proxies): poll from now on.
                self.idle_refused = True
                log.warning(
                    "imap IDLE refused; polling instead",
                    extra={"mailbox": self.config.key, "error": str(exc)},
                )
        await _wait_event(stop, self.config.poll_interval, conn.lost)
        if conn.lost.is_set():
            raise ConnectionLost("connection closed while waiting")
        if not stop.is_set():
            await conn.ok(conn.client.noop(), "NOOP")

    async def _idle(self, conn: Connection, stop: asyncio.Event) -> None:
        """IDLE until new mail, the renewal time or ``stop``; then DONE."""
        client, queue = conn.client, conn.client.protocol.idle_queue
        while not queue.empty():
            queue.get_nowait()
        # aioimaplib's own renewal timer is set beyond ours: we end IDLE ourselves.
        idle = await conn.call(client.idle_start(timeout=self.idle_renew + 60), "IDLE")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_renew
        while not stop.is_set() and loop.time() < deadline:
            push = await _next_push(queue, stop, conn.lost, deadline - loop.time())
            if conn.lost.is_set():
                raise ConnectionLost("connection closed during IDLE")
            # "* OK Still here" keep-alives are not news; EXISTS is.
            if (
                push is None
                or push is STOP_WAIT_SERVER_PUSH
                or any(b"EXISTS" in line for line in push if isinstance(line, bytes))
            ):
                break
        client.idle_done()
        response = await conn.call(idle, "IDLE DONE")
        if response.result != "OK":
            raise ImapError(f"IDLE ended with {response.result}: {response_text(response)}")

    # -- checkpoint -----------------------------------------------------------

    def _load_checkpoint(self) -> tuple[int, int] | None:
        with self.database.transaction() as session:
            row = session.get(ImapCheckpoint, self.config.key)
            return None if row is None else (_from_db(row.uidvalidity), _from_db(row.last_uid))

    def _save_checkpoint(self, uidvalidity: int, last_uid: int) -> None:
        with self.database.transaction() as session:
            row = session.get(ImapCheckpoint, self.config.key)
            if row is None:
                session.add(
                    ImapCheckpoint(
                        mailbox=self.config.key,
                        uidvalidity=_to_db(uidvalidity),
                        last_uid=_to_db(last_uid),
                    )
                )
            elif _from_db(row.uidvalidity) != uidvalidity:
                row.uidvalidity, row.last_uid = _to_db(uidvalidity), _to_db(last_uid)
            else:
                row.last_uid = _to_db(max(last_uid, _from_db(row.last_uid)))


# -- entry points -------------------------------------------------------------


async def poll_once(settings: Settings, database: Database | None = None) -> int:
    """Take what is in the mailbox now; return how many messages were newly stored.

    Raises :class:`InvalidImapUrl` for a bad URL, and the session's error when
    the server or the database fails (no retry here).
    """
    config = parse_imap_url(settings.imap_url)
    db = database or Database(settings.effective_database_url, pool_size=1)
    try:
        return await ImapPoller(config, db).poll_once()
    finally:
        if database is None:
            db.dispose()


def run(
    settings: Settings,
    stop_event: threading.Event | None = None,
    *,
    database: Database | None = None,
) -> None:
    """Poll ``SUPPORTGATE_IMAP_URL`` until ``stop_event`` is set (or SIGTERM/SIGINT
    when called from the main thread). Raises :class:`InvalidImapUrl` up front;
    after that, errors are logged and retried."""
    config = parse_imap_url(settings.imap_url)
    db = database or Database(settings.effective_database_url, pool_size=1)
    try:
        asyncio.run(_run(ImapPoller(config, db), stop_event))
    finally:
        if database is None:
            db.dispose()


async def _run(poller: ImapPoller, stop_event: threading.Event | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                signals.append(sig)
    watcher = asyncio.ensure_future(_watch(stop_event, stop)) if stop_event else None
    try:
        await poller.run(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def _watch(stop_event: threading.Event, stop: asyncio.Event) -> None:
    while not stop_event.is_set() and not stop.is_set():
        await asyncio.sleep(0.1)
    stop.set()


def check_connection(settings: Settings, timeout: float = 10.0) -> None:
    """Fail fast for the CLI: log in and select once.

    Raises :class:`InvalidImapUrl`, :class:`ConfigurationError` (login or mailbox
    refused) or :class:`ServiceUnavailable` (unreachable, silent or hanging up),
    each with one line and never the password.
    """
    config = parse_imap_url(settings.imap_url)

    async def probe() -> None:
        async with open_session(config, timeout):
            pass

    try:
        asyncio.run(probe())
    except CommandRefused as exc:
        raise ConfigurationError(f"invalid configuration: SUPPORTGATE_IMAP_URL: {exc}") from None
    except (ImapError, OSError, TimeoutError, AioImapException) as exc:
        raise ServiceUnavailable(
            f"IMAP server unreachable at {config.redacted()}: {exc or type(exc).__name__}"
        ) from None


# -- helpers --------------------------------------------------------------------


async def _finish_even_if_cancelled(awaitable: Awaitable[T]) -> T:
    """Cancellation stops us after the message in hand, never halfway through it."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def _wait_event(stop: asyncio.Event, seconds: float, *others: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, *others)]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _next_push(
    queue: asyncio.Queue[Any], stop: asyncio.Event, lost: asyncio.Event, seconds: float
) -> Any:
    get = asyncio.ensure_future(queue.get())
    waiters = {get, asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())}
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return get.result() if get in done else None


def processed_flag(selected: Selected) -> str:
    return PROCESSED_KEYWORD if selected.keywords else "\\Seen"


def envelope_from_headers(raw: bytes) -> tuple[str, list[str]]:
    """The envelope as the delivering server recorded it: ``Return-Path`` (``<>`` is
    the null sender of bounces; without the header, the ``From`` address) and
    ``Delivered-To`` / ``X-Original-To`` as recipients."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return_path = headers.get("Return-Path")
    if return_path is not None:
        sender = parseaddr(str(return_path))[1]
    else:
        sender = parseaddr(str(headers.get("From", "")))[1]
    values = [
        str(v) for name in ("Delivered-To", "X-Original-To") for v in headers.get_all(name) or []
    ]
    recipients = list(dict.fromkeys(a.lower() for _, a in getaddresses(values) if "@" in a))
    return sender, recipients


def _to_db(number: int) -> int:
    # UIDs and UIDVALIDITY are unsigned 32-bit; the columns are signed INTEGER.
    return number - 2**32 if number >= 2**31 else number


def _from_db(number: int) -> int:
    return number + 2**32 if number < 0 else number
