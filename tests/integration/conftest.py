"""A real SMTP server on a free port, the in-process task runner, a relay sink."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller

from adapters.email.smtp_server import serve_smtp
from gateway.config import Settings
from gateway.db import Database
from gateway.inbound.addresses import SupportAddress
from tests.ports import free_port
from workers.handlers import TaskContext, handlers
from workers.inprocess import TaskRunner

SUPPORT = "support@help.example.com"


@dataclass
class Sink:
    """A local relay that records what Supportgate sends."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "raw": envelope.original_content,
            }
        )
        return "250 OK"


H = TypeVar("H")


@contextmanager
def local_relay(handler: H) -> Iterator[tuple[H, int]]:
    """``handler`` behind an aiosmtpd server on a free port; yields (handler, port)."""
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def relay() -> Iterator[tuple[Sink, int]]:
    with local_relay(Sink()) as served:
        yield served


@dataclass
class MailServer:
    port: int
    runner: TaskRunner
    settings: Settings

    def send(
        self,
        msg: EmailMessage | bytes,
        *,
        mail_from: str | None = None,
        to: list[str] | None = None,
    ) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            if isinstance(msg, bytes):
                return client.sendmail(mail_from or "someone@example.org", to or [SUPPORT], msg)
            return client.send_message(msg, from_addr=mail_from, to_addrs=to or [SUPPORT])

    def process(self) -> None:
        self.runner.drain()


@pytest.fixture
def mail_settings(settings: Settings, relay: tuple[Sink, int]) -> Settings:
    return Settings(
        **{
            **settings.model_dump(),
            "support_address": SUPPORT,
            "outbound_smtp_url": f"smtp://127.0.0.1:{relay[1]}",
            "max_message_bytes": 16 * 1024 * 1024,
        },
        _env_file=None,
    )


@pytest.fixture
def mail_server(mail_settings: Settings, db: Database) -> Iterator[MailServer]:
    port = free_port()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    async def main() -> None:
        await serve_smtp(
            db,
            SupportAddress.parse(SUPPORT),
            "127.0.0.1",
            port,
            max_message_bytes=mail_settings.max_message_bytes,
            stop=stop,
            ready=lambda _: ready.set(),
        )

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    runner = TaskRunner(db, handlers(TaskContext.create(mail_settings, db)), max_attempts=2)
    yield MailServer(port, runner, mail_settings)
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def make_mail(
    subject: str = "Printer on fire",
    body: str = "Hello,\n\nmy printer is on fire.\n\nAlice",
    sender: str = "Alice Example <alice@example.org>",
    to: str = SUPPORT,
    **headers: str,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="mail.example.org")
    msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg
