"""Attachment file storage, content-addressed by SHA-256.

Identical files are stored once; a file is removed only when no attachment
row references it any more (see :func:`collect`).

    staging.py   StagedFile: an upload streamed to a temp file while hashed
    hashing.py   FileHasher: the SHA-256 of a large staged file, on a helper thread
    writeback.py start_writeback: begin writing dirty pages early (short fsync)
    local.py     LocalStorage: ``root/ab/cd/<sha256>``, commit = fsync + rename
    s3.py        S3Storage: the same keys in an S3-compatible bucket (boto3)

Writing is two steps, so that a file can be checked between them:
``stage()`` hands out a :class:`StagedFile` to stream into (with a size
limit), ``commit()`` puts it at its address. ``put()`` does both for a stream.
Entry points pick the backend with :func:`storage_from_settings`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.storage.local import LocalStorage
from gateway.storage.staging import CHUNK, HEAD_BYTES, StagedFile

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = [
    "CHUNK",
    "GRACE_SECONDS",
    "HEAD_BYTES",
    "LocalStorage",
    "StagedFile",
    "Storage",
    "collect",
    "storage_from_settings",
]


class Storage(Protocol):
    def stage(self, max_bytes: int | None = None) -> StagedFile: ...
    def commit(self, staged: StagedFile) -> tuple[str, int]: ...
    def put(self, stream: BinaryIO, max_bytes: int | None = None) -> tuple[str, int]: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def exists(self, sha256: str) -> bool: ...
    def delete(self, sha256: str, older_than: float = 0.0) -> bool: ...
    def age_seconds(self, sha256: str) -> float | None: ...
    def iter_hashes(self) -> Iterator[str]: ...
    def remove_stale_staging(self, older_than: float) -> int: ...
    def check(self) -> None: ...


# An upload stores its file before its row commits; a file younger than this
# is never collected, so a concurrent upload of the same bytes keeps its file.
GRACE_SECONDS = 15 * 60


def collect(
    session: Session, storage: Storage, hashes: list[str], grace_seconds: float = GRACE_SECONDS
) -> int:
    """Remove the files among ``hashes`` that no attachment references; returns how many.

    Safe against an upload of the same bytes running at the same time: its row
    may not be committed yet, but its file is young, and ``delete`` leaves
    young files alone (atomically on a local disk, see LocalStorage.delete).
    """
    from gateway.attachments.models import Attachment

    if not hashes:
        return 0
    referenced = set(
        session.scalars(select(Attachment.sha256).where(Attachment.sha256.in_(hashes)))
    )
    removed = 0
    for sha in dict.fromkeys(hashes):
        if sha not in referenced and storage.delete(sha, older_than=grace_seconds):
            removed += 1
    return removed


def storage_from_settings(settings: Settings) -> Storage:
    """The backend the settings name (for entry points only)."""
    if settings.storage_backend == "s3":
        from gateway.storage.s3 import S3Storage

        assert settings.s3_bucket  # checked by Settings
        secret = settings.s3_secret_access_key
        return S3Storage(
            settings.s3_bucket,
            spool=settings.data_dir / "spool",
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
        )
    return LocalStorage(settings.data_dir / "attachments")
