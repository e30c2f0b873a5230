"""Decompressing streams that give up every byte that can be decoded before a cut or damage.

pyarrow's ``CompressedInputStream`` drops what a read had decompressed when that read then
meets the end of a truncated file, so a reader of a cut ``.jsonl.gz`` lost up to the last
read's worth of rows. Python's ``zlib`` decompressor hands out everything it has decoded, so
gzip goes through it (``GzipStream``): a truncated file loses only its unfinished last line.
zstd stays with pyarrow (no zstd module is installed), read in small pieces
(``SmallReads``) so that at most the last piece is lost.
"""

from __future__ import annotations

import zlib
from typing import Any

import pyarrow as pa


class GzipStream:
    """``read(n)`` of a gzip file's content: every member in turn (``cat a.gz b.gz``), trailing
    zero padding ignored as ``gzip -d`` does. A cut or damage raises ``OSError`` (saying
    "truncated" or "corrupt") on the first read after the last decodable byte. Deflate has no
    checksum before a member's end, so bytes decoded shortly before zlib notices damage may
    already be garbled (the line reader then rejects what does not parse)."""

    FEED = 256 << 10  # compressed bytes per step

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.d = zlib.decompressobj(31)
        self.pieces: list[bytes] = []  # decoded, not yet read
        self.have = 0
        self.compressed = 0  # compressed bytes read
        self.started = False  # a member has begun and not ended
        self.error: OSError | None = None
        self.done = False

    def _feed(self, data: bytes) -> None:
        while data:
            self.started = True
            out = self.d.decompress(data)
            if out:
                self.pieces.append(out)
                self.have += len(out)
            if not self.d.eof:
                return
            data, self.started = self.d.unused_data, False
            if data and not data.strip(b"\0"):
                return  # padding after the last member
            if data:
                self.d = zlib.decompressobj(31)

    def _fill(self, n: int) -> None:
        while self.have < n and not self.done:
            data = self.raw.read(self.FEED)
            if not data:
                self.done = True
                if self.started:
                    self.error = OSError(f"gzip stream truncated after {self.compressed} compressed bytes")
                return
            state = (self.d.copy(), self.started, len(self.pieces), self.have)
            try:
                self._feed(data)
            except zlib.error:
                # again from the state before this feed, a kilobyte at a time: what precedes
                # the damage comes out, to within a kilobyte of compressed data
                self.d, self.started, n_pieces, self.have = state
                del self.pieces[n_pieces:]
                for i in range(0, len(data), 1024):
                    try:
                        self._feed(data[i : i + 1024])
                    except zlib.error as exc:
                        at = self.compressed + i
                        self.done = True
                        self.error = OSError(f"corrupt gzip data near compressed byte {at}: {exc}")
                        return
            self.compressed += len(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        self._fill(n)
        if not self.have and self.error is not None:
            raise self.error
        data = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
        out, rest = (data, b"") if len(data) <= n else (data[:n], data[n:])
        self.pieces, self.have = ([rest] if rest else []), len(rest)
        return out


class SmallReads:
    """A decompressing stream read in small pieces: pyarrow drops what a read had
    decompressed when it then meets the end of a truncated file, so small reads keep
    all but the last piece. The error comes out on the read after the data."""

    PIECE = 64 << 10

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.error: OSError | None = None

    def read(self, n: int) -> bytes:
        if self.error is not None:
            raise self.error
        pieces, got = [], 0
        while got < n:
            try:
                piece = self.stream.read(min(self.PIECE, n - got))
            except OSError as exc:
                if not pieces:
                    raise
                self.error = exc
                break
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)


def decompressed(raw: Any, compression: str) -> Any:
    """The content of ``raw`` (a file opened without decompression) for the line readers."""
    if compression == "gzip":
        return GzipStream(raw)
    return SmallReads(pa.CompressedInputStream(raw, compression))


__all__ = ["GzipStream", "SmallReads", "decompressed"]
