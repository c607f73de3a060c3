"""Which files are accepted, per kind, and how stored files are served.

Two kinds ("buckets") of attachment, each with a size limit and allow/deny
lists of sniffed media types (deny wins; ``*`` and ``type/*`` patterns):

    kind         limit setting                 default types
    attachment   SUPPORTGATE_MAX_ATTACHMENT_BYTES  anything but executables
    inline       SUPPORTGATE_MAX_INLINE_BYTES      image/* (cid: images of mail)

Archives get a ratio and an expanded-size cap (zip bombs). The API refuses a
file that fails (413 too large, 415 refused type); mail keeps it quarantined
(see services.store_mail_file), since a customer's mail is never dropped.

Serving: a stored type is sent as itself only when it is on SERVED_AS_IS
(types a browser will not run as a page on our origin); anything else, HTML
and SVG included, goes out as application/octet-stream.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import PayloadTooLarge, UnsupportedMediaType

if TYPE_CHECKING:
    from gateway.config import Settings

OCTET_STREAM = "application/octet-stream"

SERVED_AS_IS = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/bmp",
        "image/tiff",
        "image/avif",
        "application/pdf",
        "text/plain",
        "text/csv",
        "application/zip",
        "application/gzip",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "audio/x-wav",
        "video/mp4",
        "video/webm",
        "message/rfc822",
    }
)


def served_type(content_type: str, quarantined: bool = False) -> str:
    """The Content-Type to send a stored file with."""
    if quarantined or content_type not in SERVED_AS_IS:
        return OCTET_STREAM
    return content_type


def _matches(content_type: str, pattern: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("/*"):
        return content_type.startswith(pattern[:-1])
    return content_type == pattern


@dataclass(frozen=True)
class KindPolicy:
    kind: str
    max_bytes: int
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()

    def type_allowed(self, content_type: str) -> bool:
        if any(_matches(content_type, p) for p in self.deny):
            return False
        return any(_matches(content_type, p) for p in self.allow)


@dataclass(frozen=True)
class Policies:
    attachment: KindPolicy
    inline: KindPolicy
    archive_max_ratio: int = 100
    archive_max_expanded_bytes: int = 1 << 30

    @classmethod
    def from_settings(cls, settings: Settings) -> Policies:
        from gateway.config import split_list

        return cls(
            attachment=KindPolicy(
                "attachment",
                settings.max_attachment_bytes,
                split_list(settings.attachment_allow),
                split_list(settings.attachment_deny),
            ),
            inline=KindPolicy(
                "inline",
                settings.max_inline_bytes,
                split_list(settings.inline_allow),
                split_list(settings.inline_deny),
            ),
            archive_max_ratio=settings.archive_max_ratio,
            archive_max_expanded_bytes=settings.archive_max_expanded_bytes,
        )

    @classmethod
    def defaults(cls) -> Policies:
        """The policies of default settings (for callers given none)."""
        from gateway.config import Settings

        return cls.from_settings(Settings.model_construct())

    def for_kind(self, inline: bool) -> KindPolicy:
        return self.inline if inline else self.attachment


def _expanded_size(path: Path, content_type: str) -> int | None:
    """What an archive claims it expands to, from its directory (no decompression)."""
    try:
        if content_type == "application/gzip":
            with path.open("rb") as fh:
                fh.seek(-4, 2)
                # ISIZE: the last member's size mod 2**32; enough to catch a bomb.
                return int(struct.unpack("<I", fh.read(4))[0])
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, struct.error, gzip.BadGzipFile, ValueError):
        return None
    return None


def check_file(
    policies: Policies, policy: KindPolicy, content_type: str, size: int, path: Path
) -> None:
    """Raise PayloadTooLarge or UnsupportedMediaType when ``policy`` refuses the file."""
    if size > policy.max_bytes:
        raise PayloadTooLarge(
            f"{policy.kind} files are at most {policy.max_bytes} bytes",
            data={"limit": policy.max_bytes},
        )
    if not policy.type_allowed(content_type):
        raise UnsupportedMediaType(
            f"{content_type} files are not accepted as {policy.kind}s",
            data={"content_type": content_type},
        )
    expanded = _expanded_size(path, content_type)
    if expanded is not None and size > 0:
        if expanded > policies.archive_max_expanded_bytes:
            raise UnsupportedMediaType(
                f"the archive expands to more than {policies.archive_max_expanded_bytes} bytes",
                data={"content_type": content_type},
            )
        if expanded / size > policies.archive_max_ratio:
            raise UnsupportedMediaType(
                f"the archive expands more than {policies.archive_max_ratio}:1",
                data={"content_type": content_type},
            )
