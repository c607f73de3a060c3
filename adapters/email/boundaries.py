"""The stdlib's MIME parser without a regex compiled for every multipart boundary.

``email.feedparser`` compiles ``(?P<sep>--<boundary>)(?P<end>--)?(?P<ws>[ \\t]*)
(?P<linesep>...)?$`` for each multipart part it meets. Boundaries are unique,
so ``re``'s cache never helps, and compiling costs ~0.3 ms: about 5 % of
ingesting a mail. The pattern is a literal followed by a fixed tail, so a
match is "the line starts with the separator, and the tail matches after it":
:class:`BoundaryMatcher` does exactly that with the tail compiled once.

:func:`install` gives ``email.feedparser`` a ``re`` whose ``compile`` returns
such a matcher for a boundary pattern and compiles anything else as usual.
The parser only calls ``match`` and reads the ``end`` and ``linesep`` groups
(tests/unit/test_parsing.py parses CPython's mail corpus both ways and
compares the results).
"""

from __future__ import annotations

import re
from email import feedparser
from typing import Any

_PREFIX = "(?P<sep>"
_TAIL_START = "(?P<end>--)"
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


class BoundaryMatcher:
    __slots__ = ("separator", "tail")

    def __init__(self, separator: str, tail: re.Pattern[str]) -> None:
        self.separator = separator
        self.tail = tail

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self.separator):
            return None
        return self.tail.match(line, len(self.separator))


def boundary_matcher(pattern: str, flags: int = 0) -> BoundaryMatcher | None:
    """A matcher for feedparser's boundary ``pattern``; None for any other pattern."""
    if flags or not isinstance(pattern, str) or not pattern.startswith(_PREFIX):
        return None
    at = len(_PREFIX)
    while at < len(pattern) and pattern[at] != ")":
        at += 2 if pattern[at] == "\\" else 1  # re.escape escapes every ")" of the boundary
    tail = pattern[at + 1 :]
    if not tail.startswith(_TAIL_START):
        return None
    separator = _UNESCAPE.sub(r"\1", pattern[len(_PREFIX) : at])
    return BoundaryMatcher(separator, re.compile(tail))  # the same tail: re's cache


class _FeedparserRe:
    """``re`` as email.feedparser sees it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)

    def compile(self, pattern: Any, flags: int = 0) -> Any:
        matcher = boundary_matcher(pattern, flags)
        return matcher if matcher is not None else re.compile(pattern, flags)


def install() -> None:
    feedparser.re = _FeedparserRe()  # type: ignore[assignment]


def uninstall() -> None:
    feedparser.re = re
