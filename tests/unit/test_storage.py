from __future__ import annotations

import hashlib
import io

import pytest

from gateway.storage import LocalStorage


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 7])
def test_put_roundtrip_is_byte_exact_and_content_addressed(tmp_path, size):
    storage = LocalStorage(tmp_path)
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    sha, written = storage.put(io.BytesIO(data))
    assert written == size
    assert sha == hashlib.sha256(data).hexdigest()
    with storage.open(sha) as f:
        assert f.read() == data
    again, _ = storage.put(io.BytesIO(data))
    assert again == sha
    assert list(storage.iter_hashes()) == [sha]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".upload-")]


def test_failed_write_leaves_no_file(tmp_path):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise OSError("disk gone")
            return super().read(4)

    storage = LocalStorage(tmp_path)
    with pytest.raises(OSError):
        storage.put(Broken(b"abcdefgh"))
    assert list(storage.iter_hashes()) == []
    assert list(tmp_path.iterdir()) == []


def test_hash_is_checked(tmp_path):
    storage = LocalStorage(tmp_path)
    with pytest.raises(ValueError):
        storage.path_for("../../etc/passwd")
    assert storage.delete("0" * 64) is False
