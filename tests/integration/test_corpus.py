"""Every message of CPython's own email corpus goes through the gateway.

Each one is delivered over a real SMTP session, stored, and ingested by the
task; none may crash or be lost: it becomes a ticket or a message, or, for a
bounce or auto-reply that names no ticket of ours, is kept and ignored as the
contract orders (such mail never opens a ticket). No error may be logged.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.inbound.models import InboundMail

IN_CI = os.environ.get("CI", "").lower() == "true"


def corpus() -> list[Path]:
    try:
        import test  # the standard library's own test package
    except ImportError:
        return []
    return sorted((Path(test.__file__).parent / "test_email" / "data").glob("msg_*.txt"))


def test_the_corpus_is_there():
    if not corpus():
        if IN_CI:
            pytest.fail("CPython's test package (test/test_email/data) is missing")
        pytest.skip("CPython's test package is not installed")
    assert len(corpus()) >= 40


def test_every_corpus_message_becomes_a_ticket_or_a_message(mail_server, db, caplog):
    files = corpus()
    if not files:
        pytest.skip("CPython's test package is not installed")
    caplog.set_level(logging.ERROR)
    for path in files:
        raw = re.sub(rb"\r?\n", b"\r\n", path.read_bytes())
        refused = mail_server.send(raw, mail_from="corpus@example.org")
        assert refused == {}, path.name
    mail_server.process()
    with db.transaction() as s:
        rows = s.execute(select(InboundMail.state, InboundMail.outcome, InboundMail.raw)).all()
    assert len(rows) == len(files)
    sent = {re.sub(rb"\r?\n", b"\r\n", p.read_bytes()) for p in files}
    assert {raw for _, _, raw in rows} <= sent | {r + b"\r\n" for r in sent}
    for state, outcome, _ in rows:
        assert state in ("processed", "duplicate", "ignored"), outcome
        if state == "ignored":
            assert outcome["reason"].startswith(("bounce", "auto-reply")), outcome
    processed = [o for s, o, _ in rows if s == "processed"]
    assert len(processed) >= len(files) - 10
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
