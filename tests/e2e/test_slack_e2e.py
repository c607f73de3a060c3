"""Slack end to end, through a real ``supportgate serve``.

Mail in over SMTP → the ticket posted to (local) Slack → an agent's reply in
the thread, as a signed Events API request (HTTP mode) or a Socket Mode
envelope → the reply mailed to the customer at a local SMTP sink, threaded
on the customer's mail.
"""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from aiosmtpd.controller import Controller

from tests.e2e.test_cli import add_user, run, serving
from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.fakes.slack_requests import SIGNING_SECRET, event_body, signed_headers, thread_reply
from tests.ports import free_port

pytestmark = pytest.mark.slow

SUPPORT = "help@support.example.com"
AGENT_SLACK = "U0E2EAGENT"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class MailSink:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(envelope.original_content)
        return "250 OK"

    def mails(self) -> list[EmailMessage]:
        return [message_from_bytes(raw, policy=policy.default) for raw in self.received]


@pytest.fixture
def sink() -> Iterator[tuple[MailSink, int]]:
    handler, port = MailSink(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    yield from FakeSlack().serve()


def _send_mail(smtp_port: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Carol <carol@example.org>"
    msg["To"] = SUPPORT
    msg["Subject"] = "Cannot log in"
    msg["Message-ID"] = "<slack-e2e-1@example.org>"
    msg.set_content("My password does not work.")
    deadline = time.monotonic() + 20
    while True:  # the SMTP part may still be starting
        try:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                client.send_message(msg)
            return msg
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _settings(fake: FakeSlack, relay_port: int, **extra: str) -> dict[str, str]:
    return {
        "smtp_port": str(free_port()),
        "support_address": SUPPORT,
        "outbound_smtp_url": f"smtp://127.0.0.1:{relay_port}",
        "slack_bot_token": BOT_TOKEN,
        "slack_channel": "support",
        "slack_api_url": fake.base_url,
        **extra,
    }


def _check_reply(sink: MailSink, customer_mail: EmailMessage, text: str) -> None:
    mails = wait_for("the acknowledgment and the reply", lambda: len(sink.received) >= 2 or None)
    assert mails
    time.sleep(0.5)  # nothing more may come
    ack, reply = sink.mails()
    assert len(sink.received) == 2
    assert ack["Auto-Submitted"] == "auto-replied"
    assert reply["To"].addresses[0].addr_spec == "carol@example.org"
    assert reply["Subject"] == "Re: Cannot log in [#1]"
    assert reply["In-Reply-To"] == customer_mail["Message-ID"]
    references = reply["References"].split()
    assert references[0] == customer_mail["Message-ID"]
    assert ack["Message-ID"] in references
    assert reply["Message-ID"] not in references
    assert text in reply.get_body(("plain",)).get_content()


def test_mail_to_slack_and_a_thread_reply_back_to_mail(tmp_path: Path, fake_slack, sink):
    handler, relay_port = sink
    settings = _settings(fake_slack, relay_port, slack_signing_secret=SIGNING_SECRET)
    add_user(tmp_path, "agent@example.com", "agent", **settings)
    # The agent's Slack id comes from their Slack profile email (users.info).
    fake_slack.add_user(AGENT_SLACK, "agent@example.com")
    with serving(tmp_path, **settings) as server:
        customer_mail = _send_mail(int(settings["smtp_port"]))
        parent = wait_for("the ticket's Slack post", lambda: fake_slack.parents())[0]
        assert "Cannot log in" in json.dumps(parent.blocks)
        first = wait_for("the mail in the thread", lambda: fake_slack.thread(parent.ts))[0]
        assert "My password does not work." in first.text

        # Slack's request, signed; a forged one is refused.
        body = event_body(thread_reply(AGENT_SLACK, "Reset it at the portal.", parent.ts))
        url = f"{server.base}/slack/events"
        forged = requests.post(url, data=body, headers=signed_headers(body, secret="x"), timeout=10)
        assert forged.status_code == 401
        started = time.monotonic()
        ok = requests.post(url, data=body, headers=signed_headers(body), timeout=10)
        assert ok.status_code == 200 and time.monotonic() - started < 3
        again = requests.post(url, data=body, headers=signed_headers(body, retry_num=1), timeout=10)
        assert again.status_code == 200

        _check_reply(handler, customer_mail, "Reset it at the portal.")
        # The reply is in Slack already: nothing is posted back into the thread.
        assert len(fake_slack.thread(parent.ts)) == 1
        assert server.stop(signal.SIGTERM) == 0, server.output()


class SocketModeServer:
    """Slack's side of Socket Mode: hands envelopes to the connected app, collects acks."""

    def __init__(self) -> None:
        self.port = free_port()
        self.outbox: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/link"

    def send(self, envelope: dict[str, Any]) -> None:
        self.outbox.append(envelope)

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "num_connections": 1})
        self.connected.set()

        async def reader() -> None:
            async for message in ws:
                if message.type == web.WSMsgType.TEXT:
                    self.acks.append(json.loads(message.data))

        task = asyncio.ensure_future(reader())
        while not ws.closed:
            while self.outbox:
                await ws.send_json(self.outbox.pop(0))
            await asyncio.sleep(0.05)
        task.cancel()
        return ws

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/link", self._link)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._stop = asyncio.Event()
        self._loop.run_until_complete(self._stop.wait())
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> SocketModeServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


def test_socket_mode_thread_reply_back_to_mail(tmp_path: Path, fake_slack, sink):
    handler, relay_port = sink
    with SocketModeServer() as socket_server:
        fake_slack.socket_url = socket_server.url
        settings = _settings(fake_slack, relay_port, slack_app_token=APP_TOKEN)
        done = run(
            tmp_path,
            "user",
            "add",
            "agent@example.com",
            "--role",
            "agent",
            "--slack-id",
            AGENT_SLACK,
            **settings,
        )
        assert done.returncode == 0, done.stderr
        with serving(tmp_path, **settings) as server:
            assert socket_server.connected.wait(30), server.output()
            assert fake_slack.of("apps.connections.open")
            customer_mail = _send_mail(int(settings["smtp_port"]))
            parent = wait_for("the ticket's Slack post", lambda: fake_slack.parents())[0]
            body = json.loads(event_body(thread_reply(AGENT_SLACK, "Over the socket.", parent.ts)))
            socket_server.send(
                {
                    "envelope_id": "env-1",
                    "type": "events_api",
                    "accepts_response_payload": False,
                    "retry_attempt": 0,
                    "retry_reason": "",
                    "payload": body,
                }
            )
            wait_for("the envelope's ack", lambda: socket_server.acks)
            assert socket_server.acks[0]["envelope_id"] == "env-1"
            _check_reply(handler, customer_mail, "Over the socket.")
            assert server.stop(signal.SIGTERM) == 0, server.output()


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({}, "Slack is not configured"),
        (
            {"slack_bot_token": "xoxb-1", "slack_channel": "C0123456", "slack_signing_secret": "s"},
            "SUPPORTGATE_SLACK_APP_TOKEN is not set",
        ),
        ({"slack_bot_token": "xoxb-1"}, "SUPPORTGATE_SLACK_CHANNEL is required"),
    ],
)
def test_slack_command_refuses_bad_configuration_in_one_line(
    tmp_path: Path, settings: dict[str, str], needle: str
) -> None:
    done = run(tmp_path, "slack", **settings)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("supportgate:"), done.stderr
    assert needle in lines[0]
    assert "xoxb-1" not in done.stderr


def test_socket_mode_with_a_refused_app_token_stops_in_one_line(tmp_path: Path, fake_slack):
    done = run(
        tmp_path,
        "slack",
        slack_bot_token=BOT_TOKEN,
        slack_channel="support",
        slack_app_token="xapp-1-revoked",
        slack_api_url=fake_slack.base_url,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "supportgate: Slack refused SUPPORTGATE_SLACK_APP_TOKEN "
        "(apps.connections.open: invalid_auth)"
    ], lines
