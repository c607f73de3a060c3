"""Uploads read straight from gunicorn's socket (``web/body.py``).

Two levels: the reader on gunicorn's own ``Body``/``LengthReader``/
``SocketUnreader`` over a socket pair (exact bytes, nothing read past the
Content-Length, clean errors), and ``supportgate api`` under a real gunicorn
spoken to over raw sockets and ``http.client`` (round trips by sha256, keep-alive
and pipelined requests, a client that stops short, a body over the limit).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.unreader import SocketUnreader

from tests.blobs import opaque_bytes
from tests.e2e.test_cli import add_user, run, serving
from web import body as socket_body

MAX_ATTACHMENT = 12_000_000
ANSWER_WITHIN = 5.0  # seconds the server may take to answer or close after a short body


# --- the reader on gunicorn's classes ------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(gunicorn's side, the client's side) of a TCP connection over 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=30)
        server, _ = listener.accept()
    server.setblocking(True)
    yield server, client
    server.close()
    client.close()


def send_later(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send ``data`` from a thread (more than the socket buffers hold)."""
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    return sender


def gunicorn_body(sock: socket.socket, length: int, read_ahead: bytes = b"") -> Body:
    """What gunicorn builds for a Content-Length body, with ``read_ahead`` as
    the bytes its unreader took from the socket along with the headers."""
    unreader = SocketUnreader(sock)
    unreader.unread(read_ahead)
    return Body(LengthReader(unreader, length))


def read_all(read: Any, size: int) -> bytes:
    out = bytearray()
    while chunk := read(size):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("ahead", [0, 1, 100, 5000])
def test_reads_exactly_the_body_and_leaves_the_next_request(pair, ahead):
    server, client = pair
    data = opaque_bytes(300_000, "socket-reader")
    following = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    # The unreader holds the start of the body (and, when the body is short,
    # the next request too); the rest is on the socket.
    stream = data + following
    body = gunicorn_body(server, len(data), stream[:ahead])
    sender = send_later(client, stream[ahead:])
    read = socket_body.socket_reader(body, len(data))
    assert read is not None
    assert read_all(read, 64 * 1024) == data
    sender.join(10)
    assert body.reader.length == 0
    assert body.read(8192) == b""  # what gunicorn drains after the app: nothing
    client.close()
    rest = body.reader.unreader.read(len(following) + 100)
    assert rest == following


def test_a_small_body_inside_the_read_ahead(pair):
    server, _ = pair
    following = b"GET /next HTTP/1.1\r\n\r\n"
    body = gunicorn_body(server, 3, b"abc" + following)
    read = socket_body.socket_reader(body, 3)
    assert read is not None
    assert read(1) == b"a"
    assert read(100) == b"bc"
    assert read(100) == b""
    assert body.reader.unreader.read() == following


def test_what_the_app_leaves_is_drained_by_gunicorn(pair):
    server, client = pair
    data = opaque_bytes(200_000, "drain")
    body = gunicorn_body(server, len(data), data[:1000])
    sender = send_later(client, data[1000:] + b"NEXT")
    read = socket_body.socket_reader(body, len(data))
    assert read is not None
    got = read(1000) + read(50_000)
    assert got == data[:51_000]
    assert body.reader.length == len(data) - 51_000
    # gunicorn's parser drains the rest through its own reader, then parses on.
    drained = read_all(body.read, 8192)
    assert drained == data[51_000:]
    sender.join(10)
    assert body.reader.unreader.read() == b"NEXT"


def test_eof_before_the_end_raises(pair):
    server, client = pair
    body = gunicorn_body(server, 10_000, b"x" * 100)
    client.sendall(b"y" * 500)
    client.close()
    read = socket_body.socket_reader(body, 10_000)
    assert read is not None
    assert read(100) == b"x" * 100
    assert read(100_000) == b"y" * 500  # MSG_WAITALL returns what came before the EOF
    with pytest.raises(socket_body.BodyIncomplete, match="600 of 10000"):
        read(100_000)
    assert body.reader.length == 0  # gunicorn will not wait for the rest
    assert body.read(8192) == b""


def test_a_silent_client_times_out(pair, monkeypatch):
    server, client = pair
    monkeypatch.setattr(socket_body, "IDLE_TIMEOUT", 0.3)
    body = gunicorn_body(server, 10_000)
    client.sendall(b"z" * 10)
    read = socket_body.socket_reader(body, 10_000)
    assert read is not None
    started = time.monotonic()
    assert read(100_000) == b"z" * 10  # the timeout ends a partial read
    with pytest.raises(socket_body.BodyIncomplete, match=r"nothing for 0\.3 s"):
        read(100_000)
    assert time.monotonic() - started < 3
    assert body.reader.length == 0
    assert server.recv(10) == b""  # read side shut down: the next parse sees EOF
    # and no receive timeout is left on gunicorn's socket
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)


def test_falls_back_when_it_does_not_qualify(pair, monkeypatch):
    server, _ = pair
    touched = gunicorn_body(server, 10, b"0123456789")
    touched.read(3)  # Body now holds bytes read ahead
    assert socket_body.socket_reader(touched, 10) is None
    assert socket_body.socket_reader(gunicorn_body(server, 10), 11) is None
    chunked = Body(ChunkedReader(None, SocketUnreader(server)))
    assert socket_body.socket_reader(chunked, None) is None
    assert socket_body.socket_reader(object(), 10) is None
    server.settimeout(5)
    assert socket_body.socket_reader(gunicorn_body(server, 10), 10) is None
    server.settimeout(None)
    monkeypatch.setattr(socket_body, "ENABLED", False)
    assert socket_body.socket_reader(gunicorn_body(server, 10), 10) is None


# --- through supportgate api under gunicorn -----------------------------------------


@dataclass
class Api:
    host: str
    port: int
    token: str
    ticket: str
    store: Path

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=30)

    def request(self, method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines.append(f"Authorization: Bearer {self.token}")
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def upload(self, data: bytes, *, boundary: str = "socketreaderboundary") -> bytes:
        return self.request(
            "POST",
            f"/api/v1/tickets/{self.ticket}/attachments",
            multipart(data, boundary),
            Content_Type=f"multipart/form-data; boundary={boundary}",
        )

    def _get(self, path: str) -> bytes:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            assert response.status == 200
            return response.read()
        finally:
            conn.close()

    def attachments(self) -> list[dict[str, Any]]:
        return list(json.loads(self._get(f"/api/v1/tickets/{self.ticket}/attachments"))["items"])

    def download(self, attachment_id: str) -> bytes:
        return self._get(f"/api/v1/attachments/{attachment_id}")

    def staged_leftovers(self) -> list[Path]:
        return list(self.store.glob(".upload-*"))


def multipart(data: bytes, boundary: str) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="blob.dat"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length from a buffered stream
    (several may follow each other on it)."""
    status_line = stream.readline()
    if not status_line:
        raise EOFError("the server closed the connection")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return status, headers, body


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("socket-reader")
    settings = {
        "max_attachment_bytes": str(MAX_ATTACHMENT),
        "rate_limit_per_minute": "0",
        "api_workers": "1",
        "api_threads": "4",
    }
    done = run(tmp, "db", "upgrade", **settings)
    assert done.returncode == 0, done.stderr
    token = add_user(tmp, "uploader@example.com", "agent", **settings)
    with serving(tmp, "api", **settings) as server:
        host, port = server.base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request(
            "POST",
            "/api/v1/tickets",
            body=json.dumps({"title": "uploads", "customer_email": "c@example.org"}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 201, response.read()
        ticket = json.loads(response.read())["id"]
        conn.close()
        yield Api(host, int(port), token, ticket, tmp / "data" / "attachments")


def check_stored(api: Api, status: int, body: bytes, data: bytes) -> None:
    assert status == 201, body[:500]
    created = json.loads(body)
    digest = hashlib.sha256(data).hexdigest()
    assert created["size"] == len(data)
    assert created["sha256"] == digest
    assert hashlib.sha256(api.download(created["id"])).hexdigest() == digest


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        # With the headers, gunicorn's first 8 KiB recv ends inside the file.
        pytest.param(8000, id="straddles-the-first-recv"),
        pytest.param(10 * 1000 * 1000, id="10MB"),
    ],
)
def test_round_trip_by_sha256(api, size):
    data = opaque_bytes(size, "socket-reader-api")
    with api.connect() as sock:
        sock.sendall(api.upload(data))  # headers and body in one send
        status, _, body = read_response(sock.makefile("rb"))
    check_stored(api, status, body, data)


def test_two_uploads_on_one_keep_alive_connection(api):
    first = opaque_bytes(3_000_000, "keep-alive-1")
    second = opaque_bytes(70_001, "keep-alive-2")
    conn = http.client.HTTPConnection(api.host, api.port, timeout=30)
    try:
        for data in (first, second):
            boundary = "keepaliveboundary"
            conn.request(
                "POST",
                f"/api/v1/tickets/{api.ticket}/attachments",
                body=multipart(data, boundary),
                headers={
                    "Authorization": f"Bearer {api.token}",
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
            )
            response = conn.getresponse()
            check_stored(api, response.status, response.read(), data)
            assert response.getheader("Connection", "").lower() != "close"
        assert conn.sock is not None  # the same connection carried both
    finally:
        conn.close()


def test_a_pipelined_request_behind_an_upload(api):
    """The next request's bytes arrive right behind the body, in the same send:
    the reader must leave them for gunicorn.

    (Only two: gunicorn's gthread worker waits for the socket to become
    readable before each keep-alive request, so a third request that its own
    8 KiB read took in along with the second waits for the keep-alive timeout,
    whichever body reader is used.)"""
    data = opaque_bytes(500_000, "pipelined")
    small = opaque_bytes(64, "pipelined-small")
    with api.connect() as sock:
        sock.sendall(api.upload(data) + api.upload(small))
        stream = sock.makefile("rb")
        status, _, body = read_response(stream)
        check_stored(api, status, body, data)
        status, _, body = read_response(stream)
        check_stored(api, status, body, small)


def test_a_refused_upload_is_drained_and_the_connection_goes_on(api):
    """A file over the limit inside a body under MAX_CONTENT_LENGTH: the app stops
    reading early; gunicorn drains the rest and serves the next request."""
    data = opaque_bytes(MAX_ATTACHMENT + 1000, "over-the-limit")
    small = opaque_bytes(1000, "after-the-refusal")
    with api.connect() as sock:
        sock.sendall(api.upload(data) + api.upload(small))
        stream = sock.makefile("rb")
        status, _, body = read_response(stream)
        assert status == 413, body[:300]
        status, _, body = read_response(stream)
        check_stored(api, status, body, small)
    assert api.staged_leftovers() == []


@pytest.mark.parametrize("close", ["half-close", "full-close"])
def test_a_client_that_stops_short_stores_nothing(api, close):
    data = opaque_bytes(2_000_000, f"short-{close}")
    request = api.upload(data)
    before = {item["id"] for item in api.attachments()}
    sock = api.connect()
    try:
        sock.sendall(request[: len(request) - 300_000])
        started = time.monotonic()
        if close == "half-close":
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(ANSWER_WITHIN)
            try:
                status, _, body = read_response(sock.makefile("rb"))
            except (EOFError, ConnectionError):
                pass  # closing is an answer too
            else:
                assert 400 <= status < 500, body[:300]
                assert b"bytes" in body
            assert time.monotonic() - started < ANSWER_WITHIN
    finally:
        sock.close()
    # The server has to notice; give it until ANSWER_WITHIN to discard the file.
    deadline = time.monotonic() + ANSWER_WITHIN
    while api.staged_leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.staged_leftovers() == []
    assert {item["id"] for item in api.attachments()} == before
    # and the server still serves uploads
    small = opaque_bytes(64, f"after-short-{close}")
    with api.connect() as sock:
        sock.sendall(api.upload(small))
        status, _, body = read_response(sock.makefile("rb"))
    check_stored(api, status, body, small)


def test_a_content_length_over_the_limit_is_413_without_reading(api):
    too_big = MAX_ATTACHMENT + 65536 + 1 + 1_000_000
    boundary = "toobigboundary"
    head = api.request(
        "POST",
        f"/api/v1/tickets/{api.ticket}/attachments",
        Content_Type=f"multipart/form-data; boundary={boundary}",
    )
    head = head.replace(b"Content-Length: 0", f"Content-Length: {too_big}".encode())
    with api.connect() as sock:
        sock.settimeout(ANSWER_WITHIN)
        sock.sendall(head + multipart(b"a few bytes", boundary))
        status, headers, body = read_response(sock.makefile("rb"))
    assert status == 413, body[:300]
    assert headers["content-type"].startswith("application/problem+json")


def test_a_slow_sender_still_arrives_whole(api):
    """Pieces with pauses between them: MSG_WAITALL reads wait for them."""
    data = opaque_bytes(600_000, "slow-sender")
    request = api.upload(data)
    with api.connect() as sock:

        def send() -> None:
            for start in range(0, len(request), 100_000):
                sock.sendall(request[start : start + 100_000])
                time.sleep(0.05)

        sender = threading.Thread(target=send)
        sender.start()
        status, _, body = read_response(sock.makefile("rb"))
        sender.join()
    check_stored(api, status, body, data)
