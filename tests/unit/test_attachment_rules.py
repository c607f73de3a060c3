"""Pure parts of attachments: sniffing, policies, names, previews."""

from __future__ import annotations

import gzip
import io
import zipfile

import pytest
from PIL import Image

from gateway.attachments.policy import KindPolicy, Policies, check_file, served_type
from gateway.attachments.previews import (
    PreviewCache,
    PreviewUnavailable,
    preview_kind,
    text_excerpt,
    thumbnail_png,
)
from gateway.attachments.services import clean_filename
from gateway.attachments.sniff import sniff
from gateway.config import Settings, load_settings
from gateway.errors import ConfigurationError, PayloadTooLarge, UnsupportedMediaType
from web.api.attachments import content_disposition


def image(fmt: str, size=(50, 40), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "red" if mode != "P" else 1).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "application/octet-stream"),
        (b"x", "application/octet-stream"),
        (b"plain words\n", "text/plain"),
        (b"<!DOCTYPE html><html><body>x</body></html>", "text/html"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"MZ" + b"\0" * 100, "application/x-dosexec"),
    ],
)
def test_sniff_reads_the_bytes(data, expected):
    assert sniff(data) == expected


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_sniff_images(fmt):
    assert sniff(image(fmt)) == f"image/{fmt.lower()}"


def test_kind_policy_allow_and_deny():
    policy = KindPolicy("inline", 100, allow=("image/*",), deny=("image/svg+xml",))
    assert policy.type_allowed("image/png")
    assert not policy.type_allowed("image/svg+xml")
    assert not policy.type_allowed("text/html")
    assert KindPolicy("attachment", 1, allow=("*",)).type_allowed("anything/at-all")


def test_default_policies():
    policies = Policies.defaults()
    assert policies.attachment.max_bytes == 26214400
    assert not policies.attachment.type_allowed("application/x-dosexec")
    assert policies.attachment.type_allowed("text/html")
    assert policies.inline.type_allowed("image/gif")
    assert not policies.inline.type_allowed("application/pdf")


def _file(tmp_path, data: bytes):
    path = tmp_path / "f"
    path.write_bytes(data)
    return path, len(data)


def test_check_file_limits_and_archives(tmp_path):
    policies = Policies.defaults()
    path, size = _file(tmp_path, b"x" * 10)
    small = KindPolicy("attachment", 9)
    with pytest.raises(PayloadTooLarge):
        check_file(policies, small, "text/plain", size, path)
    with pytest.raises(UnsupportedMediaType):
        check_file(policies, policies.attachment, "application/x-dosexec", size, path)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("z", b"\0" * 5_000_000)
    path, size = _file(tmp_path, bomb.getvalue())
    with pytest.raises(UnsupportedMediaType, match="100:1"):
        check_file(policies, policies.attachment, "application/zip", size, path)
    path, size = _file(tmp_path, gzip.compress(b"\0" * 5_000_000))
    with pytest.raises(UnsupportedMediaType, match="100:1"):
        check_file(policies, policies.attachment, "application/gzip", size, path)
    capped = Policies(policies.attachment, policies.inline, 10**6, archive_max_expanded_bytes=1000)
    with pytest.raises(UnsupportedMediaType, match="expands to more than"):
        check_file(capped, capped.attachment, "application/gzip", size, path)


def test_served_type_is_an_allowlist():
    assert served_type("image/png") == "image/png"
    assert served_type("text/html") == "application/octet-stream"
    assert served_type("image/svg+xml") == "application/octet-stream"
    assert served_type("application/xhtml+xml") == "application/octet-stream"
    assert served_type("image/png", quarantined=True) == "application/octet-stream"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("report.pdf", "report.pdf"),
        ("C:\\fakepath\\report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("a\r\nb\x00c.txt", "abc.txt"),
        ("", "attachment"),
        (None, "attachment"),
        (".hidden", "hidden"),
        ("x" * 300 + ".jpeg", "x" * 250 + ".jpeg"),
    ],
)
def test_clean_filename(raw, clean):
    assert clean_filename(raw) == clean


def test_content_disposition_is_rfc6266():
    assert content_disposition("a.txt") == "attachment; filename=\"a.txt\"; filename*=UTF-8''a.txt"
    value = content_disposition('ü "x"\\%/.png')
    assert value.startswith("attachment; filename=\"u _x____.png\"; filename*=UTF-8''")
    assert "%C3%BC%20%22x%22%5C%25%2F.png" in value
    assert content_disposition("日本.txt").startswith('attachment; filename=".txt"')


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_thumbnail_of_each_format(fmt):
    png = thumbnail_png(io.BytesIO(image(fmt, (900, 300))), f"image/{fmt.lower()}", 100, 10**7)
    thumb = Image.open(io.BytesIO(png))
    assert thumb.format == "PNG" and thumb.size == (100, 33)


def test_thumbnail_refuses_a_decompression_bomb_by_its_header():
    data = image("PNG", (3000, 3000), mode="1")  # small file, 9 million pixels
    # Over the limit (Pillow's warning, made an error) and over twice the limit
    # (Pillow's own error): refused either way, from the header, without a crash.
    for limit in (5_000_000, 1_000_000):
        with pytest.raises(PreviewUnavailable, match="more pixels"):
            thumbnail_png(io.BytesIO(data), "image/png", 100, max_pixels=limit)
    assert thumbnail_png(io.BytesIO(data), "image/png", 100, max_pixels=9_000_000)


def test_thumbnail_refuses_what_is_not_what_it_claims():
    with pytest.raises(PreviewUnavailable):
        thumbnail_png(io.BytesIO(image("GIF")), "image/png", 100, 10**7)
    with pytest.raises(PreviewUnavailable):
        thumbnail_png(io.BytesIO(b"\x89PNG\r\n\x1a\nbroken"), "image/png", 100, 10**7)
    with pytest.raises(PreviewUnavailable):
        thumbnail_png(io.BytesIO(b"<svg/>"), "image/svg+xml", 100, 10**7)


def test_preview_cache(tmp_path):
    cache = PreviewCache(tmp_path, size=64)
    sha = "ab" * 32
    assert cache.get(sha) is None
    png = cache.make(sha, io.BytesIO(image("PNG")), "image/png")
    assert cache.get(sha) == png
    assert cache.cached_hashes() == [sha]
    cache.forget(sha)
    assert cache.get(sha) is None


def test_preview_kind_and_text_excerpt():
    assert preview_kind("image/png") == "image"
    assert preview_kind("image/svg+xml") is None
    assert preview_kind("text/csv") == "text"
    assert preview_kind("text/plain", quarantined=True) is None
    assert preview_kind("application/pdf") is None
    assert text_excerpt(io.BytesIO("héllo\x00\x1b[31m\tok\n".encode())) == "héllo[31m\tok\n"
    cut = text_excerpt(io.BytesIO(("é" * 3000).encode()), limit=4097)
    assert cut == "é" * 2048
    assert text_excerpt(io.BytesIO("hi".encode("utf-16"))) == "hi"


def test_attachment_settings_are_checked():
    settings = load_settings(
        _env_file=None,
        attachment_allow="image/*, application/PDF",
        cors_origins="https://a.example/",
    )
    assert settings.attachment_allow == "image/*,application/pdf"
    assert settings.cors_origins == "https://a.example"
    for bad in (
        {"attachment_deny": "not a type"},
        {"cors_origins": "a.example"},
        {"storage_backend": "s3"},
    ):
        with pytest.raises(ConfigurationError):
            load_settings(_env_file=None, **bad)
    assert Settings(_env_file=None, storage_backend="s3", s3_bucket="b").s3_bucket == "b"
