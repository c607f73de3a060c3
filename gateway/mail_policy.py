"""``email.policy.default`` and ``SMTP`` with a header registry that builds each class once.

The stdlib's ``HeaderRegistry.__getitem__`` creates a new class with
``type()`` for every header it parses or sets: about 20 µs each, a dozen
times a mail, and a class is garbage only the cyclic collector frees. The
class depends on nothing but the registry entry it mixes with the base
class, so one per entry is kept. The policies behave as the stdlib's
otherwise (same classes, same parsing, same folding).

``SMTP`` writes 7-bit mail (``cte_type="7bit"``): a non-ASCII body is sent
quoted-printable or base64, never as raw 8-bit, so it crosses any relay,
including one that does not offer ``8BITMIME`` (RFC 6152).
"""

from __future__ import annotations

from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from typing import Any


class CachedHeaderRegistry(HeaderRegistry):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._built: dict[type, type[BaseHeader]] = {}

    def map_to_type(self, name: str, cls: type) -> None:
        super().map_to_type(name, cls)
        self._built.clear()

    def __getitem__(self, name: str) -> type[BaseHeader]:
        entry = self.registry.get(name.lower(), self.default_class)
        built = self._built.get(entry)
        if built is None:
            built = self._built[entry] = super().__getitem__(name)
        return built


DEFAULT = policy.default.clone(header_factory=CachedHeaderRegistry())
SMTP = policy.SMTP.clone(cte_type="7bit", header_factory=CachedHeaderRegistry())

# RFC 5322's atext and dot-atom, as regex source: the plain shapes that the fast paths
# (addresses in headers, MAIL/RCPT paths, outgoing mailboxes) read without ``email``'s parser.
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
DOT_ATOM = rf"{ATEXT}+(?:\.{ATEXT}+)*"
