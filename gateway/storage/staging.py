"""An upload being received: streamed to a temporary file while it is hashed.

A :class:`StagedFile` is what a backend's ``stage()`` hands out. Whoever
receives bytes (the multipart parser, a mail part, a copy loop) writes them in
chunks; the file keeps the running SHA-256, the size and the first
``HEAD_BYTES`` (for type sniffing), and refuses to grow past ``max_bytes``.
Nothing is visible under a real name until the backend's ``commit()``; a
staged file that is never committed is removed by ``discard()``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from gateway.errors import PayloadTooLarge

HEAD_BYTES = 256 * 1024
CHUNK = 1 << 20


class StagedFile:
    """A write-once temporary file; ``write`` raises PayloadTooLarge past the limit."""

    def __init__(self, directory: Path, max_bytes: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-")
        self.path = Path(name)
        self._file = os.fdopen(fd, "w+b")
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = hashlib.sha256()
        self._head = bytearray()
        self.finished = False
        self.committed = False

    # -- the writable-file surface the multipart parser and copy loops use --

    def write(self, data: bytes) -> int:
        if self.finished:
            raise ValueError("staged file is finished")
        size = self.size + len(data)
        if self.max_bytes is not None and size > self.max_bytes:
            raise PayloadTooLarge(
                f"the file is larger than {self.max_bytes} bytes",
                data={"limit": self.max_bytes},
            )
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]
        self._digest.update(data)
        self._file.write(data)
        self.size = size
        return len(data)

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
        self._file.flush()

    def close(self) -> None:
        """Close the handle (the file stays until commit or discard)."""
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    # -- what the receiver learns --------------------------------------------

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    @property
    def head(self) -> bytes:
        return bytes(self._head)

    def copy_from(self, stream: object) -> None:
        read = stream.read  # type: ignore[attr-defined]
        while chunk := read(CHUNK):
            self.write(chunk)

    def finish(self) -> None:
        """Make the bytes durable (flush, fsync); no writes after this."""
        if self.finished:
            return
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        self.finished = True

    def discard(self) -> None:
        """Remove the temporary file unless it was committed; idempotent."""
        if not self._file.closed:
            self._file.close()
        if not self.committed:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
