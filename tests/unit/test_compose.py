"""Outgoing mail: the directly written plain case is byte for byte what ``email`` writes."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default

from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway.outbound.compose import Outgoing, _compose, _compose_plain, compose

WHEN = "Fri, 27 Nov 2026 13:36:25 +0000"


def ack(**fields: object) -> Outgoing:
    values: dict = dict(
        from_name="Support",
        from_address="support@help.example.com",
        to_name="Ana Lima",
        to_address="ana.lima@example.org",
        reply_to="support+0123456789abcdef0123456789abcdef@help.example.com",
        subject="Re: Printer on fire [#12]",
        message_id="<0123456789abcdef@help.example.com>",
        text="Hello Ana Lima,\n\nwe received your request.\n\n-- \nSupport\n",
        in_reply_to="<CAF=abc.123@mail.gmail.com>",
        references=["<CAF=abc.123@mail.gmail.com>"],
        automatic=True,
    )
    values.update(fields)
    return Outgoing(**values)


def test_an_acknowledgment_takes_the_plain_way_and_matches_email() -> None:
    mail = ack()
    plain = _compose_plain(mail, WHEN)
    assert plain is not None
    assert plain == _compose(mail, WHEN)
    parsed = message_from_bytes(plain, policy=default)
    assert parsed["Auto-Submitted"] == "auto-replied"
    text = parsed.get_content().replace("\r\n", "\n")
    assert text == "Hello Ana Lima,\n\nwe received your request.\n\n-- \nSupport\n"


def test_what_the_plain_way_cannot_write_goes_through_email() -> None:
    for mail in (
        ack(to_name="Zoë Müller"),  # RFC 2047
        ack(to_name="Lima, Ana"),  # a special: quoted
        ack(subject="Re: " + "x" * 80 + " [#12]"),  # a word longer than a line
        ack(subject="Re: =?utf-8?q?x?= [#12]"),  # would be decoded
        ack(text="Grüße\n"),  # not 7-bit
        ack(text="x" * 79 + "\n"),  # a line too long for 7bit
        ack(html="<p>Hi</p>"),
        ack(attachments=[("a.txt", "text/plain", b"hi")]),
        ack(to_address='"odd local"@example.org'),
        ack(references=["<a@example.org>", "<=?utf-8?q?x?=@example.org>"]),
        ack(to_name="Ana\r\nBcc: victim@example.org"),  # cleaned, then quoted
    ):
        assert _compose_plain(mail, WHEN) is None, mail
        composed = compose(mail)
        assert b"\r\nBcc:" not in composed
        assert composed.isascii(), mail  # 7-bit: no relay needs 8BITMIME for our mail


def test_a_non_ascii_reply_is_seven_bit_and_reads_back() -> None:
    text = "Grüße aus Köln,\nご連絡ありがとうございます。\n" + "ä" * 120 + "\n"
    html = "<p>Grüße — 日本語</p>"
    composed = compose(ack(text=text, html=html, automatic=False))
    assert composed.isascii()
    parsed = message_from_bytes(composed, policy=default)
    plain, rich = (part.get_content() for part in parsed.iter_parts())
    assert plain.replace("\r\n", "\n") == text
    assert rich.replace("\r\n", "\n").rstrip("\n") == html


_ascii = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=30)
# Mostly values at the edge of the plain way (printable ASCII with specials, spaces
# in odd places, lines near 78 characters), some anything at all.
_names = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9 ]{0,20}\Z"),
    st.from_regex(r"\A[A-Za-z0-9 .,\"'()<>@\\-]{0,20}\Z"),
    _ascii,
    st.text(max_size=20),
)
_local = st.one_of(
    st.from_regex(r"\A[a-z0-9.+_-]{1,20}\Z"), st.from_regex(r"\A[!-~]{1,12}\Z"), _ascii
)
_domain = st.one_of(st.just("example.org"), st.from_regex(r"\A[a-z0-9.-]{1,20}\Z"))
_addresses = st.builds(lambda local, domain: f"{local}@{domain}", _local, _domain)
_ids = st.one_of(
    st.builds(lambda a, b: f"<{a}@{b}>", st.from_regex(r"\A[!-~]{1,20}\Z"), _domain),
    st.from_regex(r"\A[!-~ ]{1,30}\Z"),
)
_line = st.one_of(st.from_regex(r"\A[ -~\t]{0,80}\Z"), _ascii, st.text(max_size=10))
_texts = st.builds("\n".join, st.lists(_line, max_size=6))
_subjects = st.one_of(
    st.from_regex(r"\A[ -~]{0,75}\Z"), st.from_regex(r"\A[ -~]{60,80}\Z"), st.text(max_size=30)
)


_PLAIN = {
    "from_name": st.from_regex(r"\A[A-Za-z0-9]{1,12}( [A-Za-z0-9]{1,12}){0,4}\Z"),
    "to_name": st.from_regex(r"\A([A-Za-z0-9]{1,12}( [A-Za-z0-9]{1,12}){0,4})?\Z"),
    "to_address": st.from_regex(r"\A[a-z0-9+_-]{1,30}(\.[a-z0-9]{1,5})?@[a-z0-9-]{1,20}\.org\Z"),
    "reply_to": st.from_regex(r"\Asupport\+t[0-9]{1,6}-[0-9a-f]{32}@[a-z]{1,20}\.example\.com\Z"),
    "subject": st.from_regex(r"\ARe: [!-~]{1,12}( [!-~]{1,12}){0,12} \[#[0-9]{1,6}\]\Z"),
    "message_id": st.from_regex(r"\A<[0-9a-f]{32}@[a-z]{1,30}\.example\.com>\Z"),
    "in_reply_to": st.one_of(st.none(), st.from_regex(r"\A<[!-;=?-~]{1,60}@[a-z.]{1,20}>\Z")),
    "references": st.lists(st.from_regex(r"\A<[a-z0-9.]{1,30}@[a-z.]{1,12}>\Z"), max_size=6),
    "text": st.builds("\n".join, st.lists(st.from_regex(r"\A[ -~]{0,78}\Z"), max_size=6)),
    "automatic": st.booleans(),
}
_EDGE = {
    "from_name": _names,
    "to_name": _names,
    "to_address": _addresses,
    "reply_to": _addresses,
    "subject": _subjects,
    "message_id": _ids,
    "in_reply_to": _ids,
    "references": st.lists(_ids, max_size=25),
    "text": _texts,
    "automatic": st.booleans(),
}


@st.composite
def _outgoing(draw: st.DrawFn) -> Outgoing:
    """A plain acknowledgment with up to two fields drawn from the edges."""
    edges = draw(st.sets(st.sampled_from(sorted(_PLAIN)), max_size=2))
    fields = {name: draw(_EDGE[name] if name in edges else _PLAIN[name]) for name in _PLAIN}
    return Outgoing(from_address="support@help.example.com", **fields)


@settings(max_examples=300, deadline=None)
@given(_outgoing())
def test_the_plain_way_writes_what_email_writes(mail: Outgoing) -> None:
    plain = _compose_plain(mail, WHEN)
    event("plain" if plain is not None else "through email")
    if plain is None:
        return
    try:
        expected = _compose(mail, WHEN)
    except Exception as exc:  # email refuses what the plain way wrote: a difference too
        raise AssertionError(f"email cannot write {mail!r}; the plain way wrote {plain!r}") from exc
    assert plain == expected
