"""Ports for the servers that tests start.

Binding port 0 and closing the socket again gives a port from the kernel's
ephemeral range. The kernel hands out the same range for the local end of
every outgoing connection, and a parallel xdist worker may be given the same
port before our server binds it: a test then talks to somebody else's server
(a 200 from another process's ``/healthz``, a stream that another test ends).
The ports here lie below the ephemeral range, in a block of their own for each
xdist worker, and each is checked free before it is handed out.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import closing

_FIRST = 20_000  # below Linux's default ephemeral range (32768-60999)
_BLOCK = 1_000  # ports for each xdist worker


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    blocks = max(1, (_ephemeral_low() - _FIRST) // _BLOCK)
    start = _FIRST + (index % blocks) * _BLOCK
    return range(start, start + _BLOCK)


def _cycle() -> Iterator[int]:
    ports = _block()
    # A random start: two test runs on one machine rarely walk the same ports.
    offset = random.randrange(len(ports))
    return itertools.cycle([*ports[offset:], *ports[:offset]])


_lock = threading.Lock()
_ports = _cycle()


def _bindable(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that nothing uses now and no other xdist worker hands out."""
    with _lock:
        for _ in range(_BLOCK):
            port = next(_ports)
            if _bindable(port):
                return port
    raise RuntimeError(f"no free port in {_block()}")
