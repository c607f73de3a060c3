"""The local-filesystem backend: files under ``root/ab/cd/<sha256>``."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gateway.storage.staging import StagedFile


def check_hash(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("not a sha256 hex digest")
    return sha256


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LocalStorage:
    """Content-addressed files on one filesystem; staging happens beside them,
    so a commit is a rename: atomic, and never a half file under a real name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        sha256 = check_hash(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def stage(self, max_bytes: int | None = None) -> StagedFile:
        return StagedFile(self.root, max_bytes)

    def commit(self, staged: StagedFile) -> tuple[str, int]:
        """Move a staged file to its content address. Identical bytes already
        there are replaced, which also renews the file's age (see ``delete``)."""
        staged.finish()
        final = self.path_for(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        staged.committed = True
        _fsync_dir(final.parent)
        return staged.sha256, staged.size

    def put(self, stream: BinaryIO, max_bytes: int | None = None) -> tuple[str, int]:
        """Store a stream in 1 MiB chunks; returns (sha256, size)."""
        with self.stage(max_bytes) as staged:
            staged.copy_from(stream)
            return self.commit(staged)

    def open(self, sha256: str) -> BinaryIO:
        return self.path_for(sha256).open("rb")

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def delete(self, sha256: str, older_than: float = 0.0) -> bool:
        """Remove a file; with ``older_than``, only one written at least that
        many seconds ago.

        The age is read *after* the file is renamed out of the way, so an upload
        of the same bytes that lands just before the rename is seen (young: put
        back) and one that lands after it writes a fresh file that stays.
        """
        path = self.path_for(sha256)
        if older_than <= 0:
            try:
                path.unlink()
                return True
            except FileNotFoundError:
                return False
        aside = path.with_name(f".delete-{sha256}-{uuid.uuid4().hex}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if time.time() - aside.stat().st_mtime >= older_than:
            aside.unlink()
            return True
        os.replace(aside, path)  # same bytes whatever is there now
        return False

    def age_seconds(self, sha256: str) -> float | None:
        try:
            return time.time() - self.path_for(sha256).stat().st_mtime
        except FileNotFoundError:
            return None

    def iter_hashes(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for path in self.root.glob("??/??/*"):
            if len(path.name) == 64 and not path.name.startswith("."):
                yield path.name

    def remove_stale_staging(self, older_than: float) -> int:
        """Tidy what a crash can leave: staged uploads older than ``older_than``
        are removed; a file a crash left set aside by ``delete`` goes back to
        its address (the next collection decides about it). Returns how many
        staged files went."""
        if not self.root.is_dir():
            return 0
        removed = 0
        now = time.time()
        for path in self.root.glob(".upload-*"):
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime >= older_than:
                    path.unlink()
                    removed += 1
        for path in self.root.glob("??/??/.delete-*"):
            sha = path.name.split("-")[1] if path.name.count("-") >= 2 else ""
            with contextlib.suppress(FileNotFoundError, ValueError):
                if now - path.stat().st_mtime < older_than:
                    continue
                final = self.path_for(sha)
                if final.exists():
                    path.unlink()
                else:
                    os.replace(path, final)
        return removed

    def check(self) -> None:
        """Raise OSError unless a file can be staged here."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.stage() as staged:
            staged.write(b"")
