"""Start writing a file's dirty pages to disk early, so that ``fsync`` is short.

A staged upload is fsynced before it is committed; left to itself, the kernel
writes nothing until then and the fsync writes the whole file while the
client waits. Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` starts the
writeback of what was written so far without waiting for it and without
touching metadata; durability still comes from the final ``fsync`` alone.
Python's ``os`` does not offer the call, so it is reached through ctypes; on
other systems (or if the call fails) :func:`start_writeback` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call  # type: ignore[no-any-return]


_call = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` of ``fd``.

    Only a hint: it never raises, and the data is durable only after fsync.
    ctypes releases the GIL for the call."""
    if _call is not None and length > 0:
        _call(fd, offset, length, SYNC_FILE_RANGE_WRITE)
