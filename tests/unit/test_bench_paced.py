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
