"""Live events through real ``supportgate`` processes.

* ``serve`` on the embedded default: a change through the API reaches an SSE
  subscriber of the events part, and SIGTERM ends the tree with a stream open;
* two API processes and two events servers (one of them with two workers
  sharing its port) on one PostgreSQL and one Redis: a change made through
  either API reaches subscribers of both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests

from tests.e2e.test_cli import (
    START_TIMEOUT,
    _kill_group,
    add_user,
    clean_env,
    free_port,
    pg_database,  # noqa: F401 - a fixture
    serving,
    supportgate_command,
)
from tests.integration.sse import SseClient

REDIS_SERVER = "redis://127.0.0.1:6379"


def process_logs(tmp_path: Path) -> str:
    """The tail of every process's log of this test (for a failure's message)."""
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(tmp_path.glob("*.log"))
    )


@contextmanager
def running(tmp_path: Path, command: str, port: int, **settings: str) -> Iterator[str]:
    """``supportgate <command>`` listening on ``port``; yields its base URL."""
    log = tmp_path / f"{command}-{port}.log"
    env = clean_env(tmp_path, **settings)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*supportgate_command(), command],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command} exited: {log.read_text()[-3000:]}")
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{command} did not come up: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        _kill_group(process)


@pytest.mark.slow
def test_serve_streams_changes_made_through_the_api(tmp_path: Path) -> None:
    token = add_user(tmp_path, "admin@example.com", "admin")
    events_port = free_port()
    with serving(tmp_path, events_port=str(events_port)) as server:
        events = f"http://127.0.0.1:{events_port}"
        deadline = time.monotonic() + 20
        while True:  # the events part may still be starting
            try:
                requests.get(f"{events}/healthz", timeout=2)
                break
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {token}"}
        with SseClient(events, token) as stream:
            assert stream.status == 200
            created = requests.post(
                f"{server.base}/api/v1/tickets",
                json={"title": "Live", "customer_email": "c@example.org"},
                headers=headers,
                timeout=10,
            )
            assert created.status_code == 201
            (event,) = stream.take(1, timeout=10)
            assert event.event == "ticket.created"
            assert event.data["ticket_id"] == created.json()["id"]
            # SIGTERM with a stream open: the tree still stops in time.
            assert server.stop(signal.SIGTERM) == 0, server.output()


@pytest.mark.slow
def test_two_api_processes_behind_one_redis_fan_out(tmp_path: Path, pg_database: str) -> None:  # noqa: F811
    try:
        redis.Redis.from_url(REDIS_SERVER, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis unreachable: {exc}")
    # A database number of its own: the channel is per number (adapters/live/relay.py).
    redis_url = f"{REDIS_SERVER}/{10 + os.getpid() % 6}"
    shared = {"database_url": pg_database, "redis_url": redis_url}
    token = add_user(tmp_path, "admin@example.com", "admin", **shared)
    ports = [free_port() for _ in range(4)]
    with (
        running(tmp_path, "api", ports[0], api_port=str(ports[0]), **shared) as api_one,
        running(tmp_path, "api", ports[1], api_port=str(ports[1]), **shared) as api_two,
        running(
            tmp_path, "events", ports[2], events_port=str(ports[2]), events_workers="2", **shared
        ) as ev_one,
        running(tmp_path, "events", ports[3], events_port=str(ports[3]), **shared) as ev_two,
        SseClient(ev_one, token) as first,
        SseClient(ev_two, token) as second,
    ):
        assert (first.status, second.status) == (200, 200), process_logs(tmp_path)
        headers = {"Authorization": f"Bearer {token}"}
        ticket = requests.post(
            f"{api_one}/api/v1/tickets",
            json={"title": "Fan-out", "customer_email": "c@example.org"},
            headers=headers,
            timeout=10,
        ).json()
        patched = requests.patch(
            f"{api_two}/api/v1/tickets/{ticket['id']}",
            json={"status": "open"},
            headers=headers,
            timeout=10,
        )
        assert patched.status_code == 200
        try:
            got_one, got_two = first.take(2, timeout=15), second.take(2, timeout=15)
        except (AssertionError, EOFError) as exc:
            pytest.fail(f"{exc!r}\n{process_logs(tmp_path)}")
        for got in (got_one, got_two):
            assert [m.event for m in got] == ["ticket.created", "ticket.updated"]
            assert [m.data["ticket_id"] for m in got] == [ticket["id"]] * 2
        assert [m.id for m in got_one] == [m.id for m in got_two]
