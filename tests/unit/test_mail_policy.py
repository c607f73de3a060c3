"""The cached header registry: same headers as the stdlib's, one class per registry entry."""

from __future__ import annotations

from email import policy
from email.headerregistry import UnstructuredHeader
from email.message import EmailMessage

import pytest

from gateway.mail_policy import DEFAULT, SMTP, CachedHeaderRegistry

HEADERS = [
    ("From", '"Zoë Müller" <zoe@example.org>'),
    ("To", "a@example.org, Group: b@example.org, c@example.org;"),
    ("Subject", "=?utf-8?q?Caf=C3=A9?= order [#12]"),
    ("Date", "Fri, 27 Nov 2026 13:00:00 +0100"),
    ("Message-ID", "<abc.123@example.org>"),
    ("Content-Type", 'text/plain; charset="iso-8859-1"'),
    ("X-Anything", "  odd\tvalue "),
]


@pytest.mark.parametrize(("name", "value"), HEADERS)
def test_parses_as_the_stdlib_does(name: str, value: str) -> None:
    ours = DEFAULT.header_fetch_parse(name, value)
    theirs = policy.default.header_fetch_parse(name, value)
    assert str(ours) == str(theirs)
    assert type(ours).__mro__[1:] == type(theirs).__mro__[1:]
    assert [str(d) for d in ours.defects] == [str(d) for d in theirs.defects]
    assert ours.fold(policy=DEFAULT) == theirs.fold(policy=policy.default)


def test_one_class_per_entry() -> None:
    registry = CachedHeaderRegistry()
    assert registry["Subject"] is registry["subject"]
    assert registry["X-One"] is registry["X-Two"]  # both the default class
    assert registry["From"] is not registry["Subject"]


def test_remapping_a_name_builds_its_class_again() -> None:
    registry = CachedHeaderRegistry()
    before = registry["X-Ticket"]
    registry.map_to_type("x-ticket", UnstructuredHeader)
    assert registry["X-Ticket"] is not before
    assert issubclass(registry["X-Ticket"], UnstructuredHeader)


def test_messages_come_out_the_same() -> None:
    def build(pol: policy.EmailPolicy) -> bytes:
        msg = EmailMessage(policy=pol)
        for name, value in HEADERS[:5]:
            msg[name] = value
        msg.set_content("Grüße\n")
        return msg.as_bytes()

    assert build(SMTP) == build(policy.SMTP.clone(cte_type="7bit"))


def test_outgoing_mail_is_seven_bit() -> None:
    msg = EmailMessage(policy=SMTP)
    msg["Subject"] = "Grüße"
    msg.set_content("Grüße aus Köln\n")
    msg.add_alternative("<p>Grüße — 日本語</p>", subtype="html")
    raw = msg.as_bytes()
    assert raw.isascii()
    assert b"Content-Transfer-Encoding: 8bit" not in raw
