"""The wire side of the IMAP poller: one aioimaplib session, and what its answers mean.

:func:`open_session` connects, logs in and selects the mailbox, and always
logs out and closes the socket on the way out. Every command goes through
:meth:`Connection.call`, which fails fast when the socket closes or the
server stops answering, instead of waiting on aioimaplib forever.

    ImapError            the server did not answer in time
    ├── CommandRefused   it answered NO or BAD to a command we cannot do without
    └── ConnectionLost   the socket closed under us
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from aioimaplib import IMAP4, IMAP4ClientProtocol, Response, quoted

from adapters.email.imap_url import ImapConfig, encode_mailbox

log = logging.getLogger("supportgate.imap")
T = TypeVar("T")

COMMAND_TIMEOUT = 30.0
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_PERMANENTFLAGS = re.compile(rb"\[PERMANENTFLAGS \(([^)]*)\)\]")
_FETCH_BODY = re.compile(rb"^\d+ FETCH \((?P<items>.*)BODY\[\] \{(?P<size>\d+)\}$")
_FETCH_UID = re.compile(rb"UID (\d+)")
_EXISTS = re.compile(rb"(?:^|\n)\* \d+ EXISTS\r\n")


class ImapError(Exception):
    """The IMAP session cannot go on."""


class CommandRefused(ImapError):
    """NO or BAD to LOGIN, SELECT, SEARCH, FETCH...; the message quotes the server."""


class ConnectionLost(ImapError):
    """The connection closed under us."""


class ImapProtocol(IMAP4ClientProtocol):
    """aioimaplib's protocol, plus a flag raised by every ``* n EXISTS``.

    aioimaplib drops untagged EXISTS that arrive during SEARCH, FETCH or STORE,
    and the server announces new mail only once: mail arriving while we work
    would otherwise wait for the next IDLE wake-up. A match inside a message
    body only costs one more SEARCH.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, conn_lost_cb: Any) -> None:
        super().__init__(loop, conn_lost_cb)
        self.new_mail = asyncio.Event()
        self._tail = b""

    def data_received(self, d: bytes) -> None:
        if _EXISTS.search(self._tail + d):
            self.new_mail.set()
        self._tail = d[d.rfind(b"\n") + 1 :][-40:]  # an unfinished line, if any
        super().data_received(d)


class ImapClient(IMAP4):
    """aioimaplib's client speaking through :class:`ImapProtocol`."""

    protocol: ImapProtocol

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Any = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        running = loop or asyncio.get_running_loop()
        self.protocol = ImapProtocol(running, conn_lost_cb)
        self._client_task = running.create_task(
            running.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


@dataclass
class Selected:
    """What SELECT told us about the mailbox."""

    uidvalidity: int
    keywords: bool  # PERMANENTFLAGS has \*: the server keeps keywords we invent
    read_only: bool


class Connection:
    """One logged-in client with the mailbox selected; notices when the socket closes."""

    def __init__(self, client: ImapClient, lost: asyncio.Event, timeout: float) -> None:
        self.client, self.lost, self.timeout = client, lost, timeout
        self.greeted = False
        self.selected = Selected(0, False, False)

    def has(self, capability: str) -> bool:
        return self.client.has_capability(capability)

    async def call(
        self,
        awaitable: Awaitable[T],
        what: str,
        *,
        timeout: float | None = None,
        unlimited: bool = False,
    ) -> T:
        """Await one command, failing fast when the connection drops or stalls.

        ``unlimited`` is for FETCH: a large message may take long, and aioimaplib
        already gives up when the data stops flowing for ``timeout`` seconds.
        """
        limit = None if unlimited else (timeout or self.timeout)
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if task in done:
            return task.result()
        if self.lost.is_set():
            raise ConnectionLost(f"connection closed during {what}")
        raise ImapError(f"no answer to {what} within {limit} s")

    async def ok(self, awaitable: Awaitable[Response], what: str, **kw: Any) -> Response:
        response = await self.call(awaitable, what, **kw)
        if response.result != "OK":
            raise CommandRefused(f"{what} refused: {response_text(response)}")
        return response


@contextlib.asynccontextmanager
async def open_session(
    config: ImapConfig, timeout: float = COMMAND_TIMEOUT, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Connection]:
    """Connect, LOGIN and SELECT; LOGOUT and close the socket on the way out."""
    lost = asyncio.Event()
    context = (ssl_context or ssl.create_default_context()) if config.tls else None
    client = ImapClient(
        config.host,
        config.port,
        timeout=timeout,
        conn_lost_cb=lambda _exc: lost.set(),
        ssl_context=context,
    )
    conn = Connection(client, lost, timeout)
    try:
        # Not awaited directly: aioimaplib's own timeout can deadlock on a server that
        # greets and then never answers CAPABILITY (its state lock stays taken).
        await conn.call(client.wait_hello_from_server(), "greeting")
        conn.greeted = True
        await _login_and_select(conn, config)
        yield conn
    finally:
        await _close(conn)


async def _login_and_select(conn: Connection, config: ImapConfig) -> None:
    client = conn.client
    response = await conn.ok(client.login(quoted(config.user), config.password), "LOGIN")
    if not any(b"CAPABILITY" in line for line in response.lines if isinstance(line, bytes)):
        await conn.call(client.protocol.capability(), "CAPABILITY")
    if config.move_to:
        # NO [ALREADYEXISTS] is the usual answer; a real problem shows at the first move.
        await conn.call(client.create(encode_mailbox(config.move_to)), "CREATE")
    response = await conn.ok(client.select(encode_mailbox(config.mailbox)), "SELECT")
    conn.selected = parse_select(response)
    if conn.selected.read_only:
        log.warning(
            "imap mailbox is read-only: processed mail cannot be flagged or moved",
            extra={"mailbox": config.key},
        )
    log.info(
        "imap connected",
        extra={
            "mailbox": config.key,
            "uidvalidity": conn.selected.uidvalidity,
            "idle": config.idle and conn.has("IDLE"),
            "keywords": conn.selected.keywords,
        },
    )


async def _close(conn: Connection) -> None:
    client = conn.client
    try:
        if conn.greeted and not conn.lost.is_set():
            await conn.call(client.logout(), "LOGOUT", timeout=5)
    except Exception as exc:  # the session is over either way
        log.debug("imap logout failed", extra={"error": repr(exc)})
    finally:
        # aioimaplib keeps its connect and greeting tasks private; a dead session
        # must not leave them waiting forever.
        pending = (
            client._client_task,
            *getattr(client.protocol, "tasks", ()),
            *getattr(client, "tasks", ()),
        )
        for task in pending:
            if not task.done():
                task.cancel()
        transport = client.protocol.transport
        if transport is not None:
            transport.close()


def parse_select(response: Response) -> Selected:
    text = b"\n".join(line for line in response.lines if isinstance(line, bytes))
    match = _UIDVALIDITY.search(text)
    if match is None:
        raise CommandRefused("SELECT gave no UIDVALIDITY; cannot keep a checkpoint")
    flags = _PERMANENTFLAGS.search(text)
    return Selected(
        uidvalidity=int(match.group(1)),
        keywords=flags is not None and b"\\*" in flags.group(1).split(),
        read_only=b"[READ-ONLY]" in text.upper(),
    )


def search_uids(response: Response) -> list[int]:
    uids: list[int] = []
    for line in response.lines[:-1]:
        if isinstance(line, bytes):
            uids.extend(int(token) for token in line.split() if token.isdigit())
    return uids


def fetched_body(response: Response, uid: int) -> bytes | None:
    """The BODY[] literal of ``uid`` in a UID FETCH answer; None when it is gone."""
    lines = response.lines
    for index, line in enumerate(lines[:-1]):
        if not isinstance(line, bytes):
            continue
        match = _FETCH_BODY.match(line)
        if match is None or not isinstance(lines[index + 1], bytearray):
            continue
        trailer = lines[index + 2] if index + 2 < len(lines) else b""
        found = _FETCH_UID.search(match.group("items") + b" " + bytes(trailer))
        if found is None or int(found.group(1)) == uid:
            return bytes(lines[index + 1])
    return None


def response_text(response: Response) -> str:
    last = response.lines[-1] if response.lines else b""
    return bytes(last).decode(errors="replace").strip() or response.result
