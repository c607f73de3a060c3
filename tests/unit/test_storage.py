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


# --- staging, limits and the age-guarded delete ------------------------------------


def test_staged_file_is_invisible_until_committed(tmp_path):
    storage = LocalStorage(tmp_path)
    staged = storage.stage(max_bytes=10)
    staged.write(b"hello")
    assert staged.size == 5 and staged.head == b"hello"
    assert list(storage.iter_hashes()) == []
    sha, size = storage.commit(staged)
    assert size == 5 and storage.exists(sha)
    staged.discard()  # after a commit: nothing to remove, the file stays
    assert storage.exists(sha)


def test_staged_file_refuses_to_grow_past_its_limit(tmp_path):
    from gateway.errors import PayloadTooLarge

    storage = LocalStorage(tmp_path)
    with storage.stage(max_bytes=4) as staged:
        staged.write(b"1234")
        with pytest.raises(PayloadTooLarge):
            staged.write(b"5")
    assert list(tmp_path.iterdir()) == []


def test_delete_with_grace_keeps_young_files_and_removes_old_ones(tmp_path):
    import os
    import time

    storage = LocalStorage(tmp_path)
    sha, _ = storage.put(io.BytesIO(b"young"))
    assert storage.delete(sha, older_than=60) is False
    assert storage.exists(sha)
    past = time.time() - 120
    os.utime(storage.path_for(sha), (past, past))
    assert storage.delete(sha, older_than=60) is True
    assert not storage.exists(sha)
    assert storage.delete(sha, older_than=60) is False
    assert not [p for p in tmp_path.rglob(".delete-*")]


def test_an_upload_landing_during_a_delete_survives(tmp_path, monkeypatch):
    """The file is renamed aside before its age is read: an upload of the same
    bytes that landed just before the rename is found young and put back."""
    import os
    import time

    from gateway.storage import local

    storage = LocalStorage(tmp_path)
    data = b"same bytes"
    sha, _ = storage.put(io.BytesIO(data))
    past = time.time() - 3600
    os.utime(storage.path_for(sha), (past, past))
    real_rename = local.os.rename

    def upload_then_rename(src, dst):
        storage.put(io.BytesIO(data))  # the concurrent upload wins the race to the disk
        return real_rename(src, dst)

    monkeypatch.setattr(local.os, "rename", upload_then_rename)
    assert storage.delete(sha, older_than=60) is False
    monkeypatch.setattr(local.os, "rename", real_rename)
    with storage.open(sha) as f:
        assert f.read() == data


def test_stale_staging_is_tidied_and_set_aside_files_come_back(tmp_path):
    import os
    import time

    storage = LocalStorage(tmp_path)
    sha, _ = storage.put(io.BytesIO(b"kept"))
    path = storage.path_for(sha)
    aside = path.with_name(f".delete-{sha}-deadbeef")
    os.rename(path, aside)  # as a crash in the middle of delete() leaves it
    staged = storage.stage()
    staged.write(b"half an upload")
    staged.close()
    past = time.time() - 7200
    for p in (aside, staged.path):
        os.utime(p, (past, past))
    assert storage.remove_stale_staging(3600) == 1
    assert storage.exists(sha)
    assert not staged.path.exists()
