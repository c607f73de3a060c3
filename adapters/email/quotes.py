"""The part of a reply worth displaying: no quoted history, no signature.

Splitting is done by mail-parser-reply (``EmailMessage``), which knows the
attribution lines of Gmail, Outlook, Apple Mail and Thunderbird in several
languages. Around it, three guards:

* Speed: its attribution regex is quadratic in the length of a line starting
  with "On", so only the first ``WINDOW`` characters are examined and lines
  longer than ``LONG_LINE`` are masked (no attribution line is that long).
* Content: it treats "Thanks," anywhere in the text as the start of a
  signature, so a signature is only cut when its first line looks like a
  sign-off: a ``--``/``__`` delimiter, "Sent from my ...", or a few words not
  ending a sentence. Disclaimers are kept.
* Shape: it strips every line; the kept lines are taken from the original
  text, so indentation (logs, code) survives.

If nothing would remain (a message that is only a quote) the whole text,
stripped, is returned. ``visible_text`` never raises.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from mailparser_reply import EmailMessage

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "de", "fr", "es", "nl")
WINDOW = 64 * 1024
LONG_LINE = 250

_LONG_LINE_MASK = "\u2026"
_NEWLINE = re.compile("\n")
# mail-parser-reply deletes "\n\n" + 32 underscores/dashes, which shifts line numbers.
_SEPARATOR_RUN = re.compile(r" ?[_-]{32,}")
_SENT_FROM = re.compile(
    r"(sent from|get outlook|gesendet von|envoy\u00e9 depuis|enviado desde|verzonden vanaf)\b",
    re.IGNORECASE,
)
_SENTENCE_END = (".", "!", "?", ":", ";")


def visible_text(text: str) -> str:
    """The newest reply in ``text`` without quoted history and signature."""
    if not isinstance(text, str):
        return ""
    original = text.replace("\r\n", "\n").replace("\r", "\n")
    try:
        visible = _visible(original)
    except Exception:
        logger.warning("reply parser failed; showing the whole text", exc_info=True)
        return original.strip()
    return visible or original.strip()


class _LineStartFinder:
    """``findall`` of a multi-line pattern whose matches all begin at a line start or at a
    newline (each quote header of mail-parser-reply does: ``^...`` or ``(?:^|\\n...``):
    the pattern is tried only there, not at every character of the text."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def findall(self, text: str) -> list[Any]:
        found: list[Any] = []
        pos = 0
        for start in _line_starts_and_newlines(text):
            if start < pos:
                continue
            match = self.pattern.match(text, start)
            if match is None:
                continue
            if match.end() == start:  # an empty match: findall's own rules apply
                return self.pattern.findall(text)
            groups = match.groups(default="")
            found.append(groups if len(groups) > 1 else groups[0] if groups else match.group(0))
            pos = match.end()
        return found


def _line_starts_and_newlines(text: str) -> Iterator[int]:
    """0, then each newline's position and the position after it, in order, once each."""
    last = 0
    yield 0
    for newline in _NEWLINE.finditer(text):
        at = newline.start()
        if at != last:
            yield at
        yield at + 1
        last = at + 1


_FINDERS: dict[re.Pattern[str], _LineStartFinder] = {}


class _ReplyParser(EmailMessage):
    """mail-parser-reply's message, its quote-header search tried at line starts only."""

    @property
    def HEADER_REGEX(self) -> Any:  # the library's name
        pattern = EmailMessage.HEADER_REGEX.fget(self)  # type: ignore[attr-defined]
        finder = _FINDERS.get(pattern)
        if finder is None:
            finder = _FINDERS[pattern] = _LineStartFinder(pattern)
        return finder


def _visible(original: str) -> str:
    lines = original.split("\n")
    masked = [_mask(line) for line in _window(lines)]
    parsed = _ReplyParser(text="\n".join(masked), languages=list(LANGUAGES), keep_hyphen_lists=True)
    replies = parsed.read().replies
    if not replies or replies[0].headers:
        return ""  # the text starts with a quote header
    first = replies[0]
    content = first.content
    if first.signatures and _is_sign_off(first.signatures):
        cut = content.find(first.signatures)
        content = content[:cut] if cut >= 0 else content
    if not content.strip():
        return ""
    if content == first.content and len(replies) == 1:
        end = len(lines)  # nothing recognised: keep all, also what lies past the window
    else:
        kept = content.rstrip().split("\n")
        start = next((i for i, line in enumerate(masked) if line), 0)
        if masked[start : start + len(kept)] != kept:
            return content.strip()  # cannot map back to the original lines
        end = start + len(kept)
    while end > 0 and _is_trailing_noise(_mask(lines[end - 1])):
        end -= 1
    return "\n".join(lines[:end]).strip()


def _window(lines: list[str]) -> list[str]:
    size = 0
    for index, line in enumerate(lines):
        size += len(line) + 1
        if size > WINDOW:
            return lines[:index]
    return lines


def _mask(line: str) -> str:
    stripped = line.strip()
    if len(stripped) > LONG_LINE:
        return _LONG_LINE_MASK
    match = _SEPARATOR_RUN.match(stripped)
    if match:
        return "_" * 31 + stripped[match.end() :]
    return stripped


def _is_sign_off(signature: str) -> bool:
    first = signature.split("\n", 1)[0].lstrip("> ").strip()
    if first.startswith(("--", "__")) or _SENT_FROM.match(first):
        return True
    return len(first) <= 40 and len(first.split()) <= 4 and not first.endswith(_SENTENCE_END)


def _is_trailing_noise(masked_line: str) -> bool:
    return not masked_line or masked_line.startswith((">", "_" * 31))
