"""STARTTLS on the inbound SMTP server when a certificate is configured."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import subprocess
import threading

import pytest

from adapters.email.smtp_server import serve_smtp, tls_context
from gateway.inbound.addresses import SupportAddress
from tests.integration.conftest import SUPPORT, make_mail
from tests.ports import free_port


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_starttls_is_offered_and_mail_goes_through_it(db, certificate):
    port = free_port()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    context = tls_context(*certificate)
    assert context is not None

    async def main() -> None:
        await serve_smtp(
            db,
            SupportAddress.parse(SUPPORT),
            "127.0.0.1",
            port,
            max_message_bytes=1_000_000,
            stop=stop,
            tls=context,
            ready=lambda _: ready.set(),
        )

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        client_context = ssl.create_default_context()
        client_context.check_hostname = False
        client_context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            client.starttls(context=client_context)
            client.ehlo()
            assert client.send_message(make_mail(), to_addrs=[SUPPORT]) == {}
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_no_certificate_no_starttls():
    assert tls_context(None, None) is None
