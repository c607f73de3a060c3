"""The staged file's threaded hash and early writeback: exact digests, errors
from the helper thread reach the writer, nothing is left behind."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading

import pytest

from gateway.errors import PayloadTooLarge
from gateway.storage import LocalStorage, StagedFile, hashing
from gateway.storage.hashing import FileHasher
from gateway.storage.writeback import start_writeback

MIB = 1 << 20


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sha256"]


def data_of(size: int) -> bytes:
    return os.urandom(min(size, 4096)) * (size // 4096) + os.urandom(size % 4096)


def written(tmp_path, pieces, after_hashed=None) -> tuple[FileHasher, int]:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    hasher = FileHasher(fd, after_hashed)
    for piece in pieces:
        os.write(fd, piece)
        hasher.update(piece)
    return hasher, fd


@pytest.mark.parametrize(
    ("size", "piece"),
    [
        (0, 1),
        (5, 1),
        (hashing.THREAD_AFTER - 1, 64 * 1024),  # never starts the thread
        (hashing.THREAD_AFTER, 64 * 1024),
        (7 * MIB + 13, 65_537),
        (5 * MIB + 1, 5 * MIB + 1),  # one write, as a mail part comes
    ],
)
def test_digest_is_sha256_of_what_was_written(tmp_path, size, piece):
    data = data_of(size)
    hasher, fd = written(tmp_path, [data[i : i + piece] for i in range(0, size, piece)])
    try:
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
        assert not hasher.running and not hash_threads()
    finally:
        os.close(fd)


def test_large_files_are_hashed_on_the_helper_thread(tmp_path):
    seen: list[tuple[int, int]] = []
    data = data_of(6 * MIB)
    hasher, fd = written(tmp_path, [data[: 3 * MIB]], lambda a, b: seen.append((a, b)))
    try:
        assert hasher.running
        for i in range(3 * MIB, len(data), MIB):
            os.write(fd, data[i : i + MIB])
            hasher.update(data[i : i + MIB])
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)
    # Every byte past what was hashed inline is covered once, in order.
    assert seen[0][0] == 0 and seen[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(seen))


def test_digest_mid_stream_then_more_writes(tmp_path):
    data = data_of(5 * MIB)
    hasher, fd = written(tmp_path, [data[: 3 * MIB]])
    try:
        assert hasher.hexdigest() == hashlib.sha256(data[: 3 * MIB]).hexdigest()
        os.write(fd, data[3 * MIB :])
        hasher.update(data[3 * MIB :])
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)


def test_an_error_in_the_thread_reaches_the_writer(tmp_path):
    def broken(start: int, end: int) -> None:
        raise OSError("writeback failed")

    data = data_of(4 * MIB)
    hasher, fd = written(tmp_path, [data], broken)
    try:
        with pytest.raises(OSError, match="writeback failed"):
            hasher.hexdigest()
        with pytest.raises(OSError, match="writeback failed"):
            hasher.update(b"more")
        assert not hash_threads()
    finally:
        hasher.close()
        os.close(fd)


def test_a_file_shorter_than_written_is_an_error_not_a_wrong_hash(tmp_path):
    data = data_of(4 * MIB)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, data[:MIB])  # the writer reports more than the file holds
    hasher = FileHasher(fd)
    hasher.update(data)
    try:
        with pytest.raises(OSError, match="ends at"):
            hasher.hexdigest()
    finally:
        hasher.close()
        os.close(fd)


def test_close_stops_the_thread_without_raising(tmp_path):
    hasher, fd = written(tmp_path, [data_of(8 * MIB)], lambda a, b: 1 / 0)
    hasher.close()
    hasher.close()
    os.close(fd)
    assert not hasher.running and not hash_threads()


# --- through StagedFile ---------------------------------------------------------------


def test_staged_file_over_its_limit_leaves_nothing(tmp_path):
    storage = LocalStorage(tmp_path)
    chunk = data_of(MIB)
    with pytest.raises(PayloadTooLarge), storage.stage(max_bytes=5 * MIB) as staged:
        for _ in range(8):
            staged.write(chunk)
    assert list(tmp_path.iterdir()) == []
    assert not hash_threads()


def test_staged_file_hash_error_fails_the_commit_and_leaves_nothing(tmp_path, monkeypatch):
    def broken(self, start: int, end: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(StagedFile, "_write_back", broken)
    storage = LocalStorage(tmp_path)
    with pytest.raises(OSError, match="disk gone"), storage.stage() as staged:
        for _ in range(6):
            staged.write(data_of(MIB))
        storage.commit(staged)
    assert list(storage.iter_hashes()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".upload-")]
    assert not hash_threads()


def test_staged_file_takes_memoryviews_of_mutable_buffers(tmp_path):
    storage = LocalStorage(tmp_path)
    buffer = bytearray(data_of(3 * MIB))
    expected = hashlib.sha256(buffer).hexdigest()
    with storage.stage() as staged:
        with memoryview(buffer) as view:
            staged.write(view[: 2 * MIB])
            staged.write(view[2 * MIB :])
        buffer[:] = b"\0" * len(buffer)  # the caller reuses its buffer at once
        sha, size = storage.commit(staged)
    assert (sha, size) == (expected, 3 * MIB)


def test_start_writeback_is_only_a_hint(tmp_path):
    start_writeback(-1, 0, MIB)  # a bad descriptor is ignored
    with open(tmp_path / "f", "wb") as fh:
        fh.write(b"x" * 10)
        start_writeback(fh.fileno(), 0, 10)
        start_writeback(fh.fileno(), 0, 0)
