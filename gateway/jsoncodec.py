"""JSON decoding and encoding on the hot paths, with orjson, exact as the stdlib.

Every list of tickets decodes two JSON columns per row (``custom_fields`` and the
aggregated metadata) and encodes a page of 25 documents: with the stdlib's
``json`` that was a fifth of the CPU of a list request (``bench/RESULTS.md``).
orjson does both in a fraction of the time. Where it would answer differently
from the stdlib, the stdlib answers:

- :func:`loads`: orjson turns an integer beyond 64 bits into a float, silently;
  a document with a run of 19 or more digits (every integer orjson could lose
  has one) goes to ``json.loads``, as does anything orjson rejects (``1e400``,
  a lone surrogate escape), so values and errors stay the stdlib's.
- :func:`dumps`: orjson refuses integers beyond 64 bits, keys that are not
  strings and strings with lone surrogates; those documents go to ``fallback``.
  Output is compact and UTF-8 (no ``\\u`` escapes for non-ASCII text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_STR = re.compile(r"[0-9]{19}")


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """``json.loads``, faster: the same value for every document, the same errors."""
    if isinstance(data, memoryview):
        data = bytes(data)
    long_digits = _LONG_DIGITS_STR if isinstance(data, str) else _LONG_DIGITS_BYTES
    if long_digits.search(data) is None:  # type: ignore[arg-type]
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(
    obj: Any,
    default: Callable[[Any], Any] | None,
    fallback: Callable[[Any], str],
    *,
    sort_keys: bool = False,
) -> str:
    """Compact JSON text of ``obj``; types orjson does not know natively (and dates,
    datetimes and dataclasses) go through ``default``; a document orjson refuses goes
    to ``fallback`` whole."""
    try:
        options = (_OPTIONS | orjson.OPT_SORT_KEYS) if sort_keys else _OPTIONS
        raw = orjson.dumps(obj, default=default, option=options)
    except orjson.JSONEncodeError:
        return fallback(obj)
    return raw.decode()
