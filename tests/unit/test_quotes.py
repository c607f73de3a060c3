"""visible_text: the newest reply without quoted history and signature."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.email.quotes import visible_text

GMAIL = """\
Hi team,

The export still fails:
    Traceback (most recent call last):
      File "export.py", line 3

On Tue, 3 Nov 2026 at 10:00, Alice Example <alice@example.com> wrote:

> Did you try again?
>
> Alice
"""

GMAIL_WRAPPED_ATTRIBUTION = """\
Thanks, that worked.

On Tue, 3 Nov 2026 at 10:00, Alice Example from the Support Team <
support-team@example.com> wrote:

> Did you try again?
"""

OUTLOOK_ORIGINAL_MESSAGE = (
    "Yes, please go ahead.\r\n\r\n"
    "-----Original Message-----\r\n"
    "From: Support <support@example.com>\r\n"
    "Sent: Tuesday, November 3, 2026 10:00 AM\r\n"
    "To: Bob <bob@example.com>\r\n"
    "Subject: RE: Printer\r\n\r\n"
    "Shall we replace it?\r\n"
)

OUTLOOK_SEPARATOR = """\
Yes, please go ahead.

Bob Smith
ACME Corp

________________________________
From: Support <support@example.com>
Sent: Tuesday, November 3, 2026 10:00
To: Bob <bob@example.com>
Subject: Printer

Shall we replace it?
"""

OUTLOOK_GERMAN = """\
Passt so.

________________________________
Von: Support <support@example.com>
Gesendet: Dienstag, 3. November 2026 10:00
An: Bob <bob@example.com>
Betreff: Drucker

Sollen wir ihn tauschen?
"""

APPLE_MAIL = """\
It works now, thanks!

Sent from my iPhone

> On 3 Nov 2026, at 10:00, Alice <alice@example.com> wrote:
>
> Could you restart it?
"""

THUNDERBIRD = """\
Here is the log you asked for.

On 11/3/26 10:00 AM, Alice wrote:
> Please send the log.
"""

SIGNATURE = """\
The export fails with error 42.
- step one
- step two

-- \nBob Smith
ACME Corp | +1 555 0100
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GMAIL,
            "Hi team,\n\nThe export still fails:\n    Traceback (most recent call last):\n"
            '      File "export.py", line 3',
        ),
        (GMAIL_WRAPPED_ATTRIBUTION, "Thanks, that worked."),
        (OUTLOOK_ORIGINAL_MESSAGE, "Yes, please go ahead."),
        (OUTLOOK_SEPARATOR, "Yes, please go ahead.\n\nBob Smith\nACME Corp"),
        (OUTLOOK_GERMAN, "Passt so."),
        (APPLE_MAIL, "It works now, thanks!"),
        (THUNDERBIRD, "Here is the log you asked for."),
        (SIGNATURE, "The export fails with error 42.\n- step one\n- step two"),
    ],
    ids=[
        "gmail",
        "gmail-wrapped",
        "outlook-original",
        "outlook-separator",
        "outlook-de",
        "apple",
        "thunderbird",
        "signature",
    ],
)
def test_quotes_and_signatures_are_dropped(text: str, expected: str) -> None:
    assert visible_text(text) == expected


def test_sign_off_line_starts_the_signature() -> None:
    text = "Hi,\n\nThe printer still jams.\n\nThanks,\nBob\nACME Corp\n"
    assert visible_text(text) == "Hi,\n\nThe printer still jams."


def test_a_sentence_that_starts_like_a_sign_off_is_kept() -> None:
    text = "Hi,\n\nThanks, but that did not help at all. The printer still jams.\n\nBob\n"
    assert visible_text(text) == text.strip()


def test_trailing_quote_without_attribution_is_dropped() -> None:
    assert visible_text("Agreed.\n\n> earlier text\n> more\n") == "Agreed."


@pytest.mark.parametrize(
    "text",
    [
        "On Tue, 3 Nov 2026 at 10:00, Alice <a@example.com> wrote:\n> hello\n",
        "> just a quote\n",
        "-- \nBob Smith\n",
    ],
)
def test_only_a_quote_returns_the_original_stripped(text: str) -> None:
    assert visible_text(text) == text.strip()


def test_plain_text_without_quotes_is_unchanged_but_stripped() -> None:
    assert visible_text("\n  Does it work?  \n\n") == "Does it work?"


def test_long_lines_starting_with_on_stay_fast() -> None:
    # The library's attribution regex is quadratic in such lines.
    text = ("On " + "x " * 150 + "\n") * 2000 + "On " + "y " * 100_000
    start = time.perf_counter()
    result = visible_text(text)
    assert time.perf_counter() - start < 2
    assert result == text.strip()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=500))
def test_never_raises(text: str) -> None:
    assert isinstance(visible_text(text), str)


# -- the quote-header search at line starts finds what the library's findall finds ------

_HEADER_LINES = [
    "On Tue, 3 Nov 2026 at 10:00, Alice Example <alice@example.com> wrote:",
    "> On Mon, Nov 2, 2026 at 9:00 AM Bob <bob@example.org> wrote:",
    "On Tue, 3 Nov 2026 at 10:00, Alice Example from the Support Team <",
    "alice@example.com> wrote:",
    "Am 03.11.2026 um 10:00 schrieb Hans Muster <hans@example.de>:",
    "Le mar. 3 nov. 2026 à 10:00, Alice <alice@example.fr> a écrit :",
    "El mar, 3 nov 2026 a las 10:00, Alice (<alice@example.es>) escribió:",
    "Op di 3 nov. 2026 om 10:00 schreef Alice <alice@example.nl>:",
    "From: Alice Example <alice@example.com>",
    "*From:* Alice",
    "Sent: Tuesday, November 3, 2026 10:00 AM",
    "To: Support",
    "Subject: RE: Printer",
    "Von: Hans",
    "Gesendet: Dienstag",
    "-----Original Message-----",
    "________________________________",
    "> > quoted twice",
    "Thanks,",
    "-- ",
    "",
]
_words = st.from_regex(r"\A[A-Za-z0-9 ,.:<>@*>-]{0,40}\Z")
_lines = st.lists(st.one_of(st.sampled_from(_HEADER_LINES), _words), max_size=25)


def _library_pattern():
    from mailparser_reply import EmailMessage

    from adapters.email.quotes import LANGUAGES

    message = EmailMessage(text="", languages=list(LANGUAGES))
    return message.HEADER_REGEX


@settings(max_examples=400, deadline=None)
@given(_lines, st.sampled_from(["\n", "\n\n"]))
def test_quote_headers_found_at_line_starts_are_those_findall_finds(lines, sep):
    from adapters.email.quotes import _LineStartFinder

    pattern = _library_pattern()
    text = sep.join(lines)
    assert _LineStartFinder(pattern).findall(text) == pattern.findall(text)


def test_quote_headers_on_real_mail_are_those_findall_finds():
    from pathlib import Path

    from adapters.email.parsing import parse_message
    from adapters.email.quotes import _LineStartFinder

    pattern = _library_pattern()
    texts = [GMAIL, GMAIL_WRAPPED_ATTRIBUTION] + [
        parse_message(path.read_bytes()).text or ""
        for path in sorted(Path(__file__).parents[1].joinpath("data", "emails").glob("*.eml"))
    ]
    found = 0
    for text in texts:
        expected = pattern.findall(text)
        found += len(expected)
        assert _LineStartFinder(pattern).findall(text) == expected
    assert found  # some of them do quote


def test_every_quote_header_of_our_languages_begins_at_a_line_start_or_a_newline():
    """What _LineStartFinder relies on; a new release of mail-parser-reply is checked here."""
    from mailparser_reply.constants import GENERIC_MAIL_SEPARATOR, MAIL_LANGUAGES

    from adapters.email.quotes import LANGUAGES

    beginnings = [GENERIC_MAIL_SEPARATOR] + [
        MAIL_LANGUAGES[language][key]
        for language in LANGUAGES
        for key in ("wrote_header", "from_header")
        if key in MAIL_LANGUAGES[language]
    ]
    for pattern in beginnings:
        assert pattern.startswith(("^", "((?:(?:^|\\n|\\n")), pattern
