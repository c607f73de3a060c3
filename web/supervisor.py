"""``supportgate serve``: one process tree running every part that is configured.

The parent checks the configuration, migrates, then starts one child per
part (``api``, ``smtp``, ``tasks``, ``imap`` when SUPPORTGATE_IMAP_URL is
set, ``slack`` in Slack's Socket Mode), each the same ``supportgate <part>``
command a production deployment would run separately. A child that dies is
restarted with backoff; SIGTERM or SIGINT is passed on to every child, which
finishes or hands back its in-flight work, and the parent exits 0 once they
are all gone.

The background parts (``tasks``, ``worker``) run at a lower CPU priority
(``nice`` +10): on the one host ``serve`` uses, a backlog of ingestion would
otherwise take the cores from the parts people wait on (the API answering,
the SMTP server's 250s). They still get every idle cycle, so the backlog
drains as fast as the host allows once the edge is quiet.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("supportgate.serve")

STOP_TIMEOUT = 30.0
BACKGROUND_NICE = 10
BACKGROUND_PARTS = frozenset({"tasks", "worker"})


def _lower_priority() -> None:  # in the child, before exec
    os.nice(BACKGROUND_NICE)


@dataclass
class Child:
    part: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "web.cli", self.part],
            # preexec_fn is safe here: the supervisor runs no other thread.
            preexec_fn=_lower_priority if self.part in BACKGROUND_PARTS else None,
        )
        self.started_at = time.monotonic()
        log.info("started", extra={"part": self.part, "pid": self.process.pid})


def supervise(parts: list[str]) -> int:
    children = [Child(part) for part in parts]
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for child in children:
        child.start()
    while not stopping:
        now = time.monotonic()
        for child in children:
            proc = child.process
            if proc is not None and proc.poll() is not None:
                # A part that keeps dying is restarted ever more slowly, not in a tight loop.
                uptime = now - child.started_at
                child.restarts = 0 if uptime > 60 else child.restarts + 1
                delay = min(30.0, 0.5 * 2**child.restarts)
                log.error(
                    "part exited; restarting",
                    extra={"part": child.part, "code": proc.returncode, "delay": delay},
                )
                child.process, child.next_start = None, now + delay
            if child.process is None and now >= child.next_start:
                child.start()
        time.sleep(0.2)
    for child in children:
        if child.process is not None and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("part did not stop in time; killing it", extra={"part": child.part})
            child.process.kill()
            child.process.wait()
    return 0
