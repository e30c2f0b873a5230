"""WARC framing for ``web.extract_warc``: a file's records, and the byte ranges that hold none.

warcio's ``ArchiveIterator`` trusts every Content-Length and gives up at the first
surprise, so one bad length costs the rest of the file, a short one goes through
as a record with a cut block (the warning goes to stderr), and a file gzipped as
one stream keeps only its first record. Here the framing is parsed directly
(warcio only parses the header lines):

* a record is its header block up to ``\\r\\n\\r\\n``, then Content-Length bytes of
  block, then the ``\\r\\n\\r\\n`` terminator. A block that ends early, runs into the
  next record's header, or is not followed by the terminator makes the record a
  ``length_mismatch`` (``Record.problem``); reading goes on at the next header. Where
  the framing is unusual (fewer newlines, something other than a record after the
  terminator) the record's WARC-Block-Digest or WARC-Payload-Digest decides; a clean
  file never pays for a digest.
* bytes that are no record (garbage, a header without a usable Content-Length, a
  record cut by a damaged gzip member) are a ``Damage`` range, and reading goes on
  at the next ``WARC/1.x`` header (plain files) or the next gzip member that
  inflates to a WARC header (gzip files, found by the ``\\x1f\\x8b\\x08`` magic).
* gzip files are read as one stream over all their members, so per-record gzip,
  whole-file gzip and anything between read alike; positions name the member: a
  record at the start of the member at byte 1234 is at ``"1234"`` (what warcio and
  CDX indexes call its offset), one 500 bytes into that member at ``"1234+500"``.
  A record is trusted once zlib has checked its member's CRC; inside a member that
  goes on (whole-file gzip, checked only at its end) its WARC-Block-Digest vouches
  for it, and without one it is taken as read.
* memory is bounded: blocks up to ``max_record_bytes`` are held whole; a longer one
  keeps its first ``HEAD_BYTES`` and is skipped (seeked over in plain files; in gzip
  files its member is left undecompressed when the gzip trailer's ISIZE shows the
  member holds exactly that record, else it is decompressed and thrown away). In
  gzip data, looking for the next header stops after ``max_record_bytes`` inflated
  bytes and goes on at the next gzip member.

ARC files go through warcio (``warc_arc.iter_arc``), without resync: an error there
reports the rest of the file as one damaged range.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from warcio.recordloader import ArcWarcRecordLoader
from warcio.statusandheaders import StatusAndHeaders, StatusAndHeadersParser

from arcforge.pipelines.web.warc_stream import (
    BLANK,
    GZIP_MAGIC,
    IN_CHUNK,
    ByteFile,
    GzipSource,
    PlainSource,
    Stream,
    find_member,
)

HEAD_BYTES = 1 << 18  # what an oversized record keeps: room for its HTTP headers
MAX_HEADER_BYTES = 1 << 20  # a WARC header block longer than this is damage

_TERMINATOR = b"\r\n\r\n"
_MAX_BLANK = 1 << 16  # newlines looked past between records
_HEADER_START = re.compile(rb"WARC/1\.[01]\r*\n")
_HEADER_END = re.compile(rb"\n\r*\n")  # lines end in \r\n; some files have \n or \r\r\n
_STATUS_LINE = re.compile(rb"[A-Z][A-Z0-9]*/\d")  # an HTTP message (pywb's samples also have HTTPX/1.1)
_EMBEDDED = re.compile(rb"\nWARC/1\.[01]\r*\n")
_WARC_PARSER = StatusAndHeadersParser(ArcWarcRecordLoader.WARC_TYPES)


@dataclass
class Record:
    """One WARC record as framed; ``block`` is whole when ``complete``, else a prefix."""

    pos: str  # "123", or "123+456": 456 bytes into the gzip member at 123
    offset: int  # file offset (plain) or offset of the gzip member the record starts in
    inner: int  # offset inside that member; 0 for per-record gzip and plain files
    headers: StatusAndHeaders
    length: int  # the declared Content-Length
    block: bytes
    complete: bool
    problem: str | None = None  # "length_mismatch" when the block does not fit its Content-Length
    cause: str | None = None  # what exactly did not fit
    end: str = ""  # where reading went on after the record

    @property
    def rec_type(self) -> str:
        return self.headers.get_header("WARC-Type") or "unknown"

    @property
    def uri(self) -> str | None:
        uri = self.headers.get_header("WARC-Target-URI")
        if uri and uri.startswith("<") and uri.endswith(">"):  # wget 1.19 wrote <uri>
            uri = uri[1:-1]
        return uri


@dataclass
class Damage:
    """Bytes ``start``..``end`` (positions as in ``Record.pos``) that hold no readable record."""

    start: str
    end: str
    offset: int
    cause: str
    url: str | None = None  # the target URI when the damage begins at a readable header


# ---------------------------------------------------------------------- sources


def _content_length(headers: StatusAndHeaders) -> int | None:
    value = (headers.get_header("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _embedded_header(block: bytes) -> int | None:
    """Where another record's header starts inside a block (a Content-Length that is too long)."""
    if b"application/warc" in block[:8192]:  # an archived WARC file: its own records are content
        return None
    for m in _EMBEDDED.finditer(block):
        fields = _HEADER_END.split(block[m.start() + 1 : m.start() + 8192], 1)[0].lower()
        if b"\nwarc-type:" in fields and b"\ncontent-length:" in fields:
            return m.start() + 1
    return None


def _runs_into(length: int, k: int) -> str:
    return f"Content-Length {length} runs into the next record, whose header starts {k} bytes into the block"


def _digest_ok(headers: StatusAndHeaders, block: bytes, block_only: bool = False) -> bool | None:
    """Whether the block (or its HTTP payload) matches the record's digest; None if there is none to check."""
    for name in ("WARC-Block-Digest",) if block_only else ("WARC-Block-Digest", "WARC-Payload-Digest"):
        value = headers.get_header(name)
        if not value or (name == "WARC-Payload-Digest" and headers.get_header("WARC-Type") != "response"):
            continue  # a revisit's payload digest is its original's
        data = block
        if name == "WARC-Payload-Digest" and _STATUS_LINE.match(block):
            m = _HEADER_END.search(block)
            data = block[m.end() :] if m else b""
        algo, _, digest = value.strip().partition(":")
        try:
            expected = hashlib.new(algo.strip().lower().replace("-", ""), data).digest()
        except ValueError:  # an algorithm hashlib does not know
            continue
        digest = digest.strip()
        if digest.lower() == expected.hex():
            return True
        try:
            return base64.b32decode(digest.upper() + "=" * (-len(digest) % 8)) == expected
        except ValueError:
            continue
    return None


class _Parser:
    """Records and damage of one stream; ``resume`` is where the next stream starts (gzip only)."""

    def __init__(self, stream: Stream, max_record_bytes: int) -> None:
        self.s = stream
        self.src = stream.src
        self.cap = max_record_bytes
        self.resume: int | None = None
        self.pending: tuple[int, str, str | None] | None = None  # damage not closed yet: (start, cause, url)

    def _resync(self, start: int) -> int | None:
        """The next WARC header at or after ``start``; None at the end of the data or after a jump."""
        limit = self.cap if self.src.gzip else None  # inflating garbage is bounded too
        pos, limited = self.s.search(_HEADER_START, start, limit)
        if limited:
            nxt = find_member(self.src.scan, self.src.members[-1][1] + 1)
            if nxt < self.src.f.size:
                self.resume = nxt
                return None
            pos, _ = self.s.search(_HEADER_START, self.s.base, None)  # no later member: read on
        return pos

    def _damage(self, start: int, cause: str, url: str | None = None) -> None:
        if self.pending is None:
            self.pending = (start, cause, url)

    def _close(self, end: int) -> Damage | None:
        if self.pending is None:
            return None
        start, cause, url = self.pending
        self.pending = None
        pos, offset, _ = self.src.where(start)
        return Damage(pos, self.src.where(end)[0], offset, cause, url)

    def _record(self, start: int, headers: StatusAndHeaders, length: int, block: bytes, complete: bool) -> Record:
        pos, offset, inner = self.src.where(start)
        return Record(pos, offset, inner, headers, length, block, complete)

    def run(self) -> Iterator[Record | Damage]:
        s, src, cap = self.s, self.src, self.cap
        pos = 0
        while True:
            pos = s.skip_blank(pos)
            if s.fill(pos + 5) <= pos:
                return  # end of the data
            if s.get(pos, pos + 5) != b"WARC/":
                self._damage(pos, "bytes outside any WARC record")
                nxt = self._resync(pos + 1)
                if nxt is None:
                    return
                pos = nxt
                continue
            found = s.find(_HEADER_END, pos, MAX_HEADER_BYTES)
            headers = length = None
            if found is not None:
                try:
                    headers = _WARC_PARSER.parse(io.BytesIO(s.get(pos, found[1])))
                except Exception:  # noqa: BLE001 - any parse failure is damage
                    headers = None
                length = _content_length(headers) if headers is not None else None
            if headers is not None and not headers.get_header("WARC-Type"):
                headers = None
            if headers is None or length is None:
                if found is None:
                    cause = "a WARC header that does not end " + ("before the data does" if s.done else "within 1 MiB")
                elif headers is None:
                    cause = "an unparsable WARC header (or one without WARC-Type)"
                else:
                    cause = f"a WARC header without a valid Content-Length ({headers.get_header('Content-Length')!r})"
                self._damage(pos, cause, headers.get_header("WARC-Target-URI") if headers is not None else None)
                nxt = self._resync(pos + 1)
                if nxt is None:
                    return
                pos = nxt
                continue
            if (d := self._close(pos)) is not None:
                yield d
            body = found[1]
            end = body + length
            container = "gzip stream" if src.gzip else "file"

            if length <= cap:
                s.fill(end + len(_TERMINATOR) + 5)  # past the next header's start: a gzip member reaches its CRC check
                if s.end < end:  # the data ends inside the block
                    rec = self._record(pos, headers, length, s.get(body, s.end), False)
                    if src.error:
                        self._damage(pos, f"{rec.rec_type} record cut off", rec.uri)
                        return
                    rec.problem, rec.end = "length_mismatch", str(src.f.size)
                    rec.cause = f"the {container} ends {end - s.end} bytes into the Content-Length {length} block"
                    yield rec
                    return
                block = s.get(body, end)
                rec = self._record(pos, headers, length, block, True)
                k = _embedded_header(block)
                if k is not None:
                    rec.problem, rec.cause = "length_mismatch", _runs_into(length, k)
                    rec.end = src.where(body + k)[0]
                    yield rec
                    pos = body + k
                    continue
            else:  # too large to hold: keep the head, skip the rest
                s.fill(body + HEAD_BYTES)
                rec = self._record(pos, headers, length, s.get(body, min(s.end, body + HEAD_BYTES)), False)
                if src.gzip and (nxt := src.jump(pos, end + len(_TERMINATOR) - pos)) is not None:
                    rec.end = str(nxt)
                    self.resume = nxt
                    yield rec
                    return
                if s.skip_to(end) < end:
                    if src.error:
                        self._damage(pos, f"{rec.rec_type} record cut off", rec.uri)
                        return
                    rec.problem, rec.end = "length_mismatch", str(src.f.size)
                    rec.cause = f"the {container} ends {end - s.base} bytes before its Content-Length {length} block does"
                    yield rec
                    return

            # \r\n\r\n, then the next record or the end of the data. Fewer newlines are let
            # through when the next record follows at once, as warcio does (real writers
            # drop some); after a whole terminator, what follows is the next read's business
            # unless the record's digest shows the block was cut short.
            full = s.get(end, end + len(_TERMINATOR)) == _TERMINATOR
            nxt = self._after_blank(end + len(_TERMINATOR) if full else end)
            follows = nxt is not None and (s.fill(nxt + 5) <= nxt or s.get(nxt, nxt + 5) == b"WARC/")
            digest = None
            if rec.complete and not (full and follows):  # anything unusual: ask the digest, if there is one
                digest = _digest_ok(headers, rec.block)
                if digest is False and not full and nxt is not None:
                    # a block a few newlines short (the writer counted them as terminator) is whole
                    blank = s.get(end, min(nxt, end + len(_TERMINATOR)))
                    for k in range(1, len(blank) + 1):
                        if _digest_ok(headers, rec.block + blank[:k]):
                            rec.block, digest = rec.block + blank[:k], True
                            break
            if (follows or full) and digest is not False:
                nxt = nxt if nxt is not None else end + len(_TERMINATOR)
                if not src.verified(end):
                    # zlib has not (or not successfully) checked the CRC of the member under the record:
                    # a member that goes on (whole-file gzip) is checked at its end only. The block
                    # digest, where there is one, vouches for the record instead.
                    check = digest or (_digest_ok(headers, rec.block, True) if rec.complete else None)
                    if check is False or (check is None and not src.intact(end)):
                        self._damage(pos, f"{rec.rec_type} record in a damaged gzip member", rec.uri)
                        pos = nxt
                        continue
                rec.end = src.where(nxt)[0]
                yield rec
                pos = nxt
                continue
            after = s.get(nxt, nxt + 12) if nxt is not None else b"\r\n" * 6
            resume = self._resync(body if s.base <= body else end)
            if not src.intact(end):  # inflated garbage from a damaged member says nothing about lengths
                self._damage(pos, f"{rec.rec_type} record in a damaged gzip member", rec.uri)
                if resume is None:
                    return
                pos = resume
                continue
            rec.problem = "length_mismatch"
            if resume is not None and resume < end:
                rec.cause = _runs_into(length, resume - body)
            elif digest is False:
                rec.cause = f"Content-Length {length} is too short: the block digest does not match"
            else:
                rec.cause = (
                    f"the Content-Length {length} block is followed by {after!r}, not by the next record "
                    "(Content-Length too short?)"
                )
            rec.end = src.where(resume)[0] if resume is not None else str(self.resume or src.f.size)
            yield rec
            if resume is None:
                return
            pos = resume

    def _after_blank(self, p: int) -> int | None:
        """Position after the newlines at ``p``, keeping the bytes; None if there are too many to look past."""
        s = self.s
        while True:
            s.fill(p + 1)
            m = BLANK.match(s.buf, p - s.base, p + _MAX_BLANK - s.base)
            q = s.base + m.end()
            if q < s.end or s.done:
                return q
            if q - p >= _MAX_BLANK:
                return None
            s.fill(s.end + IN_CHUNK)


def iter_warc(fh: Any, max_record_bytes: int) -> Iterator[Record | Damage]:
    """Records and damaged ranges of a plain or gzip WARC file, in file order."""
    f, scan = ByteFile(fh), ByteFile(fh)
    if f.size == 0:
        return
    gz = f.read(0, 2) == GZIP_MAGIC[:2]
    start = 0
    while start < f.size:
        if gz and f.read(start, 3) != GZIP_MAGIC:
            nxt = find_member(scan, start + 1)
            yield Damage(str(start), str(nxt), start, "bytes that are no gzip member")
            start = nxt
            continue
        src: Any = GzipSource(f, scan, start) if gz else PlainSource(f)
        parser = _Parser(Stream(src), max_record_bytes)
        yield from parser.run()
        nxt = parser.resume
        error = src.error if nxt is None else None  # after a jump, what the read-ahead met is read again
        if error:
            nxt = find_member(scan, src.resync_from)
            if parser.pending is None:
                parser.pending = (parser.s.end, "", None)
        if parser.pending is not None:
            p, cause, url = parser.pending
            cause = "; ".join(c for c in (cause, error) if c)
            pos, offset, _ = src.where(p)
            yield Damage(pos, str(nxt if nxt is not None else f.size), offset, cause, url)
        if nxt is None:
            return
        start = nxt


# --------------------------------------------------------------------------- ARC
