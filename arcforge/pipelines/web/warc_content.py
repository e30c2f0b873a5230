"""Payload checks of ``web.extract_warc`` that run before extraction.

All of them look at bytes, are bounded, and give the same answer every time, so
that what reaches trafilatura (and what comes out) does not depend on timing:
HTTP payload decoding stops at a byte limit (a gzip bomb inside a page inflates
no further than that), binary content is recognised whatever the Content-Type
says, and nesting depth is measured with a cheap model of an HTML parser's
stack of open elements.
"""

from __future__ import annotations

import io
import re
import zlib
from typing import Any

import numpy as np

from warcio.bufferedreaders import ChunkedDataReader

REJECTED_TEXT_BYTES = 1 << 16  # a rejected row keeps this much of its payload

_UNSUPPORTED_ENCODINGS = frozenset({"br", "zstd", "compress", "x-compress"})


class PayloadDecodeError(ValueError):
    """Chunked transfer or content encoding that cannot be undone."""


def decode_html(payload: bytes, charset: str | None) -> str:
    """The declared charset if Python knows it, else UTF-8, else cp1252; never raises."""
    text = None
    if charset:
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:  # unknown or non-text codec name in the header
            text = None
    if text is None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = payload.decode("cp1252", errors="replace")
    return text.removeprefix("\ufeff")


def text_prefix(data: bytes, charset: str | None, cut: bool) -> str:
    """``data`` decoded; when it was cut from a longer payload, a split UTF-8 character at the end is dropped."""
    if cut:
        i = len(data)
        while i > len(data) - 3 and i > 0 and data[i - 1] & 0xC0 == 0x80:  # continuation bytes
            i -= 1
        if i > 0 and data[i - 1] >= 0xC0:  # the lead byte of a sequence the cut split
            data = data[: i - 1]
    return decode_html(data, charset)


def _inflate(body: bytes, wbits: int, limit: int, name: str) -> tuple[bytes, bool]:
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise PayloadDecodeError(f"{name} content-encoding: {e}") from None
    if len(out) > limit:
        return out[:limit], True
    if not d.eof:
        raise PayloadDecodeError(f"{name} content-encoding ends before its end marker (truncated)")
    return out, False


def decode_payload(http: Any, body: bytes, limit: int) -> tuple[bytes, bool]:
    """The HTTP payload with chunking and gzip/deflate undone: (its first ``limit`` bytes, whether there is more).

    Like warcio, a body that does not even start like its declared encoding is
    taken as not encoded; one that starts so and then fails raises.
    """
    if "chunked" in (http.get_header("Transfer-Encoding") or "").lower():
        body = ChunkedDataReader(io.BytesIO(body)).read()  # bounded by the body itself
    enc = (http.get_header("Content-Encoding") or "").strip().lower()
    if enc in ("gzip", "x-gzip") and body[:2] == b"\x1f\x8b":
        return _inflate(body, 16 + zlib.MAX_WBITS, limit, enc)
    if enc == "deflate" and body:
        try:
            return _inflate(body, zlib.MAX_WBITS, limit, enc)
        except PayloadDecodeError:
            if body[:1] == b"\x78":  # a zlib header: it was zlib, and it is broken
                raise
        try:
            return _inflate(body, -zlib.MAX_WBITS, limit, enc)
        except PayloadDecodeError:
            pass
    elif enc in _UNSUPPORTED_ENCODINGS:
        raise PayloadDecodeError(f"unsupported content-encoding {enc}")
    return body[:limit], len(body) > limit


# ---------------------------------------------------------------------- binary

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"%PDF-", "pdf"),
    (b"PK\x03\x04", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"wOFF", "woff"),
    (b"wOF2", "woff2"),
    (b"OggS", "ogg"),
    (b"ID3", "mp3"),
    (b"fLaC", "flac"),
    (b"\x1a\x45\xdf\xa3", "webm"),
    (b"\x7fELF", "elf"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole2"),
    (b"\x00\x00\x01\x00", "ico"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
_RIFF = {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}
# C0 controls other than \t \n \v \f \r and ESC (ISO-2022 text uses it), plus DEL
_CONTROL = bytes([*range(0, 9), *range(14, 27), *range(28, 32), 127])
_CONTROL_SHARE = 0.1


def sniff_binary(data: bytes, charset: str | None = None) -> str | None:
    """The kind of binary file ``data`` is (``png``, ``pdf``, ``control bytes 37%`` ...), or None for text."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] in _RIFF:
        return _RIFF[data[8:12]]
    if data[4:8] == b"ftyp":
        return "mp4"
    head = data[:1024]
    wide = any(w in (charset or "").lower() for w in ("utf-16", "utf-32"))  # NUL bytes are text there
    if not head or wide or head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None
    controls = len(head) - len(head.translate(None, _CONTROL))
    if controls > _CONTROL_SHARE * len(head):
        return f"control bytes {round(100 * controls / len(head))}%"
    return None


# ----------------------------------------------------------------------- depth

_TAG = re.compile(rb"<(?:(!--)|(/?)([A-Za-z][A-Za-z0-9:._-]*)|[!?/])")
_VOID = frozenset(
    b"area base basefont bgsound br col command embed frame hr image img input isindex keygen link meta param "
    b"source track wbr".split()
)
_RAW_TEXT = {
    name: re.compile(rb"</" + name + rb"[\s>/]", re.IGNORECASE)
    for name in b"script style textarea title xmp iframe noembed noframes".split()
}
_CELLS = frozenset({b"td", b"th"})
_SECTIONS = frozenset({b"thead", b"tbody", b"tfoot"})
_IMPLIED_END = {  # an opening tag closes these while they are the innermost open element
    b"p": frozenset({b"p"}),
    b"li": frozenset({b"li", b"p"}),
    b"dt": frozenset({b"dt", b"dd", b"p"}),
    b"dd": frozenset({b"dt", b"dd", b"p"}),
    b"option": frozenset({b"option"}),
    b"optgroup": frozenset({b"option", b"optgroup"}),
    b"tr": _CELLS | {b"tr"},
    b"td": _CELLS,
    b"th": _CELLS,
    **{s: _CELLS | _SECTIONS | {b"tr"} for s in _SECTIONS},
}
_CLOSES_P = frozenset(
    b"address article aside blockquote details dialog div dl fieldset figcaption figure footer form h1 h2 h3 h4 "
    b"h5 h6 header hgroup hr main menu nav ol pre section table ul".split()
)


_CLOSE_MARK = re.compile(rb"</[A-Za-z]")


def _open_mark() -> re.Pattern[bytes]:
    void = b"|".join(sorted(_VOID))
    return re.compile(rb"<(?!(?:" + void + rb")[\s/>])[A-Za-z]", re.IGNORECASE)


def rough_depth(data: bytes) -> int:
    """A vectorised estimate of the nesting: opening minus closing tags, never below zero.

    Void elements are left out; tags inside scripts and unclosed ``<p>`` or ``<li>``
    count as openings (so it runs high on some pages). It is used only to skip :func:`html_depth`'s exact walk, which
    costs a Python step per tag, on pages that stay far below the cap. A page could
    hide depth from it behind many stray end tags; the extraction timeout remains.
    """
    marks = np.frombuffer(_OPEN_MARK.sub(b"\x01", _CLOSE_MARK.sub(b"\x02", data)), np.uint8)
    steps = (marks == 1).astype(np.int64) - (marks == 2)
    if not len(steps):
        return 0
    level = np.cumsum(steps)
    floor = np.minimum.accumulate(np.minimum(level, 0))  # reflecting at zero: stray closes at the top are ignored
    return int((level - floor).max())


_OPEN_MARK = _open_mark()


def too_deep(data: bytes, limit: int) -> bool:
    """Whether elements nest deeper than ``limit`` (exact walk unless the estimate is far below)."""
    if rough_depth(data) <= limit // 2:
        return False
    return html_depth(data, limit) > limit


def html_depth(data: bytes, limit: int) -> int:
    """Deepest element nesting in an HTML page, counted up to just past ``limit``.

    A regex walk over the tags with a stack of open elements: void elements and
    comments do not nest, raw-text elements (script, style, ...) are skipped to
    their end tag, an end tag closes up to its open element (a stray one is
    ignored), and the usual implied ends (``<p>``, ``<li>``, table cells ...)
    close their predecessor, so ordinary unclosed markup does not add up.
    """
    stack: list[bytes] = []
    open_count: dict[bytes, int] = {}
    depth = pos = 0
    while (m := _TAG.search(data, pos)) is not None:
        if m.group(1):  # comment
            end = data.find(b"-->", m.end())
            if end < 0:
                break
            pos = end + 3
            continue
        gt = data.find(b">", m.end())
        if gt < 0:
            break
        pos = gt + 1
        name = m.group(3)
        if name is None:  # <!doctype>, <?xml?>, </ >
            continue
        name = name.lower()
        if m.group(2):  # end tag
            if open_count.get(name):
                while True:
                    top = stack.pop()
                    open_count[top] -= 1
                    if top == name:
                        break
            continue
        if name in _VOID:
            continue
        if data[gt - 1 : gt] == b"/" and (open_count.get(b"svg") or open_count.get(b"math") or name in (b"svg", b"math")):
            continue  # self-closing foreign element
        implied = _IMPLIED_END.get(name, frozenset({b"p"}) if name in _CLOSES_P else None)
        while implied and stack and stack[-1] in implied:
            open_count[stack.pop()] -= 1
        if len(stack) + 1 > depth:
            depth = len(stack) + 1
            if depth > limit:
                return depth
        if name in _RAW_TEXT:
            end_tag = _RAW_TEXT[name].search(data, pos)
            if end_tag is None:
                break
            gt = data.find(b">", end_tag.start())
            pos = gt + 1 if gt >= 0 else len(data)
            continue
        stack.append(name)
        open_count[name] = open_count.get(name, 0) + 1
    return depth
