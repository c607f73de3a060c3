"""SHA-256 of a file being written, computed on a helper thread behind the writer.

hashlib releases the GIL while it hashes, so a second thread can hash an
upload while the request's thread receives it and writes it: on one thread the
hash costs about as much as writing the file. The helper does not take the
data from the writer (that would hold it in memory, or make the writer wait);
it reads back what was written, from the page cache, in ``CHUNK`` reads into
one buffer of its own, and hashes it. The writer only says how far the file
goes (:meth:`FileHasher.written`), waking the helper once per ``STEP`` bytes.
So memory stays at one ``CHUNK`` whatever the size, the writer never waits,
and the hash catches up while the file is fsynced.

The bytes hashed are the bytes in the file, read back: what is stored is
what is hashed.

Files shorter than ``THREAD_AFTER`` never start the thread (a mail part, a
small upload): their bytes are hashed as they are written, on the writer's
thread (:meth:`FileHasher.update`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable

CHUNK = 1 << 20
STEP = 1 << 20
THREAD_AFTER = 2 << 20


class FileHasher:
    """The running SHA-256 of the file open as ``fd``, which only grows.

    The writer calls :meth:`update` with each piece it wrote, in order.
    :meth:`hexdigest` waits for the helper thread and raises what it raised
    (OSError from reading back, for instance); :meth:`close` stops it without
    raising, for error paths. The thread never outlives either, so the caller
    may close ``fd`` after them (and not before). ``after_hashed(start, end)``
    runs on the helper thread after each range it hashed (StagedFile starts
    the range's writeback there).
    """

    def __init__(self, fd: int, after_hashed: Callable[[int, int], None] | None = None) -> None:
        self._fd = fd
        self._after = after_hashed
        self._hash = hashlib.sha256()
        self._written = 0  # bytes in the file
        self._hashed = 0  # bytes hashed; the helper's once it runs
        self._signalled = 0
        self._done = False
        self._abandon = False
        self._error: BaseException | None = None
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def update(self, piece: bytes | bytearray | memoryview) -> None:
        """``piece`` was just written at the end of the file."""
        self._raise()
        self._written += len(piece)
        if self._thread is None:
            if self._written < THREAD_AFTER:
                self._hash.update(piece)
                self._hashed = self._written
                return
            self._start()
        if self._written - self._signalled >= STEP:
            self._signalled = self._written
            with self._wake:
                self._wake.notify()

    def hexdigest(self) -> str:
        """The digest of the file as written so far (updates may follow)."""
        self._stop()
        self._raise()
        if self._hashed != self._written:  # the thread stopped early on an error
            raise RuntimeError("the file was not hashed to its end")
        return self._hash.hexdigest()

    def wait(self) -> None:
        """Let the helper thread hash all that was written, and stop it; errors
        are kept for :meth:`hexdigest`."""
        self._stop()

    def close(self) -> None:
        """Stop the helper thread, dropping its work; idempotent, never raises."""
        self._abandon = True
        self._stop()

    def _start(self) -> None:
        self._done = False
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with self._wake:
            self._done = True
            self._wake.notify()
        thread.join()
        self._thread = None

    def _run(self) -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        try:
            while True:
                with self._wake:
                    while not self._done and self._written - self._hashed < STEP:
                        self._wake.wait()
                    end, last = self._written, self._done
                start = self._hashed
                while self._hashed < end and not self._abandon:
                    want = min(CHUNK, end - self._hashed)
                    got = os.preadv(self._fd, [view[:want]], self._hashed)
                    if got <= 0:
                        raise OSError(f"the staged file ends at {self._hashed} of {end} bytes")
                    self._hash.update(view[:got])
                    self._hashed += got
                if self._after is not None and end > start:
                    self._after(start, end)
                if last or self._abandon:
                    return
        except BaseException as exc:  # handed to the writer's thread
            self._error = exc
        finally:
            view.release()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
