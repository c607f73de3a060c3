# ruff: noqa: RUF001 -- dashes, curly quotes and Cyrillic in expected values are the point
"""The inbound email parser: real client output, charsets, bounces, caps, the CPython corpus.

Samples live in tests/data/emails/*.eml (written as the clients send them);
the big and hostile inputs are built here.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters.email import parsing
from adapters.email.parsing import MAX_DEPTH, MAX_PARTS, parse_message
from gateway.inbound.message import Address, DeliveryReport, InboundMessage

EMAILS = Path(__file__).resolve().parents[1] / "data" / "emails"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
TNEF = bytes.fromhex("789f3e22") + bytes(range(256)) + b"IPM.Microsoft Mail.Note\x00" * 3


def load(name: str) -> bytes:
    return (EMAILS / name).read_bytes()


def parse(name: str) -> InboundMessage:
    message = parse_message(load(name))
    assert message.quarantined is None, message.defects
    return message


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- real clients ----------------------------------------------------------------


def test_gmail_alternative_inside_related_with_inline_image_and_attachment() -> None:
    message = parse("gmail_related.eml")

    assert message.message_id == "<CAF=kx7T2Zq9+abc_DEF-123@mail.gmail.com>"
    assert message.in_reply_to == ["<ticket-42.1@supportgate.example>"]
    assert message.references == [
        "<ticket-42.0@supportgate.example>",
        "<ticket-42.1@supportgate.example>",
    ]
    assert message.subject == "Re: La exportación falla [#42]"
    assert message.sender == Address(email="jose.garcia@gmail.com", name="José García")
    assert message.to == [Address(email="support@supportgate.example", name="Support")]
    assert message.cc == [
        Address(email="ops@example.com", name="Ops, Team"),
        Address(email="maria@example.com", name=""),
    ]
    assert message.date == datetime(2026, 11, 3, 10, 15, 42, tzinfo=timezone(timedelta(hours=1)))
    assert message.headers["return-path"] == "<jose.garcia@gmail.com>"
    assert message.text == (
        "Hola,\n\nLa exportación sigue fallando, ver captura:\n[image: captura.png]\n\n"
        "Gracias,\nJosé\n\nOn Tue, 3 Nov 2026 at 09:00, Support <support@supportgate.example>"
        " wrote:\n\n> Could you send a screenshot?\n>\n"
    )
    assert message.html is not None
    assert '<img src="cid:ii_lz9abc0"' in message.html
    assert "<script" not in message.html and "alert(1)" not in message.html
    image, pdf = message.attachments
    assert (image.filename, image.content_type, image.inline, image.content_id) == (
        "captura.png",
        "image/png",
        True,
        "ii_lz9abc0",
    )
    assert sha256(image.data) == sha256(PNG)
    assert (pdf.filename, pdf.content_type, pdf.inline, pdf.content_id) == (
        "factura-2026-114.pdf",
        "application/pdf",
        False,
        "f_lz9abc1",
    )
    assert pdf.data == PDF
    assert message.report is None
    assert message.defects == []


def test_outlook_windows_1252_odd_message_id_and_winmail_dat() -> None:
    message = parse("outlook_winmail.eml")

    # This Message-ID makes Python 3.11's policy.default raise IndexError.
    assert message.message_id == "<[B4D1C0A2]@EXCH01.corp.example>"
    assert message.in_reply_to == ["<ticket-7.0@supportgate.example>"]
    assert message.references == [
        "<ticket-7.0@supportgate.example>",
        "<ticket-7.1@supportgate.example>",
    ]
    assert message.subject == "Drucker – Fehler „E42“"
    assert message.sender == Address(email="siobhan.obrien@corp.example", name="O'Brien, Siobhán")
    assert message.date == datetime(2026, 11, 3, 9, 12, 1, tzinfo=UTC)
    assert message.headers["x-auto-response-suppress"] == "DR, OOF, AutoReply"
    assert message.text.startswith(
        "Hallo,\n\nder Drucker zeigt wieder „E42“ – Kosten bisher 120 €.\n\nGrüße\nSiobhán\n\n"
        "________________________________\nVon: Support <support@supportgate.example>\n"
    )
    assert "\r" not in message.text
    assert message.html is None
    [winmail] = message.attachments
    assert (winmail.filename, winmail.content_type, winmail.inline) == (
        "winmail.dat",
        "application/ms-tnef",
        False,
    )
    assert winmail.data == TNEF
    assert message.defects == []


def test_apple_mail_quoted_printable() -> None:
    message = parse("apple_qp.eml")

    assert message.message_id == "<A1B2C3D4-E5F6-4789-ABCD-EF0123456789@icloud.com>"
    assert message.sender == Address(email="alice@icloud.com", name="Alice Martin")
    assert message.text == (
        "That’s right, the invoice #2026-114 is wrong — it should be €1,250.00, not €1.250,00.\n"
        "\nThanks,\nAlice\n\n"
        "> On 3 Nov 2026, at 09:45, Support <support@supportgate.example> wrote:\n"
        "> \n> Could you confirm the amount?\n"
    )
    assert message.html is not None
    assert message.html.startswith("That’s right, the invoice #2026-114 is wrong — it should be")
    assert "<blockquote>" in message.html
    assert message.attachments == []


def test_thunderbird_flowed_text_and_attachments() -> None:
    message = parse("thunderbird_attachment.eml")

    assert message.subject == "Rechnung für März fehlt"
    assert message.sender == Address(email="juergen@example.org", name="Jürgen Müller")
    assert message.text == (
        "Hallo,\n\ndie Rechnung für März fehlt in meinem Kundenkonto. Im Anhang ein Screenshot "
        "und das Protokoll.\n\nViele Grüße\nJürgen\n\nOn 11/2/26 4:30 PM, Support wrote:\n"
        "> Please attach the log.\n"
    )
    pdf, log = message.attachments
    assert (pdf.filename, pdf.content_type, pdf.data) == (
        "Rechnung März.pdf",
        "application/pdf",
        PDF,
    )
    # A text/plain part with Content-Disposition: attachment is a file, not the body.
    assert (log.filename, log.content_type) == ("server.log", "text/plain")
    assert log.data == (
        b"2026-11-03 10:00:00 ERROR export failed: timeout\n2026-11-03 10:00:05 INFO retry\n"
    )
    assert "ERROR" not in message.text


def test_iso_2022_jp() -> None:
    message = parse("iso2022jp.eml")

    assert message.subject == "請求書について"
    assert message.sender == Address(email="taro@example.jp", name="山田 太郎")
    assert message.text == "お世話になっております。\n請求書の件でご連絡しました。\n山田\n"
    assert message.defects == []


def test_koi8_r() -> None:
    message = parse("koi8r.eml")

    assert message.subject == "Проблема с доступом"
    assert message.sender == Address(email="ivan@example.ru", name="Иван Петров")
    assert message.text == "Здравствуйте!\nНе могу войти в личный кабинет.\n-- \nИван\n"


@pytest.mark.parametrize(
    ("raw_subject", "expected"),
    [
        (b"=?ISO-8859-1?Q?Caf=E9_cr=E8me?=", "Café crème"),
        (b"=?utf-8?B?8J+agCBMYXVuY2g=?=", "🚀 Launch"),
        (b"=?gb2312?B?xOO6ww==?=", "你好"),
        (b"=?koi8-r?b?8NLJ18XU?=", "Привет"),
        (b"=?iso-2022-jp?b?GyRCJDMkcyRLJEEkTxsoQg==?=", "こんにちは"),
        (b"=?windows-1252?Q?=93quoted=94_=96_text?=", "“quoted” – text"),
        (b"=?UTF-8?Q?Re:_?= =?UTF-8?Q?M=C3=A4rz?=", "Re: März"),
        (b"Hello =?utf-8?q?W=C3=B6rld?= again", "Hello Wörld again"),
        (b"Re: a subject folded\r\n over two lines", "Re: a subject folded over two lines"),
        ("Grüße in raw UTF-8".encode(), "Grüße in raw UTF-8"),
    ],
)
def test_rfc2047_subjects(raw_subject: bytes, expected: str) -> None:
    raw = b"From: a@example.com\r\nSubject: " + raw_subject + b"\r\n\r\nbody\r\n"
    assert parse_message(raw).subject == expected


def test_subject_with_unknown_encoded_word_charset_does_not_lose_the_rest() -> None:
    message = parse_message(b"Subject: =?x-nonsense?Q?abc?= and more\n\nbody\n")
    assert message.subject.endswith("and more")


def test_dsn_bounce_with_original_message() -> None:
    raw = load("dsn_bounce.eml")
    message = parse("dsn_bounce.eml")

    assert message.report == DeliveryReport(
        original_message_id="<ticket-7.3@supportgate.example>",
        recipients=["nobody@nowhere.example"],
        action="failed",
        status="5.1.1",
        diagnostic="550 5.1.1 <nobody@nowhere.example>: Recipient address rejected: User unknown",
    )
    assert message.headers["return-path"] == "<>"
    assert message.sender == Address(email="mailer-daemon@mx.supportgate.example", name="")
    assert message.text.startswith("This is the mail system at host mx.supportgate.example.\n")
    status, original = message.attachments
    assert (status.content_type, original.content_type) == (
        "message/delivery-status",
        "message/rfc822",
    )
    assert original.filename.endswith(".eml")
    start = raw.index(b"Return-Path: <support+t7k2m9")
    end = raw.index(b"\n--5A2B01C4E3.1762165802/mx.supportgate.example--")
    assert original.data == raw[start:end]


def test_dsn_bounce_with_headers_only() -> None:
    message = parse("dsn_headers_only.eml")

    assert message.report == DeliveryReport(
        original_message_id="<ticket-12.1@supportgate.example>",
        recipients=["gone@example.com"],
        action="failed",
        status="5.1.1",
        diagnostic="550-5.1.1 The email account that you tried to reach does not exist.",
    )
    assert [a.content_type for a in message.attachments] == [
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_auto_reply_headers_are_exposed() -> None:
    message = parse("auto_reply.eml")

    assert message.headers == {
        "auto-submitted": "auto-replied",
        "x-autoreply": "yes",
        "x-auto-response-suppress": "All",
        "precedence": "bulk",
        "content-type": 'text/plain; charset="us-ascii"',
    }
    assert message.text == "I am out of the office until 10 November and will reply on my return.\n"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_forwarded_messages_keep_their_original_bytes(newline: bytes) -> None:
    raw = load("forwarded.eml").replace(b"\n", newline)
    message = parse_message(raw)

    assert message.text == "FYI, the two messages below.\n"
    first, second = message.attachments
    assert (first.filename, first.content_type) == ("Order confirmation.eml", "message/rfc822")
    # Long unfolded headers and "Subject:" without a space: regenerating would change them.
    start = raw.index(b"Received: from shop.example")
    assert first.data == raw[start : raw.index(newline + b"--fwd-outer" + newline, start)]
    assert (second.filename, second.content_type) == ("attachment-2.eml", "message/rfc822")
    start = raw.index(b"From: Dave")
    assert second.data == raw[start : raw.index(newline + b"--fwd-outer--", start)]
    assert parse_message(first.data).message_id == "<order-1001@shop.example>"
    assert message.defects == []


def test_forwarded_message_bytes_are_regenerated_when_they_cannot_be_located(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parsing, "raw_bodies", lambda raw, tree, wanted: {})
    message = parse_message(load("forwarded.eml"))

    first, second = message.attachments
    assert parse_message(first.data).message_id == "<order-1001@shop.example>"
    assert parse_message(second.data).text == "Second forwarded body, 8-bit: Grüße"
    assert message.defects == ["part 2: bytes regenerated", "part 6: bytes regenerated"]


def test_html_only_message_gets_sanitised_html_and_text() -> None:
    message = parse("html_only.eml")

    assert message.html == (
        "<p>Schöne Grüße,</p><ul><li>Erstens</li><li>Zweitens</li></ul>"
        '<p><a rel="noopener noreferrer nofollow">Klick</a> und '
        '<a href="https://shop.example/" rel="noopener noreferrer nofollow">Shop</a></p>\n'
    )
    assert message.text == "Schöne Grüße,\n\n- Erstens\n- Zweitens\n\nKlick und Shop"


def test_unknown_charset_falls_back_with_a_defect() -> None:
    message = parse("unknown_charset.eml")

    assert message.text == "Grüße aus dem Büro"
    assert message.defects == ["part 1: unknown charset 'x-klingon', read as UTF-8/windows-1252"]
    notes, blob = message.attachments
    assert (notes.filename, notes.data) == ("notes.txt", b"notes")
    assert (blob.filename, blob.content_type, blob.data) == (
        "attachment-2.bin",
        "application/octet-stream",
        b"\x01\x02\x03",
    )


def test_wrong_charset_replaces_undecodable_bytes_with_a_defect() -> None:
    message = parse("wrong_charset.eml")

    assert message.text == "Caf\ufffd cr\ufffdme\n"
    assert message.defects == ["message: text is not valid utf-8, undecodable bytes replaced"]


@pytest.mark.parametrize(
    ("charset", "body", "expected"),
    [
        (b"iso-8859-1", "“smart” quotes – 5 €".encode("cp1252"), "“smart” quotes – 5 €"),
        (b"us-ascii", "Grüße".encode(), "Grüße"),
        (b"gb2312", "你好𠀀".encode("gb18030"), "你好𠀀"),
        (b"shift_jis", "①番".encode("cp932"), "①番"),
        (b"ks_c_5601-1987", "똠".encode("cp949"), "똠"),
        (b"utf-7", "£1 café".encode("utf-7"), "£1 café"),
        (b"windows-1251", "Привет".encode("cp1251"), "Привет"),
        (b'"UTF-8"', "\ufeffquoted label".encode(), "quoted label"),
    ],
)
def test_body_charsets_and_their_supersets(charset: bytes, body: bytes, expected: str) -> None:
    raw = b"Content-Type: text/plain; charset=" + charset + b"\n\n" + body
    message = parse_message(raw)
    assert message.text == expected
    assert message.defects == []


def test_html_without_charset_parameter_uses_its_meta_charset() -> None:
    html = '<html><head><meta charset="windows-1251"></head><body>Привет</body></html>'
    message = parse_message(b"Content-Type: text/html\n\n" + html.encode("cp1251"))
    assert (message.html, message.text) == ("Привет", "Привет")


def test_ten_megabyte_attachment_is_kept_byte_for_byte() -> None:
    payload = random.Random(7).randbytes(10 * 1024 * 1024)
    encoded = base64.encodebytes(payload)
    raw = (
        b"From: big@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="big"\r\n\r\n'
        b"--big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
        b"--big\r\nContent-Type: application/zip\r\n"
        b'Content-Disposition: attachment; filename="dump.zip"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--big--\r\n"
    )
    message = parse_message(raw)

    assert message.text == "See attached."
    [dump] = message.attachments
    assert dump.filename == "dump.zip"
    assert sha256(dump.data) == sha256(payload)


# -- details ------------------------------------------------------------------------


def _with_attachment(disposition: bytes, content_type: bytes = b"application/pdf") -> bytes:
    return (
        b"From: a@example.com\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nhi\n'
        b"--b\nContent-Type: " + content_type + b"\nContent-Disposition: " + disposition + b"\n\n"
        b"data\n--b--\n"
    )


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        (b'attachment; filename="../../etc/passwd"', "passwd"),
        (b'attachment; filename="C:\\\\temp\\\\report.pdf"', "report.pdf"),
        (b'attachment; filename=".."', "attachment-1.pdf"),
        (b'attachment; filename=""', "attachment-1.pdf"),
        (b"attachment", "attachment-1.pdf"),
        (b'attachment; filename="a\x01b\x7f.pdf"', "ab.pdf"),
        (
            b"attachment; filename*0*=UTF-8''Bericht%20;\n filename*1*=M%C3%A4rz.pdf",
            "Bericht März.pdf",
        ),
        (b'attachment; filename="=?ISO-8859-1?Q?Gr=FC=DFe.pdf?="', "Grüße.pdf"),
        ('attachment; filename="Grüße.pdf"'.encode(), "Grüße.pdf"),
        (b'attachment; filename="' + b"x" * 300 + b'.pdf"', "x" * 251 + ".pdf"),
    ],
)
def test_attachment_file_names_are_decoded_and_safe(disposition: bytes, expected: str) -> None:
    [attachment] = parse_message(_with_attachment(disposition)).attachments
    assert attachment.filename == expected
    assert attachment.data == b"data"


def test_inline_image_without_content_id_reference_is_inline_by_disposition() -> None:
    raw = _with_attachment(b'inline; filename="photo.jpg"', b"image/jpeg")
    [photo] = parse_message(raw).attachments
    assert (photo.filename, photo.inline, photo.content_id) == ("photo.jpg", True, None)


@pytest.mark.parametrize(
    ("header", "message_id", "references"),
    [
        (b"<a@b.example>", "<a@b.example>", ["<a@b.example>"]),
        (b"a@b.example", "<a@b.example>", ["<a@b.example>"]),
        (b"<a@b.example> (comment)", "<a@b.example>", ["<a@b.example>"]),
        (b"<a@b.example>,<c@d.example>", "<a@b.example>", ["<a@b.example>", "<c@d.example>"]),
        (b"<a@b.example>\r\n\t<c@d.example>", "<a@b.example>", ["<a@b.example>", "<c@d.example>"]),
        (b"<@DB7PR04MB5051.eurprd04.outlook.com>", "<@DB7PR04MB5051.eurprd04.outlook.com>",
         ["<@DB7PR04MB5051.eurprd04.outlook.com>"]),
        (b"<abc@host", "<abc@host>", ["<abc@host>"]),
        (b"<>", None, []),
        (b"no-at-sign", "<no-at-sign>", []),
    ],
)  # fmt: skip
def test_message_ids_are_normalised(
    header: bytes, message_id: str | None, references: list[str]
) -> None:
    raw = b"Message-ID: " + header + b"\r\nReferences: " + header + b"\r\n\r\nbody\r\n"
    message = parse_message(raw)
    assert (message.message_id, message.references) == (message_id, references)


def test_date_without_zone_is_utc_and_garbage_is_none() -> None:
    naive = parse_message(b"Date: Tue, 3 Nov 2026 10:00:00 -0000\n\nx\n")
    assert naive.date == datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
    garbage = parse_message(b"Date: the day after tomorrow\n\nx\n")
    assert garbage.date is None
    assert "header Date unparseable" in garbage.defects


def test_nul_bytes_never_reach_the_text() -> None:
    message = parse_message(b"Subject: a\x00b\nContent-Type: text/plain\n\nnul\x00here\n")
    assert "\x00" not in message.text and "\x00" not in message.subject
    assert message.text == "nul\ufffdhere\n"


def test_message_without_any_text_part() -> None:
    raw = _with_attachment(b'attachment; filename="scan.png"', b"image/png").replace(
        b"--b\nContent-Type: text/plain\n\nhi\n", b""
    )
    message = parse_message(raw)
    assert (message.text, message.html) == ("", None)
    assert [a.filename for a in message.attachments] == ["scan.png"]


# -- caps -------------------------------------------------------------------------------


def _elapsed(raw: bytes) -> tuple[InboundMessage, float]:
    start = time.perf_counter()
    message = parse_message(raw)
    return message, time.perf_counter() - start


def test_400_kib_to_header_is_dropped_quickly() -> None:
    recipients = ",\r\n ".join(f"User {i} <user{i}@example.com>" for i in range(12_000))
    raw = (
        b"From: a@example.com\r\nTo: " + recipients.encode() + b"\r\nSubject: many\r\n\r\nhello\r\n"
    )
    assert len(raw) > 400 * 1024

    message, elapsed = _elapsed(raw)

    assert elapsed < 0.5
    assert message.quarantined is None
    assert (message.to, message.subject, message.text) == ([], "many", "hello\n")
    assert any(d.startswith("message: header To dropped") for d in message.defects)


def test_huge_content_type_parameters_do_not_cost_cpu() -> None:
    # compat32's parameter parser is quadratic in quoted semicolons.
    raw = (
        b'From: a@example.com\nContent-Type: multipart/mixed; boundary="b"\n\n'
        b'--b\nContent-Type: text/plain; x="' + b";" * 7000 + b'"\n\nhi\n'
        b'--b\nContent-Type: text/plain; y="' + b";" * 400_000 + b'"\n\nthere\n--b--\n'
    )
    message, elapsed = _elapsed(raw)

    assert elapsed < 0.5
    assert message.text == "hi\nthere"
    assert any("parameters after the 64th ignored" in d for d in message.defects)
    assert any("header Content-Type dropped" in d for d in message.defects)


def _nested(depth: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="n%d"\n\n--n%d\n' % (i, i) for i in range(depth)
    )
    closing = b"".join(b"\n--n%d--" % i for i in reversed(range(depth)))
    return b"From: a@example.com\nSubject: deep\n" + opening + b"\ninnermost" + closing + b"\n"


def test_nesting_at_the_cap_is_read() -> None:
    message = parse_message(_nested(MAX_DEPTH))
    assert message.quarantined is None
    assert message.text == "innermost"


def test_nesting_depth_150_is_quarantined() -> None:
    message = parse_message(_nested(150))
    assert message.quarantined == "MIME nesting deeper than 100 levels"
    assert (message.subject, message.sender) == ("deep", Address(email="a@example.com"))


def test_nesting_beyond_python_recursion_is_quarantined() -> None:
    message = parse_message(_nested(3000))
    assert message.quarantined is not None
    assert message.subject == "deep"


def _parts(count: int) -> bytes:
    body = b"".join(
        b"--p\nContent-Type: application/octet-stream\n\n%d\n" % i for i in range(count)
    )
    return (
        b'From: a@example.com\nSubject: parts\nContent-Type: multipart/mixed; boundary="p"\n\n'
        + body
        + b"--p--\n"
    )


def test_10000_parts_are_read() -> None:
    message = parse_message(_parts(MAX_PARTS))
    assert message.quarantined is None
    assert len(message.attachments) == MAX_PARTS


def test_10001_parts_are_quarantined() -> None:
    message = parse_message(_parts(MAX_PARTS + 1))
    assert message.quarantined == "more than 10000 MIME parts"
    assert message.subject == "parts"
    assert message.attachments == []


def test_input_that_is_not_bytes_is_quarantined_not_raised() -> None:
    message = parse_message("From: a@example.com\n\nnot bytes")  # type: ignore[arg-type]
    assert message.quarantined is not None


# -- the CPython email test corpus --------------------------------------------------------


def _cpython_corpus() -> list[Path]:
    try:
        import test  # the stdlib's own test package; some distributions split it out
    except ImportError:
        files: list[Path] = []
    else:
        files = sorted(Path(test.__file__).parent.glob("test_email/data/msg_*.txt"))
    if not files:
        reason = "CPython's test package (test/test_email/data/msg_*.txt) is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return files


def test_cpython_email_corpus_parses_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for path in _cpython_corpus():
        raw = bytearray(path.read_bytes())
        before = bytes(raw)

        message = parse_message(raw)  # type: ignore[arg-type]

        assert bytes(raw) == before, path.name
        assert isinstance(message, InboundMessage), path.name
        assert message.quarantined is None, (path.name, message.defects)
        assert isinstance(message.text, str), path.name
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert problems == []


# -- fuzzing ---------------------------------------------------------------------------------

SEEDS = [path.read_bytes() for path in sorted(EMAILS.glob("*.eml"))]
TOKENS = [
    b"\n",
    b"\r\n",
    b"\n\n",
    b"--",
    b"=?utf-8?q?",
    b"?=",
    b"=\n",
    b"boundary=",
    b'Content-Type: multipart/mixed; boundary="x"\n',
    b"Content-Type: message/rfc822\n",
    b"Content-Transfer-Encoding: base64\n",
    b"charset=x-bogus",
    b"filename*=utf-8''%ff",
    b":",
    b";",
    b'"',
    b"<",
    b">",
    b"\x00",
    b"\xff\xfe",
]


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        operation = draw(st.sampled_from(["set", "insert", "delete", "repeat", "truncate"]))
        position = draw(st.integers(0, len(data)))
        if operation == "set" and data:
            data[min(position, len(data) - 1)] = draw(st.integers(0, 255))
        elif operation == "insert":
            data[position:position] = draw(st.sampled_from(TOKENS) | st.binary(max_size=16))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif operation == "repeat":
            data[position:position] = data[position : position + draw(st.integers(1, 256))]
        else:
            del data[position:]
    return bytes(data)


def _check_invariants(message: InboundMessage) -> None:
    assert isinstance(message, InboundMessage)
    assert isinstance(message.text, str)
    assert message.quarantined is None or not message.quarantined.startswith("parser error")
    for value in [message.text, message.subject, message.html or "", *message.headers.values()]:
        assert "\x00" not in value
        value.encode("utf-8")  # no lone surrogates: storable as text
    assert all(isinstance(a.data, bytes) and a.filename for a in message.attachments)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(raw: bytes) -> None:
    _check_invariants(parse_message(raw))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_mutated_real_messages_never_raise(raw: bytes) -> None:
    _check_invariants(parse_message(raw))


# -- simple address lists: read without the policy's parser, read the same ----------

_ATOMS = st.from_regex(r"\A[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,10}\Z")
_SPEC = st.builds(lambda a, b: f"{a}@{b}", _ATOMS, _ATOMS)
_MAILBOX = st.one_of(
    _SPEC,
    st.builds(lambda n, a: f"{n} <{a}>", st.from_regex(r"\A[ -~]{0,20}\Z"), _SPEC),
    st.builds(lambda n, a: f'"{n}" <{a}>', st.from_regex(r"\A[ -~]{0,20}\Z"), _SPEC),
    st.builds(lambda n, a: f"{n}<{a}>", st.from_regex(r"\A[A-Za-z0-9 .]{0,12}\Z"), _SPEC),
    st.from_regex(r"\A[ -~]{0,30}\Z"),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_MAILBOX, min_size=1, max_size=3), st.sampled_from([",", ", ", " , "]))
def test_simple_address_lists_read_as_the_policy_reads_them(mailboxes, sep):
    from email import policy

    from adapters.email.header_values import simple_mailboxes

    value = sep.join(mailboxes)
    fast = simple_mailboxes(value)
    event("simple" if fast is not None else "through the policy")
    if fast is None:
        return
    header = policy.default.header_fetch_parse("to", value)
    assert not header.defects, (value, header.defects)
    assert fast == [(a.display_name, a.addr_spec) for a in header.addresses]


def test_the_usual_senders_are_simple():
    from adapters.email.header_values import simple_mailboxes

    assert simple_mailboxes('"Customer w 12" <customer.w.12@example.org>') == [
        ("Customer w 12", "customer.w.12@example.org")
    ]
    assert simple_mailboxes("Ana Lima <ana@example.org>, bo@example.org") == [
        ("Ana Lima", "ana@example.org"),
        ("", "bo@example.org"),
    ]
    for odd in (
        "=?utf-8?q?Zo=C3=AB?= <zoe@example.org>",
        '"Lima, Ana" <ana@example.org>',
        "ana@example.org (Ana)",
        "Friends: a@example.org, b@example.org;",
        "Zoë <zoe@example.org>",
        '"Ana \\"the boss\\"" <ana@example.org>',
    ):
        assert simple_mailboxes(odd) is None, odd


# -- multipart boundaries matched without compiling a regex each ----------------------


def _corpus() -> list[Path]:
    from tests.integration.test_corpus import corpus

    return corpus() + sorted((Path(__file__).parents[1] / "data" / "emails").glob("*.eml"))


def _parsed(raw: bytes) -> tuple:
    from email.parser import BytesParser
    from email.policy import compat32

    tree = BytesParser(policy=compat32).parsebytes(raw)
    return (
        tree.as_bytes(),
        [(p.get_content_type(), p.preamble, p.epilogue) for p in tree.walk()],
        [[type(d).__name__ for d in p.defects] for p in tree.walk()],
    )


def test_the_mime_parser_reads_every_corpus_message_as_with_compiled_boundaries():
    from adapters.email import boundaries

    files = _corpus()
    assert len(files) > 40
    ours = [_parsed(path.read_bytes()) for path in files]
    boundaries.uninstall()
    try:
        theirs = [_parsed(path.read_bytes()) for path in files]
    finally:
        boundaries.install()
    multipart = 0
    for path, a, b in zip(files, ours, theirs, strict=True):
        assert a == b, path.name
        multipart += any(t.startswith("multipart/") for t, _, _ in a[1])
    assert multipart > 20


@pytest.mark.parametrize(
    "boundary",
    ["simple", "===============123==", "a.b+c?(d)*[e]{f}|g^h$i\\j", "with space", "--dashes--"],
)
def test_a_boundary_matcher_matches_what_the_compiled_pattern_matches(boundary):
    import re

    from adapters.email.boundaries import boundary_matcher

    separator = "--" + boundary
    pattern = (
        "(?P<sep>" + re.escape(separator) + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
    )
    matcher, compiled = boundary_matcher(pattern), re.compile(pattern)
    assert matcher is not None and matcher.separator == separator
    for line in (
        separator,
        separator + "\r\n",
        separator + "--\n",
        separator + "-- \t\r",
        separator + "x\n",
        " " + separator + "\n",
        separator[:-1] + "\n",
        separator + "\n\n",
        "",
    ):
        ours, theirs = matcher.match(line), compiled.match(line)
        assert (ours is None) == (theirs is None), line
        if ours is not None:
            assert [ours.group(g) for g in ("end", "ws", "linesep")] == [
                theirs.group(g) for g in ("end", "ws", "linesep")
            ]
    assert boundary_matcher(r"(?P<other>x)") is None
    assert boundary_matcher("(?P<sep>x)", re.IGNORECASE) is None
