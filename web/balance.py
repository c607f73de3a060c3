"""Keep-alive connections spread evenly over the API's gunicorn workers.

Every gthread worker polls the one listening socket and accepts whatever it
is woken for. A client that opens its pool of keep-alive connections at once
(wrk, an HTTP client's pool, a proxy's upstream pool) usually finds every
worker idle, and the first one awake takes most or all of them: seen on this
machine, 15 of 16 connections on one worker and 1 on the other for a whole run.
Each worker is one Python process, one core at most (the GIL), and the
client spreads its requests over its connections, so that worker got nearly
all of the load at ~90 % of a core while the other idled, and at half of
what the pair can serve its queue grew to hundreds of milliseconds
(bench/RESULTS.md, api_list.py, tenth session). The keep-alive limit
(``SUPPORTGATE_API_KEEPALIVE_REQUESTS``) moves connections again, but only
every so many requests, and a new connection again goes to whoever wakes first.

:class:`BalancedThreadWorker` is gunicorn's gthread worker with one rule at
accept: a worker that holds more connections than some other live worker
takes the listening socket out of its poller for :data:`DEFER_SECONDS`
(serving its own connections meanwhile), so that the other can take the
waiting connection; if it is still waiting when the socket comes back, this
worker accepts it. Nothing is ever refused or dropped, and a worker with no
more connections than any peer accepts at once. The workers' connection
counts live in shared memory made before the fork (:class:`Counts`), one slot
per live worker, handed out by the ``pre_fork`` hook and freed by
``child_exit``.
"""

from __future__ import annotations

import select
import selectors
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.sharedctypes import RawArray
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

# How long a busier worker leaves a waiting connection to a less busy one. A
# woken worker whose threads are all running Python needs the GIL first, which
# its threads hand over every 5 ms (sys.getswitchinterval()).
DEFER_SECONDS = 0.020

UNUSED = -1


class Counts:
    """Connections held by each live worker, in memory shared across the fork."""

    def __init__(self, slots: int) -> None:
        self.values = RawArray("i", [UNUSED] * slots)

    def take_slot(self, in_use: set[int]) -> int | None:
        """A free slot for a new worker (None when all are taken: it then accepts as
        gthread does)."""
        for slot in range(len(self.values)):
            if slot not in in_use:
                self.values[slot] = 0
                return slot
        return None

    def release(self, slot: int | None) -> None:
        if slot is not None:
            self.values[slot] = UNUSED

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The fewest connections another live worker holds (None: no other)."""
        others = [n for i, n in enumerate(self.values) if i != slot and n != UNUSED]
        return min(others) if others else None


class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker that leaves a new connection to a less busy peer."""

    counts: Counts | None = None  # set on the class by :func:`balanced_worker`
    balance_slot: int | None = None
    # A listening socket taken out of this worker's poller while a peer takes
    # what waits on it: (listener, server, when it goes back).
    _parked: tuple[Any, Any, float] | None = None
    _accept_next = False

    # gthread counts its connections in ``nr_conns`` (+1 at accept, -1 wherever
    # one closes); a property publishes each change to the shared counts.
    @property
    def nr_conns(self) -> int:
        return self._nr_conns

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:
        self._nr_conns = value
        if self.counts is not None and self.balance_slot is not None:
            self.counts.values[self.balance_slot] = value

    def accept(self, server: Any, listener: Any) -> None:
        """gthread's accept, unless a peer holds fewer connections: then the listener
        leaves this worker's poller for :data:`DEFER_SECONDS` (this worker goes on
        serving its own connections meanwhile). A connection still waiting when it
        comes back is accepted here, whatever the counts say."""
        if self._accept_next or self._parked is not None or not self._should_defer():
            self._accept_next = False
            super().accept(server, listener)
            return
        with self._lock:
            self.poller.unregister(listener)
        self._parked = (listener, server, time.monotonic() + DEFER_SECONDS)

    def run(self) -> None:
        # gthread waits up to a second in its poller; a parked listener must come back
        # after DEFER_SECONDS even when nothing else wakes this worker.
        self.poller = _WakeForParked(self.poller, self)
        super().run()

    def murder_keepalived(self) -> None:
        # gthread's main loop calls this after every wake-up (at least once a second).
        super().murder_keepalived()
        parked = self._parked
        if parked is not None and time.monotonic() >= parked[2]:
            listener, server, _ = parked
            self._parked = None
            # Still waiting after its time: no peer took it, so this worker does.
            self._accept_next = _pending(listener)
            with self._lock:
                self.poller.register(listener, selectors.EVENT_READ, partial(self.accept, server))

    def _should_defer(self) -> bool:
        if self.counts is None or self.balance_slot is None:
            return False
        fewest = self.counts.fewest_elsewhere(self.balance_slot)
        return fewest is not None and fewest < self._nr_conns


class _WakeForParked:
    """gthread's poller, whose ``select`` returns by the time a parked listener is due."""

    def __init__(self, poller: selectors.BaseSelector, worker: BalancedThreadWorker) -> None:
        self._poller = poller
        self._worker = worker

    def select(self, timeout: float | None = None) -> list[Any]:
        parked = self._worker._parked
        if parked is not None:
            due = max(0.0, parked[2] - time.monotonic())
            timeout = due if timeout is None else min(timeout, due)
        return self._poller.select(timeout)

    def __getattr__(self, name: str) -> Any:  # register, unregister, close, ...
        return getattr(self._poller, name)


def _pending(listener: Any) -> bool:
    """Whether a connection waits on the listening socket (it is readable)."""
    poller = select.poll()  # not select.select: no limit on the descriptor's number
    poller.register(listener, select.POLLIN)
    return bool(poller.poll(0))


def balanced_worker(
    workers: int,
) -> tuple[type[BalancedThreadWorker], dict[str, Callable[..., Any]]]:
    """The worker class and the master's hooks for ``workers`` workers.

    Call in the master before it forks; the class carries its shared counts.
    Slots are twice the workers: gunicorn starts a replacement before it has
    reaped every worker it replaces (a reload)."""
    counts = Counts(max(1, 2 * workers))

    class Worker(BalancedThreadWorker):
        pass

    Worker.counts = counts

    def pre_fork(server: Any, worker: Any) -> None:
        in_use = {
            w.balance_slot
            for w in server.WORKERS.values()
            if getattr(w, "balance_slot", None) is not None
        }
        worker.balance_slot = counts.take_slot(in_use)

    def child_exit(server: Any, worker: Any) -> None:
        counts.release(getattr(worker, "balance_slot", None))

    return Worker, {"pre_fork": pre_fork, "child_exit": child_exit}
