"""gateway.jsoncodec: orjson where it answers as the stdlib does, the stdlib elsewhere."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from flask import Flask

from gateway import jsoncodec
from web.jsonio import FastJSONProvider

DOCUMENTS = [
    "{}",
    "[]",
    '{"a": 1, "a": 2}',
    '{"n": -9223372036854775808, "u": 18446744073709551615}',
    '{"big": 123456789012345678901234567890}',
    '{"neg": -123456789012345678901}',
    '{"f": 0.1000000000000000055511151231257827, "e": 1e-320, "z": -0.0}',
    '{"inf": 1e400}',
    '{"s": "caf\\u00e9 \\ud83d\\ude00", "raw": "日本"}',
    '{"lone": "\\ud800"}',
    '{"id": "1234567890123456789012345"}',
    '"x"',
    "null",
    '{"nan": NaN, "inf": -Infinity}',  # not JSON, but json.loads takes it (orjson does not)
]


@pytest.mark.parametrize("doc", DOCUMENTS)
@pytest.mark.parametrize("kind", [str, bytes, memoryview])
def test_loads_gives_the_stdlib_value(doc: str, kind: type) -> None:
    data = doc if kind is str else kind(doc.encode())
    got, want = jsoncodec.loads(data), json.loads(doc)
    assert repr(got) == repr(want)  # repr: 1.0 vs 1, -0.0 vs 0.0 and NaN all differ
    assert [type(v) for v in (got.values() if isinstance(got, dict) else [got])] == [
        type(v) for v in (want.values() if isinstance(want, dict) else [want])
    ]


@pytest.mark.parametrize("doc", ["", "{", "nan", '{"a": }', "[1,]", "\x00"])
def test_loads_raises_the_stdlib_error(doc: str) -> None:
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(doc)
    with pytest.raises(json.JSONDecodeError) as got:
        jsoncodec.loads(doc)
    assert str(got.value) == str(want.value)


def _provider() -> FastJSONProvider:
    return FastJSONProvider(Flask("t"))


@pytest.mark.parametrize(
    "obj",
    [
        {"b": 1, "a": [1.5, None, True, "é"]},
        {"id": uuid.UUID(int=7), "amount": Decimal("1.10")},
        {"when": datetime(2026, 11, 28, 12, 0, tzinfo=UTC), "day": date(2026, 11, 28)},
        {"big": 2**70},  # beyond orjson: the stdlib
        {1: "non-str key"},  # beyond orjson: the stdlib
        {"lone": "\ud800"},  # beyond orjson: the stdlib, escaped
    ],
)
def test_dumps_is_the_same_document_as_flasks(obj: object) -> None:
    fast = _provider().dumps(obj)
    stdlib = Flask("t").json.dumps(obj)
    assert json.loads(fast) == json.loads(stdlib)
    fast.encode("utf-8")  # always sendable as UTF-8


def test_dumps_keeps_key_order_and_is_compact() -> None:
    assert _provider().dumps({"b": 1, "a": "é"}) == '{"b":1,"a":"é"}'


def test_dumps_with_options_is_the_stdlibs() -> None:
    assert _provider().dumps({"a": 1}, indent=2) == '{\n  "a": 1\n}'


def test_dumps_raises_for_what_flask_cannot_serialise() -> None:
    with pytest.raises(TypeError):
        _provider().dumps({"x": object()})
