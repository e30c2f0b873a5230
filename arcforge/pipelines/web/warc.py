"""``web.extract_warc``: WARC/ARC files in, one document per HTML response out.

Every response record becomes either a kept document (trafilatura's main text)
or a rejected row saying why (``http_status``, ``non_html``, ``extract_timeout``,
``extract_error``, ``extract_empty``, ``too_short``, ``content_decode_error``), so
nothing disappears without a count. Other record types (request, revisit,
warcinfo, metadata, resource) are not documents and are only counted.

Extraction runs in a per-worker child process (``sandbox.py``) so one pathological
page costs at most ``timeout_s`` instead of hanging the partition.

A file that warcio cannot read to the end (truncated or non-chunked gzip, garbage)
keeps the documents read before the damage and adds one ``corrupt_file`` row: a
bad file in a crawl of thousands must not fail the whole stage.

Stats: ``warc.responses``, ``warc.html`` (responses with an HTML type),
``warc.records.<type>`` (the skipped records), ``warc.corrupt_files`` and
``warc.extract_seconds`` (wall time spent in the extractor).
"""

from __future__ import annotations

import io
import posixpath
import re
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from pydantic import Field
from warcio import ArchiveIterator
from warcio.bufferedreaders import BufferedReader, ChunkedDataReader

from arcforge.pipelines.documents import DOC_SCHEMA, docs_table, doc_id, dump_metadata, rejected_schema
from arcforge.pipelines.stage import Output, Resources, SourceStage, StageParams, TaskContext, register
from arcforge.pipelines.web.sandbox import SandboxError, SandboxTimeout, get_sandbox

BATCH_RECORDS = 256  # rows (kept + rejected) per Output, so a worker holds at most one batch of pages
HTML_MIMES = frozenset({"text/html", "application/xhtml+xml"})
REJECTED_SCHEMA = rejected_schema(DOC_SCHEMA)

_READ_BUFFER = 1 << 20  # warcio reads 16 KiB at a time: one ranged GET each on S3 without this
_WARM_TIMEOUT_S = 120.0
_CHARSET_RE = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)


class TruncatedRecord(Exception):
    """A record shorter than its Content-Length.

    warcio reports a zlib error inside a gzip member on stderr and then treats it
    as the end of data, so a damaged ``.warc.gz`` would otherwise just end early
    with no error; a truncated file likewise. The short record is how it shows.
    """


class ExtractParams(StageParams):
    timeout_s: float = Field(10.0, ge=0)  # per document; 0 extracts in-process with no bound (debugging)
    min_text_chars: int = 1  # shorter extracted text is rejected as too_short
    include_tables: bool = True
    favor_precision: bool = False
    source: str = "web"


# ---------------------------------------------------------------- in the sandbox


def _extract(html: str, url: str | None, include_tables: bool, favor_precision: bool) -> str | None:
    """Runs in the sandbox child; imported there by reference when the call is unpickled."""
    import trafilatura

    return trafilatura.extract(
        html,
        url=url,
        include_comments=False,
        include_tables=include_tables,
        favor_precision=favor_precision,
        deduplicate=False,
    )


def _warm() -> None:
    """Pay imports and trafilatura's lazy set-up outside any document's timeout."""
    _extract("<html><body><p>warm up</p></body></html>", None, True, False)


class _Extractor:
    """One document at a time through the sandbox; the first call after a (re)start warms it."""

    _warm_pid: int | None = None  # per process, like the sandbox itself

    def __init__(self, params: ExtractParams) -> None:
        self.params = params
        self.sandbox = get_sandbox() if params.timeout_s > 0 else None

    def __call__(self, html: str, url: str | None) -> tuple[str | None, str | None, str | None]:
        """Return (text, reason, detail); reason is None when the text is kept."""
        p = self.params
        args = (html, url, p.include_tables, p.favor_precision)
        if self.sandbox is None:
            try:
                text = _extract(*args)
            except Exception as e:
                return None, "extract_error", f"{type(e).__name__}: {e}"[:1000]
        else:
            if self.sandbox.pid is None or self.sandbox.pid != _Extractor._warm_pid:
                # a child that cannot even import trafilatura is a broken worker: fail the task loudly
                self.sandbox.call(_warm, timeout=max(_WARM_TIMEOUT_S, p.timeout_s))
                _Extractor._warm_pid = self.sandbox.pid
            try:
                text = self.sandbox.call(_extract, *args, timeout=p.timeout_s)
            except SandboxTimeout:
                return None, "extract_timeout", f"{p.timeout_s}s"
            except SandboxError as e:
                return None, "extract_error", f"{e.exc_type}: {e.message}"[:1000]
        if not text or not text.strip():
            return None, "extract_empty", None
        if len(text) < p.min_text_chars:
            return None, "too_short", str(len(text))
        return text, None, None


# ------------------------------------------------------------------ record logic


def _mime_and_charset(content_type: str | None) -> tuple[str, str | None]:
    if not content_type:
        return "", None
    m = _CHARSET_RE.search(content_type)
    return content_type.split(";", 1)[0].strip().lower(), (m.group(1) if m else None)


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


def _http_payload(http_headers: Any, body: bytes) -> bytes:
    """Undo chunked transfer and gzip/deflate/br content encoding, as warcio's content_stream does.

    Done on bytes already read so that a bad payload encoding rejects one record
    instead of reading as a corrupt file.
    """
    enc = (http_headers.get_header("content-encoding") or "").lower() or None
    if enc not in BufferedReader.get_supported_decompressors():
        enc = None
    stream: Any = io.BytesIO(body)
    if http_headers.get_header("transfer-encoding") == "chunked":
        stream = ChunkedDataReader(stream, decomp_type=enc)
    elif enc:
        stream = BufferedReader(stream, decomp_type=enc)
    return stream.read()


def _triage(record: Any) -> tuple[str | None, str | None, str, str | None]:
    """(reason, detail, mime, charset) of a response from its headers alone."""
    http = record.http_headers
    if not http:  # no HTTP message: a dns: record, or an ARC/WARC record with a bad length
        mime, charset = _mime_and_charset(record.rec_headers.get_header("Content-Type"))
        if mime == "application/http":
            return "http_status", "missing", mime, None
        if mime not in HTML_MIMES:
            return "non_html", mime or "missing", mime, charset
        return None, None, mime, charset
    mime, charset = _mime_and_charset(http.get_header("Content-Type"))
    status = http.get_statuscode() or ""
    if not (status.isdigit() and 200 <= int(status) < 300):
        return "http_status", status or "missing", mime, charset
    if mime not in HTML_MIMES:
        return "non_html", mime or "missing", mime, charset
    return None, None, mime, charset


def _looks_like_arc(fh: Any) -> bool:
    """ARC files get random WARC-Record-IDs from warcio, so their metadata must not carry one."""
    head = fh.read_at(4096, 0)
    fh.seek(0)
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 64)
        except zlib.error:
            return False
    return bool(head) and not head.lstrip().startswith(b"WARC/")


class _Batch:
    def __init__(self) -> None:
        self.kept: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.kept) + len(self.rejected)

    def flush(self) -> Output:
        out = Output(
            kept=docs_table(self.kept),
            rejected=docs_table(self.rejected, REJECTED_SCHEMA) if self.rejected else None,
        )
        self.kept, self.rejected = [], []
        return out


def read_warc(path: str, fs: pafs.FileSystem, params: ExtractParams, ctx: TaskContext) -> Iterator[Output]:
    """Yield documents of one WARC/ARC file (plain or gzip), at most BATCH_RECORDS rows per Output."""
    name = posixpath.basename(path.rstrip("/"))
    stats = ctx.stats
    extract = _Extractor(params)
    batch = _Batch()
    yielded = False
    last_good = -1
    corrupt: Exception | None = None

    # open_input_file, not open_input_stream: the latter would gunzip .gz itself,
    # but warcio needs the per-record gzip members to find record boundaries.
    with fs.open_input_file(path) as raw:
        is_arc = _looks_like_arc(raw)
        archive = ArchiveIterator(pa.BufferedInputStream(raw, _READ_BUFFER), arc2warc=True)
        records = iter(archive)
        while True:
            try:  # everything that reads the file: any failure here means the rest is unreadable
                record = next(records)
                reason, detail, mime, charset = (
                    _triage(record) if record.rec_type == "response" else (None, None, "", None)
                )
                body = record.raw_stream.read() if mime in HTML_MIMES else b""
                offset = archive.get_record_offset()  # reads the rest of the record
                missing = getattr(record.raw_stream, "limit", 0)  # warcio's LimitReader: bytes left unread
                if missing > 0:
                    raise TruncatedRecord(f"record at offset {offset} ends {missing} bytes early")
            except StopIteration:
                break
            except Exception as e:
                corrupt = e
                break
            last_good = offset
            if record.rec_type != "response":
                stats.update(f"warc.records.{record.rec_type}")
                continue

            stats.update("warc.responses")
            headers = record.rec_headers
            url = headers.get_header("WARC-Target-URI")
            text = ""
            if mime in HTML_MIMES:
                stats.update("warc.html")
                try:
                    payload = _http_payload(record.http_headers, body) if record.http_headers else body
                    text = decode_html(payload, charset)
                except Exception as e:  # bad chunking or gzip inside one HTTP payload
                    reason = reason or "content_decode_error"
                    detail = detail or f"{type(e).__name__}: {e}"[:1000]
                    text = decode_html(body, charset)
                if reason is None:
                    t0 = time.perf_counter()
                    extracted, reason, detail = extract(text, url)
                    stats.update("warc.extract_seconds", time.perf_counter() - t0)
                    if reason is None:
                        text = extracted or ""

            row = {
                "id": doc_id(name, str(offset)),
                "text": text,
                "source": params.source,
                "url": url,
                "language": None,
                "metadata": dump_metadata(
                    {
                        "warc_file": name,
                        "offset": offset,
                        "date": headers.get_header("WARC-Date"),
                        "record_id": None if is_arc else headers.get_header("WARC-Record-ID"),
                        "content_type": mime or None,
                    }
                ),
            }
            if reason is None:
                batch.kept.append(row)
            else:
                batch.rejected.append({**row, "reason": reason, "detail": detail})
            if len(batch) >= BATCH_RECORDS:
                yield batch.flush()
                yielded = True

    if corrupt is not None:
        stats.update("warc.corrupt_files")
        ctx.errors.append(f"corrupt after offset {last_good}: {type(corrupt).__name__}: {' '.join(str(corrupt).split())[:300]}")
        batch.rejected.append(
            {
                "id": doc_id(name, "corrupt", str(last_good)),
                "text": "",
                "source": params.source,
                "url": path,
                "language": None,
                "metadata": dump_metadata({"warc_file": name, "offset": last_good}),
                "reason": "corrupt_file",
                "detail": f"{type(corrupt).__name__}: {' '.join(str(corrupt).split())}"[:1000],
            }
        )
    if len(batch) or not yielded:  # an empty file still yields one (empty) table
        yield batch.flush()


EXTRACT_WARC = register(
    SourceStage(
        "web.extract_warc",
        ExtractParams,
        read_warc,
        resources=Resources(cpus=1),
        engine="spark",
        doc="WARC/ARC response records to documents with trafilatura, one bounded call per page.",
    )
)
