"""Decompressing streams that give up every byte that can be decoded before a cut or damage.

pyarrow's ``CompressedInputStream`` drops what a read had decompressed when that read then
meets the end of a truncated file, so a reader of a cut ``.jsonl.gz`` or ``.csv.zst`` lost up
to the last read's worth of rows. Python's ``zlib`` and the ``zstandard`` package hand out
everything they have decoded, so both codecs go through them (``PartialStream``), as do
bz2 and xz through Python's ``bz2`` and ``lzma``: a cut gzip file loses only its unfinished
last line, a cut zstd, bz2 or xz file only the block the cut falls in (zstd decodes whole
blocks of up to 128 KiB, bz2 of up to 900 KB; no reader can do better).
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zstandard


@dataclass(frozen=True)
class Codec:
    name: str
    new: Callable[[], Any]  # a decompressor of one member/frame: decompress(), eof, unused_data
    errors: tuple[type[Exception], ...]
    feed: int  # compressed bytes per step
    replay: bool  # the decompressor can be copied: on damage, the step is replayed a kilobyte at a time


GZIP = Codec("gzip", lambda: zlib.decompressobj(31), (zlib.error,), 256 << 10, True)
# these decompressors cannot be copied: small steps bound what damage takes with it
ZSTD = Codec("zstd", lambda: zstandard.ZstdDecompressor().decompressobj(), (zstandard.ZstdError,), 16 << 10, False)
BZ2 = Codec("bz2", bz2.BZ2Decompressor, (OSError, ValueError), 16 << 10, False)  # blocks of up to 900 KB
XZ = Codec("xz", lzma.LZMADecompressor, (lzma.LZMAError,), 16 << 10, False)
CODECS = {c.name: c for c in (GZIP, ZSTD, BZ2, XZ)}


class PartialStream:
    """``read(n)`` of a compressed file's content: every member or frame in turn (``cat a.gz
    b.gz``), trailing zero padding ignored as ``gzip -d`` does. A cut or damage raises
    ``OSError`` (saying "truncated" or "corrupt") on the first read after the last decodable
    byte. Deflate has no checksum before a member's end (zstd's is optional), so bytes decoded
    shortly before the damage is noticed may already be garbled (the line readers then reject
    what does not parse)."""

    def __init__(self, raw: Any, codec: Codec, defer: bool = False) -> None:
        self.raw = raw
        self.codec = codec
        self.defer = defer  # the cut or damage reads as the end; ``error`` says it afterwards
        self.d = codec.new()
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
                self.d = self.codec.new()

    def _corrupt(self, at: int, exc: Exception) -> None:
        self.done = True
        self.error = OSError(f"corrupt {self.codec.name} data near compressed byte {at}: {exc}")

    def _fill(self, n: int) -> None:
        while self.have < n and not self.done:
            data = self.raw.read(self.codec.feed)
            if not data:
                self.done = True
                if self.started:
                    self.error = OSError(f"{self.codec.name} stream truncated after {self.compressed} compressed bytes")
                return
            state = (self.d.copy() if self.codec.replay else None, self.started, len(self.pieces), self.have)
            try:
                self._feed(data)
            except self.codec.errors as exc:
                if not self.codec.replay:
                    self._corrupt(self.compressed, exc)
                    return
                # again from the state before this feed, a kilobyte at a time: what precedes
                # the damage comes out, to within a kilobyte of compressed data
                self.d, self.started, n_pieces, self.have = state
                del self.pieces[n_pieces:]
                for i in range(0, len(data), 1024):
                    try:
                        self._feed(data[i : i + 1024])
                    except self.codec.errors as exc:
                        self._corrupt(self.compressed + i, exc)
                        return
            self.compressed += len(data)

    # what pyarrow's PythonFile asks of a file (the CSV reader reads through one)
    closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self.raw.close()

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        self._fill(n)
        if not self.have and self.error is not None:
            if self.defer:
                return b""
            raise self.error
        data = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
        out, rest = (data, b"") if len(data) <= n else (data[:n], data[n:])
        self.pieces, self.have = ([rest] if rest else []), len(rest)
        return out


def decompressed(raw: Any, compression: str) -> PartialStream:
    """The content of ``raw`` (a file opened without decompression) for the line readers."""
    return PartialStream(raw, CODECS[compression])


def open_content(fs: Any, path: str, compression: str | None) -> tuple[Any, PartialStream | None]:
    """A pyarrow file of a file's content for pyarrow's readers (the CSV one), and, for a
    compressed file, its ``PartialStream``. pyarrow's CSV reader drops a whole block when a
    read fails, so the stream reads a cut or damage as the end (``defer``): the reader parses
    every row before it, and the caller reports ``stream.error`` after the last batch."""
    import pyarrow as pa

    raw = fs.open_input_file(path)
    if not compression:
        return raw, None
    stream = PartialStream(raw, CODECS[compression], defer=True)
    return pa.PythonFile(stream, mode="r"), stream


__all__ = ["CODECS", "Codec", "PartialStream", "decompressed", "open_content"]
