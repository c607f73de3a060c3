"""A streaming ``multipart/form-data`` reader built for large file uploads.

Werkzeug's parser scans its buffer with regular expressions and tops out at a
few hundred MB/s; this one looks for the delimiter with ``bytes.find`` over
large reads and hands file data to its stream factory as the reads' own
immutable ``bytes`` (or memoryviews of them), so file data is never copied
between the socket reader and the file's ``write``. Memory stays at about two
reads whatever the file size.

Only what browsers and HTTP clients send is accepted (RFC 7578): parts with
``Content-Disposition: form-data; name=…`` (and ``filename=…`` for files);
everything malformed is :class:`MultipartError` (a ValueError), limits are
:class:`MultipartLimit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.http import parse_options_header

READ_SIZE = 1 << 20
MAX_PREAMBLE = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not valid multipart/form-data."""


class MultipartLimit(MultipartError):
    """A field, the headers or the number of parts is over its limit."""


class _Reader:
    def __init__(self, read: Callable[[int], bytes], size: int) -> None:
        self._read = read
        self.size = size
        self.buf = bytearray()
        self.eof = False

    def read(self) -> bytes:
        """The next read as ``bytes`` (empty at the end), past ``buf``."""
        if self.eof:
            return b""
        data = self._read(self.size)
        if not data:
            self.eof = True
            return b""
        return data if type(data) is bytes else bytes(data)

    def fill(self) -> bool:
        data = self.read()
        self.buf += data
        return bool(data)

    def until(self, marker: bytes, limit: int, what: str) -> bytes:
        """Everything before ``marker`` (consumed with it), at most ``limit`` bytes."""
        start = 0
        while True:
            found = self.buf.find(marker, start)
            if found > limit:
                raise MultipartLimit(f"{what} longer than {limit} bytes")
            if found >= 0:
                out = bytes(self.buf[:found])
                del self.buf[: found + len(marker)]
                return out
            if len(self.buf) > limit + len(marker):
                raise MultipartLimit(f"{what} longer than {limit} bytes")
            start = max(0, len(self.buf) - len(marker) + 1)
            if not self.fill():
                raise MultipartError(f"the body ends inside the {what}")

    def need(self, count: int) -> bytes:
        while len(self.buf) < count:
            if not self.fill():
                raise MultipartError("the body ends too early")
        return bytes(self.buf[:count])


def _headers(raw: bytes) -> Headers:
    headers = Headers()
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MultipartError(f"not a part header: {line[:80]!r}")
        headers.add(name.strip(), value.strip())
    return headers


def parse(
    read: Callable[[int], bytes],
    boundary: bytes,
    stream_factory: Callable[..., Any],
    *,
    max_field_bytes: int,
    max_parts: int,
    read_size: int = READ_SIZE,
) -> tuple[MultiDict[str, str], MultiDict[str, FileStorage]]:
    """Read a whole body; files go to ``stream_factory()`` objects (write/seek)."""
    if not boundary or len(boundary) > 200:  # RFC 2046 says 70; some clients exceed it
        raise MultipartError("missing or invalid boundary")
    reader = _Reader(read, read_size)
    delimiter = b"--" + boundary
    separator = b"\r\n" + delimiter
    fields: MultiDict[str, str] = MultiDict()
    files: MultiDict[str, FileStorage] = MultiDict()
    # The first delimiter may open the body directly or follow a preamble line.
    reader.until(delimiter, MAX_PREAMBLE, "preamble")
    parts = 0
    while True:
        after = reader.need(2)
        if after == b"--":
            return fields, files
        raw_headers = reader.until(b"\r\n\r\n", MAX_HEADER_BYTES, "part headers")
        # What precedes the first header line is transport padding then CRLF.
        if not raw_headers.startswith(b"\r\n") and raw_headers.strip(b" \t"):
            head, _, rest = raw_headers.partition(b"\r\n")
            if head.strip(b" \t"):
                raise MultipartError("garbage after a delimiter")
            raw_headers = rest
        headers = _headers(raw_headers.lstrip(b" \t"))
        parts += 1
        if parts > max_parts:
            raise MultipartLimit(f"more than {max_parts} parts")
        disposition, options = parse_options_header(headers.get("Content-Disposition", ""))
        if disposition != "form-data" or "name" not in options:
            raise MultipartError("a part without Content-Disposition: form-data; name=…")
        name = options["name"]
        if "filename" in options:
            target = stream_factory(
                filename=options["filename"], content_type=headers.get("Content-Type")
            )
            _copy_until(reader, separator, target.write, delimiter)
            target.seek(0)
            files.add(name, FileStorage(target, options["filename"], name, headers=headers))
        else:
            value = _FieldValue(max_field_bytes)
            _copy_until(reader, separator, value.write, delimiter)
            fields.add(name, value.text())


class _FieldValue:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def write(self, data: Any) -> None:
        if len(self.data) + len(data) > self.limit:
            raise MultipartLimit(f"a field is longer than {self.limit} bytes")
        self.data += data

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _copy_until(
    reader: _Reader, separator: bytes, write: Callable[[Any], Any], delimiter: bytes
) -> None:
    """Hand everything before ``separator`` to ``write``, one read at a time.

    Each piece given to ``write`` is a read's own ``bytes`` (or a memoryview of
    one): never copied, and immutable, so a writer may keep it. A read is
    passed on once the next one shows that no separator starts in its last
    bytes; memory stays at about two reads.

    An empty part may come as the blank line straight followed by the
    delimiter (the header block's CRLF doubling as the delimiter's, as
    Werkzeug's encoder writes it): that is an empty value too."""
    while len(reader.buf) < len(delimiter) and reader.fill():
        pass
    if reader.buf.startswith(delimiter):
        del reader.buf[: len(delimiter)]
        return
    keep = len(separator) - 1
    pending = bytes(reader.buf)
    reader.buf.clear()
    # No separator starts before ``searched`` in ``pending``.
    searched = 0
    while True:
        found = pending.find(separator, searched)
        if found >= 0:
            _emit(write, pending, found)
            reader.buf += memoryview(pending)[found + len(separator) :]
            return
        searched = max(searched, len(pending) - keep)
        chunk = reader.read()
        if not chunk:
            raise MultipartError("the body ends inside a part")
        if len(chunk) < keep:
            # Too short to settle the seam: join it to the unsettled tail.
            _emit(write, pending, searched)
            pending = pending[searched:] + chunk
            searched = 0
            continue
        seam = pending[searched:] + chunk[:keep]
        found = seam.find(separator)
        if found >= 0:
            _emit(write, pending, searched + found)
            reader.buf += memoryview(chunk)[found + len(separator) - (len(pending) - searched) :]
            return
        _emit(write, pending, len(pending))
        pending, searched = chunk, 0


def _emit(write: Callable[[Any], Any], data: bytes, end: int) -> None:
    if end == len(data):
        if end:
            write(data)
    elif end:
        write(memoryview(data)[:end])
