"""ARC files for ``web.extract_warc``: their records through warcio, as ``warc_framing`` gives WARC's.

ARC has no record terminator or digests to resync on, so warcio (``arc2warc``) reads
it; the first error ends the file as one damaged range. A block is read only up to
``max_record_bytes`` (one more byte tells that it was longer), so an oversized
record keeps its head like a WARC one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from warcio import ArchiveIterator

from arcforge.pipelines.web.warc_framing import HEAD_BYTES, Damage, Record
from arcforge.pipelines.web.warc_stream import IN_CHUNK, WINDOW


def _read_upto(stream: Any, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(min(n - got, IN_CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def iter_arc(fh: Any, max_record_bytes: int) -> Iterator[Record | Damage]:
    """ARC records through warcio (``arc2warc``); the first error ends the file as one damaged range."""
    size = fh.size()
    fh.seek(0)
    archive = ArchiveIterator(pa.BufferedInputStream(fh, WINDOW), arc2warc=True, no_record_parse=True)
    records = iter(archive)
    next_offset = 0
    while True:
        try:
            rec = next(records)
            data = _read_upto(rec.raw_stream, max_record_bytes + 1)
            offset = archive.get_record_offset()  # reads (and drops) the rest of the record
            missing = getattr(rec.raw_stream, "limit", 0)  # warcio's LimitReader: bytes it never got
        except StopIteration:
            return
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever warcio fails on, the rest is unreadable
            cause = f"unreadable ARC data ({type(e).__name__}: {' '.join(str(e).split())})"[:500]
            yield Damage(str(next_offset), str(size), next_offset, cause)
            return
        next_offset = getattr(archive, "offset", offset)
        complete = len(data) <= max_record_bytes
        out = Record(str(offset), offset, 0, rec.rec_headers, rec.length or 0, data if complete else data[:HEAD_BYTES], complete)
        out.end = str(next_offset)
        declared = (rec.rec_headers.get_header("Content-Length") or "").strip()
        if missing > 0:
            out.problem, out.cause = "length_mismatch", f"the file ends {missing} bytes into the block"
        elif out.rec_type == "response" and not declared.isdigit():
            out.problem, out.cause = "length_mismatch", f"invalid length {declared!r} in the ARC header"
        yield out
