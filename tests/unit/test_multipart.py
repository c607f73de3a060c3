"""The streaming multipart reader: every split of the input, every edge."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from web.multipart import MultipartError, MultipartLimit, parse


class Sink(io.BytesIO):
    pass


def encode(files: dict[str, bytes], fields: dict[str, str]) -> tuple[bytes, bytes]:
    form = MultiDict([(k, FileStorage(io.BytesIO(v), f"{k}.bin")) for k, v in files.items()])
    for key, value in fields.items():
        form.add(key, value)
    boundary, body = encode_multipart(form)
    return boundary.encode(), body


def read_in(body: bytes, sizes: list[int]):
    stream = io.BytesIO(body)
    cycle = iter(sizes * (len(body) + 1)) if sizes else iter(())

    def read(_n: int) -> bytes:
        return stream.read(next(cycle, 1 << 20))

    return read


def run(body: bytes, boundary: bytes, sizes: list[int] | None = None, **limits):
    return parse(
        read_in(body, sizes or []),
        boundary,
        lambda **_: Sink(),
        max_field_bytes=limits.get("max_field_bytes", 1 << 16),
        max_parts=limits.get("max_parts", 16),
    )


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    data=st.binary(max_size=3000),
    field=st.text(max_size=50),
    sizes=st.lists(st.integers(1, 97), min_size=1, max_size=5),
)
def test_any_split_reads_the_same(data, field, sizes):
    boundary, body = encode({"file": data}, {"message_id": field})
    fields, files = run(body, boundary, sizes)
    assert files["file"].stream.getvalue() == data
    assert files["file"].filename == "file.bin"
    assert fields["message_id"] == field


def test_data_that_looks_like_a_boundary_is_kept():
    boundary = b"XyZ"
    data = b"a --XyZ is not a delimiter without its CRLF; \r\n--Xy neither"
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        + data
        + b"\r\n--XyZ--\r\n"
    )
    assert run(body, boundary, [7])[1]["file"].stream.getvalue() == data


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nabc',
        b"--b\r\nno colon here\r\n\r\nabc\r\n--b--",
        b"--b\r\nContent-Disposition: attachment\r\n\r\nabc\r\n--b--",
        b'--b\r\nContent-Disposition: form-data; name="f"\r\n',
        b"no delimiter at all" * 10,
    ],
)
def test_malformed_bodies(body):
    with pytest.raises(MultipartError):
        run(body, b"b")


def test_limits():
    boundary, body = encode({}, {"big": "x" * 100})
    with pytest.raises(MultipartLimit):
        run(body, boundary, max_field_bytes=99)
    boundary, body = encode({f"f{i}": b"" for i in range(5)}, {})
    with pytest.raises(MultipartLimit):
        run(body, boundary, max_parts=4)
    with pytest.raises(MultipartLimit):
        run(b"--b\r\n" + b"X-Long: " + b"y" * 20000 + b"\r\n\r\n", b"b")
    with pytest.raises(MultipartError):
        run(b"--", b"")
