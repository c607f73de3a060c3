"""The media type of a file, from its bytes (libmagic), never from its name.

The client's ``Content-Type`` and the file name's extension are ignored: a
PNG called ``notes.txt`` is ``image/png``, an HTML page called ``cat.png`` is
``text/html``.
"""

from __future__ import annotations

import threading
from typing import Any

from gateway.errors import ConfigurationError

UNKNOWN = "application/octet-stream"

# What libmagic says for "nothing to go on".
_NO_TYPE = {"application/x-empty", "inode/x-empty", "application/octet-stream", ""}

_lock = threading.Lock()
_magic: Any = None


def _detector() -> Any:
    global _magic
    with _lock:
        if _magic is None:
            try:
                import magic
            except ImportError as exc:  # python-magic present, libmagic missing
                raise ConfigurationError(
                    f"libmagic is needed to check attachment types ({exc}); "
                    "install it (Debian/Ubuntu: apt-get install libmagic1)"
                ) from None
            _magic = magic.Magic(mime=True)
        return _magic


def sniff(head: bytes) -> str:
    """The media type of a file whose first bytes are ``head`` (lower case)."""
    if not head:
        return UNKNOWN
    found = str(_detector().from_buffer(head) or "").split(";")[0].strip().lower()
    return UNKNOWN if found in _NO_TYPE else found
