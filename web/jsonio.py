"""Flask's JSON provider for the app: orjson's speed with the stdlib's answers.

``flask.json.dumps`` (every JSON response and problem body goes through it)
uses :func:`gateway.jsoncodec.dumps` when called with no options of its own;
with options (``indent``, ``separators``, ...) or for a document orjson
refuses, it is the stdlib's, as before. ``loads`` stays the stdlib's: request
bodies are parsed with hooks (``parse_constant``, ``parse_float``) that
orjson does not have.
"""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

from gateway.jsoncodec import dumps


class FastJSONProvider(DefaultJSONProvider):
    """Compact UTF-8 JSON, the same types as Flask's provider; keys in insertion order.

    The stdlib path keeps Flask's ``ensure_ascii``: a string with a lone surrogate
    (which orjson refuses) must come out escaped, or it could not be sent as UTF-8.
    """

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:
            return super().dumps(obj, **kwargs)
        return dumps(obj, self.default, super().dumps, sort_keys=self.sort_keys)
