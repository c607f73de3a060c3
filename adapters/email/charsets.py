"""Turning the bytes of inbound mail into text without ever losing the message.

``decode_body`` decodes a body with its declared charset: every codec Python
knows, with the WHATWG-style supersets mail clients really mean (a message
labelled ``iso-8859-1`` is read as ``windows-1252``, ``gb2312`` as ``gb18030``,
``shift_jis`` as ``cp932``...). An unknown or wrong charset falls back to a
lenient decode (UTF-8, else windows-1252 with replacement characters) and a
defect; it never raises. ``clean_text`` makes any ``str`` safe to store: the
surrogate-escaped raw bytes the ``email`` package leaves in headers are
decoded, and NUL characters (which PostgreSQL text refuses) become U+FFFD.
"""

from __future__ import annotations

import codecs
import re

# Labels seen in real mail that Python's codec registry does not know.
_LABEL_ALIASES = {
    "x-gbk": "gbk",
    "windows-874": "cp874",
    "x-mac-roman": "mac-roman",
    "x-sjis": "shift_jis",
    "x-euc-jp": "euc_jp",
    "x-unicode-2-0-utf-7": "utf-7",
    "utf8mb4": "utf-8",
}
# Codec (canonical name) -> codecs to try, in order, before giving up.
_DECODE_ORDER = {
    "ascii": ("ascii", "utf-8", "cp1252"),
    "iso8859-1": ("cp1252", "iso8859-1"),
    "iso8859-9": ("cp1254", "iso8859-9"),
    "tis-620": ("cp874", "tis-620"),
    "utf-8": ("utf-8-sig",),
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "shift_jis": ("cp932", "shift_jis"),
    "euc_kr": ("cp949", "euc_kr"),
    "big5": ("big5hkscs", "cp950"),
    "iso2022_jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_3"),
}
# Text codecs that are not charsets: decoding mail with them is never right.
_NOT_CHARSETS = {"undefined", "unicode-escape", "raw-unicode-escape", "idna", "punycode", "mbcs"}

_SURROGATES = re.compile("[\ud800-\udfff]")
_META_CHARSET = re.compile(
    rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE
)


def codec_for(label: str | None) -> str | None:
    """The canonical codec name for a MIME charset label, or None when unknown."""
    if not label:
        return None
    name = label.strip().strip("\"'").strip().lower()
    name = _LABEL_ALIASES.get(name, name)
    try:
        codec = codecs.lookup(name).name
    except (LookupError, ValueError):
        return None
    return None if codec in _NOT_CHARSETS else codec


def decode_lenient(data: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else windows-1252; never raises."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def clean_text(text: str) -> str:
    """Decode surrogate-escaped bytes (as UTF-8, else windows-1252) and replace NULs."""
    if _SURROGATES.search(text):
        try:
            text = decode_lenient(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd")


def decode_body(data: bytes, label: str | None, defects: list[str], where: str) -> str:
    """Decode a body declared as ``label``; problems become ``defects``, never exceptions."""
    if label is None:
        if data.isascii():
            return clean_text(data.decode("ascii"))
        text = decode_lenient(data)
        if "\ufffd" in text:
            defects.append(f"{where}: 8-bit text without a charset, read as windows-1252")
        return clean_text(text)
    codec = codec_for(label)
    if codec is None:
        defects.append(f"{where}: unknown charset {label!r}, read as UTF-8/windows-1252")
        return clean_text(decode_lenient(data))
    for candidate in _DECODE_ORDER.get(codec, (codec,)):
        try:
            return clean_text(data.decode(candidate))
        except UnicodeDecodeError:
            continue
        except LookupError:  # a codec missing from this build of Python
            continue
    defects.append(f"{where}: text is not valid {label}, undecodable bytes replaced")
    fallback = {"ascii": "cp1252", "utf-8": "utf-8-sig"}.get(codec, codec)
    return clean_text(data.decode(fallback, "replace"))


def sniff_html_charset(data: bytes) -> str | None:
    """The charset an HTML document declares in a ``<meta>`` near its top, if any."""
    match = _META_CHARSET.search(data[:4096])
    return match.group(1).decode("ascii") if match else None


def unflow(text: str, delsp: bool) -> str:
    """Undo RFC 3676 ``format=flowed``: join soft-broken lines, drop space-stuffing."""
    out: list[str] = []
    pending: str | None = None
    pending_depth = 0
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        body = line[depth:]
        if body.startswith(" "):
            body = body[1:]
        flowed = body.endswith(" ") and body != "-- "
        if flowed and delsp:
            body = body[:-1]
        if pending is not None and depth != pending_depth:
            out.append(_quote(pending_depth) + pending)
            pending = None
        if pending is None:
            pending, pending_depth = body, depth
        else:
            pending += body
        if not flowed:
            out.append(_quote(depth) + pending)
            pending = None
    if pending is not None:
        out.append(_quote(pending_depth) + pending)
    return "\n".join(out)


def _quote(depth: int) -> str:
    return ">" * depth + " " if depth else ""
