"""An upload being received: streamed to a temporary file while it is hashed.

A :class:`StagedFile` is what a backend's ``stage()`` hands out. Whoever
receives bytes (the multipart parser, a mail part, a copy loop) writes them in
chunks; the file keeps the running SHA-256, the size and the first
``HEAD_BYTES`` (for type sniffing), and refuses to grow past ``max_bytes``.
Nothing is visible under a real name until the backend's ``commit()``; a
staged file that is never committed is removed by ``discard()``.

The bytes go straight to the file descriptor (no user-space buffer, so each
byte is copied once, into the page cache); a large file is hashed by a helper
thread reading it back behind the writer, which also starts the writeback of
each hashed range so that the final fsync is short (hashing.py, writeback.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gateway.errors import PayloadTooLarge
from gateway.storage.hashing import FileHasher
from gateway.storage.writeback import start_writeback

HEAD_BYTES = 256 * 1024
CHUNK = 1 << 20
WRITEBACK_BYTES = 4 << 20


class StagedFile:
    """A write-once temporary file; ``write`` raises PayloadTooLarge past the limit."""

    def __init__(self, directory: Path, max_bytes: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-")
        self.path = Path(name)
        self._file = os.fdopen(fd, "w+b", buffering=0)
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = FileHasher(fd, self._write_back)
        self._sha256: str | None = None
        self._written_back = 0
        self._head = bytearray()
        self.finished = False
        self.committed = False

    # -- the writable-file surface the multipart parser and copy loops use --

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; raises PayloadTooLarge past ``max_bytes`` (nothing
        of that piece is written), OSError, or what the hashing thread raised."""
        if self.finished:
            raise ValueError("staged file is finished")
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        count = len(view)
        size = self.size + count
        if self.max_bytes is not None and size > self.max_bytes:
            raise PayloadTooLarge(
                f"the file is larger than {self.max_bytes} bytes",
                data={"limit": self.max_bytes},
            )
        if len(self._head) < HEAD_BYTES:
            self._head += view[: HEAD_BYTES - len(self._head)]
        written = 0
        while written < count:  # a raw write may be short
            written += self._file.write(view[written:])
        self.size = size
        self._digest.update(view)
        return count

    def _write_back(self, start: int, end: int) -> None:
        # On the hashing thread, after ``start:end`` was hashed.
        if end - self._written_back >= WRITEBACK_BYTES:
            start_writeback(self._file.fileno(), self._written_back, end - self._written_back)
            self._written_back = end

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self.finished

    def flush(self) -> None:
        """Nothing is buffered in user space; kept for the file interface."""

    def close(self) -> None:
        """Close the handle (the file stays until commit or discard)."""
        if not self._file.closed:
            self._digest.wait()  # it reads the file through this handle
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    # -- what the receiver learns --------------------------------------------

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of the bytes written (final once ``finish``ed)."""
        if self._sha256 is not None:
            return self._sha256
        return self._digest.hexdigest()

    @property
    def head(self) -> bytes:
        return bytes(self._head)

    def copy_from(self, stream: object) -> None:
        read = stream.read  # type: ignore[attr-defined]
        while chunk := read(CHUNK):
            self.write(chunk)

    def finish(self) -> None:
        """Make the bytes durable (fsync) and the hash final; no writes after
        this. Raises OSError, or what the hashing thread raised."""
        if self.finished:
            return
        if not self._file.closed:
            # The hashing thread finishes its backlog while fsync waits.
            os.fsync(self._file.fileno())
        self._sha256 = self._digest.hexdigest()
        self._file.close()
        self.finished = True

    def discard(self) -> None:
        """Remove the temporary file unless it was committed, and stop the
        hashing thread; idempotent."""
        self._digest.close()
        if not self._file.closed:
            self._file.close()
        if not self.committed:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
