"""Reading a request body straight from gunicorn's socket.

gunicorn hands the application its body through three layers: ``Body`` (the
``wsgi.input``, which re-buffers through a BytesIO 1 KiB at a time), a
``LengthReader`` (limits the reads to the Content-Length, again through a
BytesIO) and a ``SocketUnreader`` (8 KiB ``recv``s, with a BytesIO of bytes
read ahead). For a 25 MiB upload that is over 3,000 ``recv`` calls and every
byte copied several times in Python, which kept the request's thread busy.

:func:`socket_reader` gives a ``read(size)`` that returns the same bytes:
first what gunicorn's unreader already holds (the start of the body, read
along with the headers), then ``recv(size, MSG_WAITALL)`` on the connection's
socket, never past the Content-Length, so a pipelined next request stays for
gunicorn. The ``LengthReader``'s remaining length is kept equal to what is
left of the body after every read, so whatever the application leaves unread
(a refused upload, an epilogue) is drained by gunicorn itself before the next
request on the connection, exactly as without this reader.

A client that closes the connection early, resets it, or sends nothing for
``IDLE_TIMEOUT`` seconds ends the read with :class:`BodyIncomplete` (a
ValueError: the upload is refused, never stored short); the connection is not
read from again (the remaining length is set to 0 and, after a timeout or an
error, the socket's read side is shut down), so gunicorn answers and closes it.

Only a plain blocking TCP socket under gunicorn's ``LengthReader`` whose
buffers are untouched qualifies; anything else (other servers, chunked
bodies, TLS, a body already partly read) gets ``None`` and the caller keeps
its usual reader.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
from collections.abc import Callable
from typing import Any

# Set to False to compare with gunicorn's own reader (bench/attachments.py).
ENABLED = True
# Seconds a client may send nothing while its body is read (per read; any
# progress restarts it).
IDLE_TIMEOUT = 60.0

_NO_TIMEOUT = struct.pack("ll", 0, 0)


class BodyIncomplete(ValueError):
    """The connection ended, failed or went quiet before the whole body came."""


def socket_reader(wsgi_input: Any, content_length: int | None) -> Callable[[int], bytes] | None:
    """A ``read(size)`` for the rest of the body straight from gunicorn's socket,
    or None when ``wsgi_input`` is not an untouched gunicorn body of
    ``content_length`` bytes on a plain blocking socket."""
    if not ENABLED or content_length is None:
        return None
    try:
        from gunicorn.http.body import Body, LengthReader
        from gunicorn.http.unreader import SocketUnreader
    except ImportError:  # pragma: no cover - gunicorn is a dependency
        return None
    if type(wsgi_input) is not Body:
        return None
    reader = wsgi_input.reader
    if type(reader) is not LengthReader or reader.length != content_length:
        return None
    if wsgi_input.buf.tell() != 0:  # Body holds bytes read ahead
        return None
    unreader = reader.unreader
    if type(unreader) is not SocketUnreader:
        return None
    sock = unreader.sock
    # TLS sockets refuse recv flags; a socket with a Python timeout is
    # non-blocking underneath, where MSG_WAITALL does not wait.
    if type(sock) is not socket.socket or sock.gettimeout() is not None:
        return None
    if sock.type != socket.SOCK_STREAM:
        return None
    return _SocketBody(reader, unreader, sock, content_length).read


class _SocketBody:
    """The rest of one body: gunicorn's read-ahead, then the socket."""

    def __init__(self, reader: Any, unreader: Any, sock: socket.socket, total: int) -> None:
        self._reader = reader  # gunicorn's LengthReader: ``length`` is what is left
        self._unreader = unreader
        self._sock = sock
        self._total = total
        self._timeout = struct.pack("ll", int(IDLE_TIMEOUT), int(IDLE_TIMEOUT % 1 * 1e6))

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the body (fewer at times), b"" at its end;
        raises BodyIncomplete when the client stops short."""
        left = self._reader.length
        if size <= 0 or left <= 0:
            return b""
        want = min(size, left)
        ahead = self._read_ahead(want)
        if ahead:
            self._reader.length = left - len(ahead)
            return ahead
        sock = self._sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self._timeout)
            try:
                data = sock.recv(want, socket.MSG_WAITALL)
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _NO_TIMEOUT)
        except OSError as exc:
            # Timed out (EAGAIN), reset, or closed under us: read no more.
            self._give_up(shutdown=True)
            got = self._total - left
            if isinstance(exc, BlockingIOError):
                why = f"nothing for {IDLE_TIMEOUT:g} s"
            else:
                why = exc.strerror or type(exc).__name__
            raise BodyIncomplete(
                f"the body stopped after {got} of {self._total} bytes ({why})"
            ) from None
        if not data:
            self._give_up(shutdown=False)
            raise BodyIncomplete(
                f"the client closed the connection after {self._total - left} "
                f"of {self._total} bytes of the body"
            )
        # A short read (a signal, or the idle timeout after some bytes) is
        # returned as it is; the next read goes on from there.
        self._reader.length = left - len(data)
        return data

    def _read_ahead(self, want: int) -> bytes:
        """Up to ``want`` bytes gunicorn's unreader holds, put back beyond that."""
        unreader = self._unreader
        # Unreader keeps exactly its pending bytes in ``buf`` (a new BytesIO
        # after every read); ``read()`` returns them all without a recv.
        if not unreader.buf.seek(0, io.SEEK_END):
            return b""
        data: bytes = unreader.read()
        if len(data) > want:
            unreader.unread(data[want:])
            data = data[:want]
        return data

    def _give_up(self, *, shutdown: bool) -> None:
        # gunicorn must not try to drain the rest of this body, and the
        # connection must not carry another request.
        self._reader.length = 0
        if shutdown:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)
