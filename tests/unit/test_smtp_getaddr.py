"""The SMTP server's MAIL/RCPT address reading is aiosmtpd's, without its per-call class."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.email.smtp_server import GatewaySMTP

CASES = [
    "",
    "<ana@example.org>",
    "<ana@example.org> SIZE=1000 BODY=8BITMIME",
    "ana@example.org",
    " <ana@example.org>",
    "<>",
    "<@relay.example:ana@example.org>",
    '<"odd local"@example.org>',
    "<ana@[192.0.2.1]>",
    "<ana@example.org",
    "ana",
    "<" + "x" * 65 + "@example.org>",
    "<zoë@example.org>",
    "<ana@example.org>\tSIZE=1",
    "<ana@example.org> (comment) SIZE=1",
    "<ana@example.org>(comment)",
    "<a.b.c@d.e>  ",
    "<a..b@example.org>",
    "<.a@example.org>",
    "<a.@example.org>",
    "<a@example..org>",
    "<a@.example.org>",
    "<a@b!c>",
    "<" + "x" * 64 + "@example.org>",
]


@pytest.mark.parametrize("limit", [0, 64])
@pytest.mark.parametrize("arg", CASES)
def test_reads_each_address_as_aiosmtpd_does(arg: str, limit: int) -> None:
    server = SimpleNamespace(local_part_limit=limit)
    assert GatewaySMTP._getaddr(server, arg) == SMTP._getaddr(server, arg)  # type: ignore[arg-type]


# Near the plain ``<local@domain>`` shape that a regex reads: atext, dots, a stray
# special, spaces, tabs and comments after it.
_near_plain = st.from_regex(
    r"\A<[a-z.!#'=(\"]{0,8}@[a-z.\[-]{0,8}>[ \t(]{0,2}[A-Za-z=0-9()]{0,8}\Z"
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"\A ?<?[!-~]{0,30}>?( [A-Z]+=\w+)?\Z"),
        _near_plain,
    ),
    st.sampled_from([0, 4, 64]),
)
def test_reads_any_argument_as_aiosmtpd_does(arg: str, limit: int) -> None:
    server = SimpleNamespace(local_part_limit=limit)
    try:
        theirs = SMTP._getaddr(server, arg)  # type: ignore[arg-type]
    except (IndexError, AttributeError):  # aiosmtpd trips over it (a 451): malformed (553)
        theirs = (None, None)
    assert GatewaySMTP._getaddr(server, arg) == theirs  # type: ignore[arg-type]


@pytest.mark.parametrize(("arg", "error"), [("a@", IndexError), ("<a@[>", AttributeError)])
def test_an_address_the_parser_trips_over_is_malformed(arg: str, error: type) -> None:
    server = SimpleNamespace(local_part_limit=64)
    with pytest.raises(error):
        SMTP._getaddr(server, arg)  # type: ignore[arg-type]
    assert GatewaySMTP._getaddr(server, arg) == (None, None)  # type: ignore[arg-type]
