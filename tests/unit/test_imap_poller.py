"""Pure parts of the IMAP poller: the URL, mailbox names, backoff, response parsing."""

from __future__ import annotations

import asyncio

import pytest
from aioimaplib import Response

from adapters.email.imap_client import (
    CommandRefused,
    ImapProtocol,
    fetched_body,
    parse_select,
    search_uids,
)
from adapters.email.imap_poller import (
    PROCESSED_KEYWORD,
    Backoff,
    _from_db,
    _to_db,
    envelope_from_headers,
    processed_flag,
)
from adapters.email.imap_url import InvalidImapUrl, encode_mailbox, parse_imap_url
from gateway.errors import ConfigurationError

# -- SUPPORTGATE_IMAP_URL ------------------------------------------------------


def test_full_url_is_decoded() -> None:
    config = parse_imap_url(
        "imap://help%40example.com:p%40ss%3Aw%2Fd%20x@Mail.Example.COM:1143/Support%2FEU"
        "?move_to=Done&poll_interval=5&idle=false"
    )
    assert (config.host, config.port, config.tls) == ("mail.example.com", 1143, False)
    assert (config.user, config.password) == ("help@example.com", "p@ss:w/d x")
    assert (config.mailbox, config.move_to) == ("Support/EU", "Done")
    assert (config.poll_interval, config.idle) == (5.0, False)


@pytest.mark.parametrize(
    ("url", "port", "tls"),
    [("imap://u:p@host", 143, False), ("imaps://u:p@host/", 993, True)],
)
def test_defaults(url: str, port: int, tls: bool) -> None:
    config = parse_imap_url(url)
    assert (config.port, config.tls, config.mailbox) == (port, tls, "INBOX")
    assert (config.move_to, config.poll_interval, config.idle) == (None, 30.0, True)


def test_inbox_is_one_mailbox_whatever_its_case() -> None:
    assert parse_imap_url("imap://u:p@h/inbox").key == parse_imap_url("imap://u:p@h:143/").key


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (None, "not set"),
        ("   ", "not set"),
        ("http://u:p@host/", "imap:// or imaps://"),
        ("imap:///INBOX", "no host"),
        ("imap://u:p@host:99999/", "port"),
        ("imap://u:p@host:abc/", "port"),
        ("imap://host/", "user and password"),
        ("imap://u@host/", "user and password"),
        ("imap://u:p@host/?folder=x", "unknown option 'folder'"),
        ("imap://u:p@host/?poll_interval=0", "poll_interval"),
        ("imap://u:p@host/?poll_interval=soon", "poll_interval"),
        ("imap://u:p@host/?idle=maybe", "idle must be true or false"),
        ("imap://u:p@host/Support?move_to=Support", "another folder"),
        ("imap://u:p@host/?move_to=", "move_to must not be empty"),
        ("imap://u:p@host/a%0Ab", "control characters"),
        ("imap://u:p@host/#x", "fragment"),
    ],
)
def test_invalid_urls_say_why(url: str | None, reason: str) -> None:
    with pytest.raises(InvalidImapUrl) as caught:
        parse_imap_url(url)
    message = str(caught.value)
    assert message.startswith("invalid configuration: SUPPORTGATE_IMAP_URL: ")
    assert reason in message
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ConfigurationError)


def test_the_password_never_shows() -> None:
    config = parse_imap_url("imaps://bob:Tr0ub4dor@host/INBOX")
    assert "Tr0ub4dor" not in repr(config)
    assert "Tr0ub4dor" not in config.redacted()
    assert "Tr0ub4dor" not in config.key
    with pytest.raises(InvalidImapUrl) as caught:
        parse_imap_url("imaps://bob:Tr0ub4dor@host:0x/INBOX")
    assert "Tr0ub4dor" not in str(caught.value)


def test_long_mailbox_keys_are_hashed_to_fit_source_ref() -> None:
    config = parse_imap_url(f"imap://u:p@host/{'x' * 250}")
    assert config.key.startswith("sha256:")
    assert len(f"imap:{config.key}:{2**32 - 1}:{2**32 - 1}") <= 200
    short = parse_imap_url("imap://u:p@[::1]:10143/INBOX")
    assert short.key == "u@[::1]:10143/INBOX"


# -- mailbox names on the wire -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("INBOX", '"INBOX"'),
        ("Tom & Jerry", '"Tom &- Jerry"'),
        ("~peter/mail/台北/日本語", '"~peter/mail/&U,BTFw-/&ZeVnLIqe-"'),  # RFC 3501 5.1.3
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
    ],
)
def test_mailbox_names_are_quoted_modified_utf7(name: str, wire: str) -> None:
    assert encode_mailbox(name) == wire


# -- backoff -------------------------------------------------------------------


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.next_delay() for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1.0


# -- server answers (as aioimaplib hands them over) ---------------------------


def test_select_reports_uidvalidity_and_keyword_support() -> None:
    lines = [
        b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.",
        b"3 EXISTS",
        b"OK [UIDVALIDITY 3857529045] UIDs valid",
        b"[READ-WRITE] Select completed.",
    ]
    selected = parse_select(Response("OK", lines))
    assert (selected.uidvalidity, selected.keywords, selected.read_only) == (
        3857529045,
        True,
        False,
    )
    assert processed_flag(selected) == PROCESSED_KEYWORD


def test_without_keywords_the_processed_flag_is_seen() -> None:
    lines = [
        b"OK [PERMANENTFLAGS (\\Deleted \\Seen)] Limited",
        b"OK [UIDVALIDITY 7] UIDs valid",
        b"[READ-ONLY] Select completed.",
    ]
    selected = parse_select(Response("OK", lines))
    assert (selected.keywords, selected.read_only, processed_flag(selected)) == (
        False,
        True,
        "\\Seen",
    )


def test_select_without_uidvalidity_is_an_error() -> None:
    with pytest.raises(CommandRefused, match="UIDVALIDITY"):
        parse_select(Response("OK", [b"2 EXISTS", b"Select completed."]))


def testsearch_uids() -> None:
    assert search_uids(Response("OK", [b"4 5 9", b"Search completed."])) == [4, 5, 9]
    assert search_uids(Response("OK", [b"", b"Search completed."])) == []


def test_fetched_body_picks_the_literal_of_our_uid() -> None:
    raw = bytearray(b"Subject: x\r\n\r\nhi\r\n")
    unsolicited = b"2 FETCH (FLAGS (\\Seen))"
    answer = [unsolicited, b"1 FETCH (UID 7 BODY[] {19}", raw, b")", b"Fetch completed."]
    assert fetched_body(Response("OK", answer), 7) == bytes(raw)
    assert fetched_body(Response("OK", answer), 8) is None
    uid_after = [b"1 FETCH (BODY[] {19}", raw, b" UID 7)", b"Fetch completed."]
    assert fetched_body(Response("OK", uid_after), 7) == bytes(raw)
    assert fetched_body(Response("OK", [b"Fetch completed."]), 7) is None


def test_exists_is_noticed_even_split_across_reads() -> None:
    async def feed(*chunks: bytes) -> bool:
        protocol = ImapProtocol(asyncio.get_running_loop(), None)
        for chunk in chunks:
            protocol.data_received(chunk)
        return protocol.new_mail.is_set()

    assert asyncio.run(feed(b"* 4 EXI", b"STS\r\n"))
    assert asyncio.run(feed(b"* OK Still here\r\n* 3 EXPUNGE\r\n", b"* 9 EXISTS\r\n"))
    assert not asyncio.run(feed(b"* OK Still here\r\n", b"* 2 FETCH (FLAGS (\\Seen))\r\n"))


def test_uids_beyond_signed_int_survive_the_database() -> None:
    for number in (0, 1, 2**31 - 1, 2**31, 2**32 - 1):
        assert -(2**31) <= _to_db(number) < 2**31
        assert _from_db(_to_db(number)) == number


# -- envelope from headers ----------------------------------------------------


def test_envelope_comes_from_the_delivery_headers() -> None:
    raw = (
        b"Return-Path: <Bounce+abc@lists.example.org>\r\n"
        b"Delivered-To: Support@example.com\r\n"
        b"X-Original-To: support+tok@example.com\r\n"
        b"Delivered-To: support@example.com\r\n"
        b"From: Alice <alice@example.org>\r\n\r\nbody\r\n"
    )
    sender, recipients = envelope_from_headers(raw)
    assert sender == "Bounce+abc@lists.example.org"
    assert recipients == ["support@example.com", "support+tok@example.com"]


def test_null_return_path_is_the_null_sender() -> None:
    raw = b"Return-Path: <>\r\nFrom: MAILER-DAEMON@example.org\r\n\r\nfailed\r\n"
    assert envelope_from_headers(raw) == ("", [])


def test_without_return_path_the_from_address_stands_in() -> None:
    raw = b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.org>\r\nTo: support@example.com\r\n\r\n"
    assert envelope_from_headers(raw) == ("alice@example.org", [])
