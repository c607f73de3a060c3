"""What the multipart reader hands to a file's ``write``: the reads themselves."""

from __future__ import annotations

import io
import os

import pytest

from web.multipart import parse

BOUNDARY = b"benchboundary0123456789abcdef"


def body_with(data: bytes) -> bytes:
    return (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
        b"\r\n" + data + b"\r\n--" + BOUNDARY + b"--\r\n"
    )


class Recorder:
    def __init__(self) -> None:
        self.pieces: list[object] = []

    def write(self, piece: object) -> int:
        self.pieces.append(piece)
        return len(piece)  # type: ignore[arg-type]

    def seek(self, *_: object) -> int:
        return 0


def parse_recording(body: bytes, sizes: list[int]) -> tuple[Recorder, list[bytes]]:
    stream = io.BytesIO(body)
    reads: list[bytes] = []
    turn = iter(sizes * len(body))

    def read(_n: int) -> bytes:
        data = stream.read(next(turn))
        reads.append(data)
        return data

    recorder = Recorder()
    parse(read, BOUNDARY, lambda **_: recorder, max_field_bytes=1024, max_parts=4)
    return recorder, reads


def test_file_data_is_never_copied():
    data = os.urandom(1 << 20)
    recorder, reads = parse_recording(body_with(data), [64 * 1024])
    assert b"".join(bytes(p) for p in recorder.pieces) == data  # type: ignore[call-overload]
    later_reads = {id(r) for r in reads[1:]}
    for piece in recorder.pieces[1:]:
        owner = piece.obj if isinstance(piece, memoryview) else piece
        assert isinstance(owner, bytes) and id(owner) in later_reads
        assert not isinstance(piece, memoryview) or piece.readonly


@pytest.mark.parametrize("cut", range(-3, len(BOUNDARY) + 8))
def test_a_separator_split_across_reads_is_found(cut):
    data = os.urandom(5000) + b"\r\n--" + BOUNDARY[:-1] + b"X"  # a near miss at the end
    body = body_with(data)
    separator_at = body.rindex(b"\r\n--" + BOUNDARY)
    first = separator_at + cut
    header_end = body.index(b"\r\n\r\n") + 4
    recorder, _ = parse_recording(body, [first, header_end, len(body)])
    assert b"".join(bytes(p) for p in recorder.pieces) == data  # type: ignore[call-overload]
