"""Opaque binary test data that is the same on every run.

``os.urandom`` bytes are a lottery for a type sniffer: about one run in 65,536
they begin with ``MZ`` and are read as a Windows executable (refused by the
default attachment policy), and other short magic numbers match now and then.
Seeded bytes that are checked once to sniff as ``application/octet-stream``
keep a test about sizes and round trips from failing on what it did not test.
"""

from __future__ import annotations

import random

from gateway.attachments.sniff import sniff


def opaque_bytes(size: int, seed: str = "") -> bytes:
    """``size`` pseudo-random bytes that sniff as application/octet-stream."""
    data = random.Random(f"{seed}:{size}").randbytes(size)
    if size:
        kind = sniff(data[:8192])
        assert kind == "application/octet-stream", f"seed {seed!r} sniffs as {kind}"
    return data
