"""New connections spread over the API's gunicorn workers (web/balance.py).

A real gunicorn master with two gthread workers (the product's worker class
and hooks, as ``web/cli.py`` sets them) serves an app that answers with its
worker's pid; the test opens a client's pool of keep-alive connections at
once, like wrk or an HTTP client's pool, and asks each connection which worker
holds it. Plain gthread usually gives most or all of them to one worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]

SERVER = textwrap.dedent(
    """
    import os, sys
    from gunicorn.app.base import BaseApplication
    from gunicorn.workers.gthread import ThreadWorker
    from web.balance import balanced_worker

    def app(environ, start_response):
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    port, balanced = int(sys.argv[1]), sys.argv[2] == "balanced"
    worker_class, hooks = balanced_worker(2)

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"127.0.0.1:{port}")
            self.cfg.set("workers", 2)
            self.cfg.set("threads", 2)
            self.cfg.set("keepalive", 30)
            self.cfg.set("worker_class", worker_class if balanced else ThreadWorker)
            for name, hook in (hooks.items() if balanced else ()):
                self.cfg.set(name, hook)

        def load(self):
            return app

    Server().run()
    """
)


class Pool:
    """Keep-alive HTTP/1.1 connections to the test server."""

    def __init__(self, port: int, size: int) -> None:
        # All connects first, as a client pool filling up at once does.
        self.socks = [
            socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(size)
        ]

    def owners(self) -> list[int]:
        """The pid of the worker holding each connection."""
        pids = []
        for sock in self.socks:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
                chunk = sock.recv(4096)
                assert chunk, "the server closed a keep-alive connection"
                data += chunk
            pids.append(int(data.split(b"\r\n\r\n", 1)[1]))
        return pids

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


class GunicornUnderTest:
    """The test app under gunicorn, in a process of its own; its log kept for failures."""

    def __init__(self, mode: str) -> None:
        self.port = free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.port), mode],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                pool = Pool(self.port, 1)
            except OSError:
                time.sleep(0.05)
                continue
            pool.owners()
            pool.close()
            return
        self.stop()
        raise AssertionError("the test server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _workers(master: int) -> set[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True, check=False
    ).stdout
    return {int(pid) for pid in out.split()}


def _wait_for_workers(master: int, count: int, exclude: set[int] = frozenset()) -> set[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = _workers(master) - exclude
        if len(found) == count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"gunicorn did not bring up {count} workers")


def _splits(port: int, rounds: int, size: int = 8) -> list[tuple[int, ...]]:
    """For each round, a pool of ``size`` connections opened at once: how many each
    worker holds (largest first)."""
    splits = []
    for _ in range(rounds):
        pool = Pool(port, size)
        counts = Counter(pool.owners())
        pool.close()
        splits.append(tuple(sorted(counts.values(), reverse=True)))
        time.sleep(0.15)  # the workers see the closes before the next pool connects
    return splits


def _excess(splits: list[tuple[int, ...]], size: int = 8) -> float:
    """How many connections the busier worker held beyond an even share, on average."""
    return sum(split[0] - size // 2 for split in splits) / len(splits)


def _assert_balanced(splits: list[tuple[int, ...]]) -> None:
    # A worker may be slow to wake now and then (a loaded CI machine), and after its
    # wait the busier one accepts: now and then one connection off an even split.
    # (Plain gthread: 1.4 to 3.1 on average here, 7 or 8 of 8 in some rounds.)
    assert all(split[0] <= 6 for split in splits), splits
    assert _excess(splits) <= 0.5, splits


@pytest.fixture
def balanced() -> Iterator[GunicornUnderTest]:
    server = GunicornUnderTest("balanced")
    yield server
    server.stop()


def test_a_pool_opened_at_once_is_split_evenly_between_the_workers(
    balanced: GunicornUnderTest,
) -> None:
    _wait_for_workers(balanced.proc.pid, 2)
    splits = _splits(balanced.port, rounds=12)
    _assert_balanced(splits)


def test_a_replaced_worker_takes_its_share(balanced: GunicornUnderTest) -> None:
    """kill -9 of a worker: its slot is freed (child_exit) and its replacement's
    count starts from zero, so the survivor does not keep deferring to a ghost."""
    first, second = sorted(_wait_for_workers(balanced.proc.pid, 2))
    os.kill(first, signal.SIGKILL)
    workers = _wait_for_workers(balanced.proc.pid, 2, exclude={first})
    assert second in workers
    time.sleep(0.5)  # the replacement is up and polling
    _assert_balanced(_splits(balanced.port, rounds=12))


def test_plain_gthread_is_what_this_guards_against() -> None:
    """The same pools against gunicorn's own gthread worker: the test above could fail."""
    server = GunicornUnderTest("plain")
    try:
        _wait_for_workers(server.proc.pid, 2)
        splits = _splits(server.port, rounds=12)
    finally:
        server.stop()
    assert _excess(splits) >= 0.75, splits
