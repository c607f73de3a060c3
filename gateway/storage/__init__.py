"""Attachment file storage, content-addressed by SHA-256.

Identical files are stored once; a file is removed only when no attachment
row references it any more (see :func:`collect`). The local backend writes
atomically (temp file, fsync, rename), so a crash never leaves a half file
under a real name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

CHUNK = 1 << 20


class Storage(Protocol):
    def put(self, stream: BinaryIO) -> tuple[str, int]: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def exists(self, sha256: str) -> bool: ...
    def delete(self, sha256: str) -> bool: ...
    def age_seconds(self, sha256: str) -> float | None: ...
    def iter_hashes(self) -> Iterator[str]: ...


def _check_hash(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("not a sha256 hex digest")
    return sha256


class LocalStorage:
    """Files under ``root/ab/cd/<sha256>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        sha256 = _check_hash(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, stream: BinaryIO) -> tuple[str, int]:
        """Store a stream; returns (sha256, size). Streams in 1 MiB chunks."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            final = self.path_for(digest.hexdigest())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)  # identical bytes: replacing is harmless
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest.hexdigest(), size

    def open(self, sha256: str) -> BinaryIO:
        return self.path_for(sha256).open("rb")

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def delete(self, sha256: str) -> bool:
        try:
            self.path_for(sha256).unlink()
            return True
        except FileNotFoundError:
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


# An upload stores its file before its row commits; a file younger than this
# is never collected, so a concurrent upload of the same bytes keeps its file.
GRACE_SECONDS = 15 * 60


def collect(
    session: Session, storage: Storage, hashes: list[str], grace_seconds: float = GRACE_SECONDS
) -> int:
    """Remove the files among ``hashes`` that no attachment references; returns how many."""
    from gateway.attachments.models import Attachment

    if not hashes:
        return 0
    referenced = set(
        session.scalars(select(Attachment.sha256).where(Attachment.sha256.in_(hashes)))
    )
    removed = 0
    for sha in hashes:
        if sha in referenced:
            continue
        age = storage.age_seconds(sha)
        if age is not None and age >= grace_seconds and storage.delete(sha):
            removed += 1
    return removed
