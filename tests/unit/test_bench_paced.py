"""The open-loop client of bench/api_list.py counts latency from each request's due time.

A closed-loop client (wrk) waits for each answer before sending the next, so a stall
shows as one slow request. The paced client must show it as every request due during the
stall being late, or its p99 would hide exactly what it is there to measure.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import api_list

STALL_AT = 20  # the 20th request answers after STALL_S
STALL_S = 0.3


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn
    disable_nagle_algorithm = True  # headers and body are separate writes
    count = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            type(self).count += 1
            n = type(self).count
        if n == STALL_AT:
            time.sleep(STALL_S)
        body = b'{"ok": true}' if self.path == "/ok" else b'{"title": "Not Found"}'
        self.send_response(200 if self.path == "/ok" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    _Handler.count = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_stall_delays_every_request_due_during_it(server: int) -> None:
    rate, seconds = 100.0, 1.0  # one request due every 10 ms, on one connection
    latencies, failed, _ = asyncio.run(
        api_list._paced_requests(server, "t", ["/ok"], rate, seconds, connections=1)
    )
    assert failed == 0
    assert len(latencies) == 100
    late = [x for x in latencies if x > 0.1]
    # The stalled request and the ~20 due in the following 200 ms all waited; a closed
    # loop would report one slow request.
    assert max(latencies) >= STALL_S * 0.95
    assert len(late) >= 15
    assert sorted(latencies)[49] < 0.1  # the others were answered on time


def test_answers_other_than_200_are_counted_as_failed(server: int) -> None:
    latencies, failed, _ = asyncio.run(
        api_list._paced_requests(server, "t", ["/ok", "/missing"], 200.0, 0.25, connections=2)
    )
    assert len(latencies) == 50
    assert 0 < failed < 50


class _Tagged(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.server.tag)  # type: ignore[attr-defined]
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_paced_runs_take_the_servers_in_turn_and_pool_the_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import subprocess

    # Each slice is what a server got while the host was as fast as for its rival's slices.
    monkeypatch.setattr(api_list, "wait_quiet", lambda *a: 0.0)
    _Tagged.seen = []
    servers, httpds = [], []
    group = subprocess.Popen(["sleep", "30"], start_new_session=True)  # a process group to read
    try:
        for tag in ("product", "anchor"):
            httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Tagged)
            httpd.tag = tag  # type: ignore[attr-defined]
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            httpds.append(httpd)
            server = api_list.Server(tag, [], {}, httpd.server_address[1], tmp_path)
            server.proc = group
            servers.append(server)
        args = argparse.Namespace(
            database_url="postgresql+psycopg://postgres@127.0.0.1/bench",
            paced_duration=0.8,
            paced_slices=4,
            connections=1,
            quiet_cores=0.3,
            quiet_timeout=0.0,
        )
        scenario = api_list.Scenario("s", "s", "/ok", paths=["/ok"])
        runs = api_list.paced_runs(args, servers, scenario, "t", 100.0)
    finally:
        group.kill()
        group.wait()
        for httpd in httpds:
            httpd.shutdown()
            httpd.server_close()
    turns = [tag for i, tag in enumerate(_Tagged.seen) if i == 0 or _Tagged.seen[i - 1] != tag]
    assert turns == ["product", "anchor", "product", "anchor", "product"]  # A B B A A B B A
    for name in ("product", "anchor"):
        assert runs[name].requests == 80  # four slices of 0.2 s at 100/s, pooled
        assert _Tagged.seen.count(name) == 80
        assert runs[name].errors == 0
        assert runs[name].rps_min == 100.0
        # The host meter ran during the slices (one reading per 50 ms or so).
        assert 0 < runs[name].host_loop_us_p50 <= runs[name].host_loop_us_p90


def test_the_host_meter_reads_every_50_ms_while_it_runs() -> None:
    with api_list.HostMeter() as meter:
        time.sleep(0.5)
    assert 5 <= len(meter.samples) <= 12
    assert all(x > 0 for x in meter.samples)
