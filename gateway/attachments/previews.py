"""Safe previews: a PNG thumbnail of an image, a plain-text excerpt of text.

Images are decoded by Pillow only for the raster formats named in
IMAGE_FORMATS, with the decompression-bomb limit set (``Image.MAX_IMAGE_PIXELS``
and Pillow's DecompressionBombWarning turned into an error) and checked by
hand before anything is decoded, so a 50,000 x 50,000 PNG of a few kilobytes
is refused, not inflated. Whatever goes wrong while decoding is
:class:`PreviewUnavailable`, never a crash.

Thumbnails are cached on local disk by the file's sha256 and size (they can
be made again at any time): the ``attachment.preview`` task makes them right
after an upload, the preview route makes one on a miss.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Media type (as sniffed) -> Pillow's format name.
IMAGE_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/tiff": "TIFF",
}
TEXT_EXCERPT_BYTES = 4096


class PreviewUnavailable(Exception):
    """No preview can be made of this file (wrong kind, damaged, too large)."""


def preview_kind(content_type: str, quarantined: bool = False) -> str | None:
    """What preview a file of this type gets: "image", "text" or None."""
    if quarantined:
        return None
    if content_type in IMAGE_FORMATS:
        return "image"
    if content_type.startswith("text/"):
        return "text"
    return None


def _seekable(stream: BinaryIO) -> BinaryIO:
    if getattr(stream, "seekable", lambda: False)():
        return stream
    spooled = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 - returned
    while chunk := stream.read(1 << 20):
        spooled.write(chunk)
    spooled.seek(0)
    return spooled  # type: ignore[return-value]


def thumbnail_png(stream: BinaryIO, content_type: str, size: int, max_pixels: int) -> bytes:
    """A PNG at most ``size`` pixels a side; PreviewUnavailable otherwise."""
    from PIL import Image, ImageOps

    fmt = IMAGE_FORMATS.get(content_type)
    if fmt is None:
        raise PreviewUnavailable("not an image")
    Image.MAX_IMAGE_PIXELS = max_pixels
    source = _seekable(stream)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=[fmt]) as image:
                width, height = image.size
                if width * height > max_pixels or width <= 0 or height <= 0:
                    raise PreviewUnavailable("the image has more pixels than this server previews")
                if fmt == "JPEG":
                    image.draft("RGB", (size * 2, size * 2))  # decode at 1/2..1/8 scale
                image.seek(0)  # the first frame of an animation
                frame = ImageOps.exif_transpose(image) or image
                frame.thumbnail((size, size))
                if frame.mode not in ("RGB", "RGBA", "L", "LA"):
                    frame = frame.convert("RGBA")
                out = io.BytesIO()
                frame.save(out, "PNG", optimize=False)
                return out.getvalue()
    except PreviewUnavailable:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PreviewUnavailable("the image has more pixels than this server previews") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        MemoryError,
        IndexError,
        TypeError,
        KeyError,
        ZeroDivisionError,
    ) as exc:
        raise PreviewUnavailable(f"the image cannot be previewed: {type(exc).__name__}") from None
    finally:
        if source is not stream:
            source.close()


def text_excerpt(stream: BinaryIO, limit: int = TEXT_EXCERPT_BYTES) -> str:
    """The first ``limit`` bytes as text: UTF-8 (or UTF-16 with a BOM), control
    characters other than tab and newline dropped."""
    data = stream.read(limit)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        text = data.decode("utf-8-sig", errors="replace")
        if len(data) == limit:
            text = text.rstrip("\ufffd")  # a character cut by the limit
    return "".join(c for c in text if c in "\t\n" or (c >= " " and c != "\x7f"))


@dataclass
class PreviewCache:
    """Thumbnails on local disk: ``root/ab/<sha256>-<size>.png``."""

    root: Path
    size: int = 320
    max_pixels: int = 50_000_000

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}-{self.size}.png"

    def get(self, sha256: str) -> bytes | None:
        try:
            return self.path_for(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def make(self, sha256: str, stream: BinaryIO, content_type: str) -> bytes:
        """Make (and keep) the thumbnail; PreviewUnavailable when there is none."""
        png = thumbnail_png(stream, content_type, self.size, self.max_pixels)
        path = self.path_for(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".thumb-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(png)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return png

    def forget(self, sha256: str) -> None:
        with contextlib.suppress(OSError):
            self.path_for(sha256).unlink()

    def cached_hashes(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted({p.name.split("-")[0] for p in self.root.glob("??/*.png")})
