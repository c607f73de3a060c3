"""The S3-compatible backend (AWS S3, MinIO, Ceph, moto …), through boto3.

Objects live under ``<prefix>ab/cd/<sha256>`` in one bucket. An upload is
staged in a local spool directory (hashed while it streams in, since the key
*is* the hash), then sent with boto3's managed transfer, which reads the file
in chunks: multipart above ``multipart_threshold``, never the whole file in
memory. Every commit re-sends the object even when it exists, which renews
its ``LastModified``: that is the age ``delete(older_than=…)`` trusts.

Unlike a rename on a local disk, S3 has no way to make "check the age, then
delete" atomic: an upload of the same bytes that lands between the two is
lost. The grace period (minutes) against the gap (one round trip) keeps that
window theoretical; the sweep never deletes a referenced file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from gateway.storage.local import check_hash
from gateway.storage.staging import StagedFile

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


class _Body(io.RawIOBase):
    """A botocore StreamingBody as a readable, closeable binary file."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return bytes(self._body.read(None if size is None or size < 0 else size))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            super().close()


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


class S3Storage:
    def __init__(
        self,
        bucket: str,
        *,
        spool: Path,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.spool = spool
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=Config(
                    retries={"max_attempts": 4, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                    # S3-compatible servers addressed by URL mostly want path style.
                    s3={"addressing_style": "path" if endpoint_url else "auto"},
                ),
            )
        self.client = client

    def key_for(self, sha256: str) -> str:
        sha256 = check_hash(sha256)
        return f"{self.prefix}{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def stage(self, max_bytes: int | None = None) -> StagedFile:
        return StagedFile(self.spool, max_bytes)

    def commit(self, staged: StagedFile) -> tuple[str, int]:
        from boto3.s3.transfer import TransferConfig

        staged.finish()
        try:
            self.client.upload_file(
                str(staged.path),
                self.bucket,
                self.key_for(staged.sha256),
                Config=TransferConfig(
                    multipart_threshold=MULTIPART_THRESHOLD,
                    multipart_chunksize=MULTIPART_CHUNK,
                    max_concurrency=4,
                ),
            )
        finally:
            staged.discard()  # the local spool copy; the object is in the bucket
        staged.committed = True
        return staged.sha256, staged.size

    def put(self, stream: BinaryIO, max_bytes: int | None = None) -> tuple[str, int]:
        with self.stage(max_bytes) as staged:
            staged.copy_from(stream)
            return self.commit(staged)

    def open(self, sha256: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key_for(sha256))
        except Exception as exc:
            if _not_found(exc):
                raise FileNotFoundError(sha256) from None
            raise
        return io.BufferedReader(_Body(response["Body"]), buffer_size=256 * 1024)  # type: ignore[return-value]

    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self.key_for(sha256)))
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def age_seconds(self, sha256: str) -> float | None:
        head = self._head(sha256)
        if head is None:
            return None
        modified: datetime = head["LastModified"]
        return (datetime.now(UTC) - modified).total_seconds()

    def delete(self, sha256: str, older_than: float = 0.0) -> bool:
        """Remove an object; with ``older_than``, only one at least that old."""
        age = self.age_seconds(sha256)
        if age is None or (older_than > 0 and age < older_than):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key_for(sha256))
        return True

    def iter_hashes(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
                    yield name

    def remove_stale_staging(self, older_than: float) -> int:
        import time

        if not self.spool.is_dir():
            return 0
        removed = 0
        now = time.time()
        for path in self.spool.glob(".upload-*"):
            try:
                if now - path.stat().st_mtime >= older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def check(self) -> None:
        """Raise unless the bucket answers."""
        self.client.head_bucket(Bucket=self.bucket)
