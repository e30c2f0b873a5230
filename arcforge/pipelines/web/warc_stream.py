"""Bytes of a WARC file, plain or gzip, for the framing parser in ``warc_framing``.

A ``ByteFile`` reads positions through a one-window cache (one ranged GET per
window on S3). ``PlainSource`` and ``GzipSource`` hand the parser the file's
bytes in order; ``GzipSource`` inflates every member of a gzip file as one
stream, a bounded chunk at a time (so a bomb costs a chunk, not its size), and
remembers where each member starts, so positions can name members and a
damaged member can be skipped for the next one. ``Stream`` is the parser's
window over those bytes: what it has not dropped yet, searchable by regex.
"""

from __future__ import annotations

import bisect
import re
import zlib
from typing import Any

GZIP_MAGIC = b"\x1f\x8b\x08"
WINDOW = 1 << 20  # bytes per read from the file (one ranged GET on S3)
IN_CHUNK = 1 << 16  # compressed bytes fed to zlib at a time
OUT_CHUNK = 1 << 20  # most bytes zlib may produce per call: a bomb inflates a MiB at a time
BLANK = re.compile(rb"[\r\n]*")


class ByteFile:
    """Positional reads through a one-window cache."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.size = fh.size()
        self._start = 0
        self._data = b""

    def read(self, pos: int, n: int) -> bytes:
        if pos >= self.size or n <= 0:
            return b""
        cached_end = self._start + len(self._data)
        if not (self._start <= pos < cached_end and (pos + n <= cached_end or cached_end >= self.size)):
            self._data = bytes(self.fh.read_at(max(n, WINDOW), pos))
            self._start = pos
        off = pos - self._start
        return self._data[off : off + n]


def _opens_warc(f: ByteFile, pos: int) -> bool:
    """Whether a gzip member starts at ``pos`` and inflates to a WARC header."""
    if f.read(pos, 3) != GZIP_MAGIC:
        return False
    try:
        out = zlib.decompressobj(31).decompress(f.read(pos, IN_CHUNK), 64)
    except zlib.error:
        return False
    return out.lstrip(b"\r\n").startswith(b"WARC/")


def find_member(f: ByteFile, start: int) -> int:
    """Offset of the first gzip member at or after ``start`` that holds a WARC header, else the file size."""
    pos = start
    while pos < f.size:
        window = f.read(pos, WINDOW)
        i = window.find(GZIP_MAGIC)
        while i >= 0:
            if _opens_warc(f, pos + i):
                return pos + i
            i = window.find(GZIP_MAGIC, i + 1)
        if len(window) < WINDOW:
            break
        pos += len(window) - (len(GZIP_MAGIC) - 1)
    return f.size


class PlainSource:
    gzip = False

    def __init__(self, f: ByteFile) -> None:
        self.f = f
        self.cpos = 0
        self.error: str | None = None

    def pull(self) -> bytes:
        data = self.f.read(self.cpos, WINDOW)
        self.cpos += len(data)
        return data

    def skip(self, n: int) -> int:
        n = max(0, min(n, self.f.size - self.cpos))
        self.cpos += n
        return n

    def where(self, p: int) -> tuple[str, int, int]:
        return str(p), p, 0

    def intact(self, p: int) -> bool:
        return True

    def verified(self, p: int) -> bool:
        return True


def _salvage(d: Any, data: bytes) -> bytes:
    """What ``d`` inflates from ``data`` before it fails: fed a little at a time, the failing piece byte by byte."""
    out: list[bytes] = []
    for i in range(0, len(data), 256):
        before = d.copy()
        try:
            out.append(d.decompress(data[i : i + 256], OUT_CHUNK))
        except zlib.error:
            for j in range(i, min(i + 256, len(data))):
                try:
                    out.append(before.decompress(data[j : j + 1], OUT_CHUNK))
                except zlib.error:
                    break
            break
        if d.eof or sum(map(len, out)) >= OUT_CHUNK:
            break
    return b"".join(out)


class GzipSource:
    """Gzip members from ``start`` on, inflated as one stream; ``members`` maps positions back.

    Each member is ``[stream position, file offset, stream end, file end]``, the
    ends set once zlib has checked its trailer. The stream stops with ``error``
    at a damaged or cut member, or at bytes after a member that are no gzip data;
    ``resync_from`` is where to look for the next member then.
    """

    gzip = True

    def __init__(self, f: ByteFile, scan: ByteFile, start: int) -> None:
        self.f = f
        self.scan = scan  # a second window, so that looking ahead does not evict the stream's
        self.cpos = start
        self.d = zlib.decompressobj(31)
        self.members: list[list[Any]] = [[0, start, None, None]]
        self._starts = [0]
        self.out = 0
        self.error: str | None = None
        self.resync_from = start + 1

    def pull(self) -> bytes:
        while self.error is None:
            d = self.d
            if d.eof:
                end = self.cpos - len(d.unused_data)  # (unconsumed_tail may repeat those bytes)
                self.members[-1][2:] = [self.out, end]
                if end >= self.f.size:
                    return b""
                if self.f.read(end, 3) != GZIP_MAGIC:
                    self.error = f"bytes after the gzip member ending at {end} are not gzip data"
                    self.resync_from = end
                    return b""
                self.d = zlib.decompressobj(31)
                self.cpos = end
                self.members.append([self.out, end, None, None])
                self._starts.append(self.out)
                continue
            member = self.members[-1][1]
            if d.unconsumed_tail:
                data = d.unconsumed_tail
            else:
                data = self.f.read(self.cpos, IN_CHUNK)
                if not data:
                    self.error = f"the file ends inside the gzip member at {member}"
                    self.resync_from = member + 1
                    return b""
                self.cpos += len(data)
            saved = d.copy()
            try:
                out = d.decompress(data, OUT_CHUNK)
            except zlib.error as e:
                self.error = f"the gzip member at {member} is damaged ({e})"
                self.resync_from = member + 1
                out = _salvage(saved, data)  # what inflated before the error: its records may be whole
                self.out += len(out)
                return out
            if out:
                self.out += len(out)
                return out
        return b""

    def _member(self, p: int) -> list[Any]:
        return self.members[max(0, bisect.bisect_right(self._starts, p) - 1)]

    def where(self, p: int) -> tuple[str, int, int]:
        start, offset, end, file_end = self._member(p)
        if end is not None and p >= end:  # just after a finished member
            return str(file_end), file_end, 0
        inner = p - start
        return (f"{offset}+{inner}" if inner else str(offset)), offset, inner

    def intact(self, p: int) -> bool:
        """Whether the member holding stream byte ``p - 1`` passed (or may still pass) zlib's checks."""
        member = self._member(max(0, p - 1))
        return member[2] is not None or self.error is None

    def verified(self, p: int) -> bool:
        """Whether the member holding stream byte ``p - 1`` has passed zlib's CRC check."""
        return self._member(max(0, p - 1))[2] is not None

    def jump(self, p: int, total: int) -> int | None:
        """The next member's offset if the member starting at stream position ``p`` holds exactly
        ``total`` bytes (its ISIZE trailer says so), so it need not be inflated; else None."""
        start, offset, _, _ = self._member(p)
        if start != p:
            return None
        nxt = find_member(self.scan, offset + 1)
        if nxt - offset < 18:  # shorter than a gzip header and trailer
            return None
        isize = int.from_bytes(self.scan.read(nxt - 4, 4), "little")
        return nxt if isize == total & 0xFFFFFFFF else None


# ------------------------------------------------------------------------ stream


class Stream:
    """A sliding buffer over a source, addressed by stream position."""

    def __init__(self, src: Any) -> None:
        self.src = src
        self.buf = bytearray()
        self.base = 0
        self.done = False

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def fill(self, upto: int) -> int:
        while self.end < upto and not self.done:
            chunk = self.src.pull()
            if chunk:
                self.buf += chunk
            else:
                self.done = True
        return self.end

    def get(self, a: int, b: int) -> bytes:
        return bytes(self.buf[a - self.base : b - self.base])

    def drop(self, upto: int) -> None:
        n = min(upto, self.end) - self.base
        if n > 0:
            del self.buf[:n]
            self.base += n

    def skip_to(self, p: int) -> int:
        """Move to ``p`` without keeping what lies before; returns where the data ended if earlier."""
        if p <= self.end:
            self.drop(p)
            return p
        self.base = self.end
        self.buf.clear()
        if isinstance(self.src, PlainSource):
            self.base += self.src.skip(p - self.base)
        else:
            while self.base < p and not self.done:
                chunk = self.src.pull()
                if not chunk:
                    self.done = True
                elif self.base + len(chunk) <= p:
                    self.base += len(chunk)
                else:
                    self.buf += chunk[p - self.base :]
                    self.base = p
        if self.base < p:
            self.done = True
        return self.base

    def skip_blank(self, p: int) -> int:
        while True:
            self.drop(p)
            if self.fill(p + 1) <= p:
                return p
            m = BLANK.match(self.buf, p - self.base)
            p = self.base + m.end()
            if p < self.end:
                return p

    def find(self, regex: re.Pattern[bytes], start: int, limit: int) -> tuple[int, int] | None:
        """(start, end) of the first match in ``start``..``start + limit``, keeping the bytes; None if none."""
        frm = start
        while True:
            m = regex.search(self.buf, frm - self.base, start + limit - self.base)
            if m:
                return self.base + m.start(), self.base + m.end()
            if self.done or self.end >= start + limit:
                return None
            frm = max(start, self.end - 3)
            self.fill(self.end + IN_CHUNK)

    def search(self, regex: re.Pattern[bytes], start: int, limit: int | None) -> tuple[int | None, bool]:
        """Position of the first match at or after ``start``, forgetting the bytes it passes.

        Returns (position, False), (None, False) at the end of the data, or (None,
        True) once ``limit`` bytes were passed without a match.
        """
        if start > self.end:
            self.skip_to(start)
        else:
            self.drop(start)
        frm = start
        while True:
            m = regex.search(self.buf, max(0, frm - self.base))
            if m:
                return self.base + m.start(), False
            if self.done:
                self.drop(self.end)
                return None, False
            frm = max(self.base, self.end - 16)
            self.drop(frm)
            if limit is not None and self.base - start >= limit:
                return None, True
            self.fill(self.end + WINDOW)


# ------------------------------------------------------------------------ parser
