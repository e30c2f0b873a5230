"""``web.extract_warc``: WARC/ARC files in, one document per HTML response out.

Every response record becomes either a kept document (trafilatura's main text)
or a rejected row saying why, and every byte range that holds no readable record
becomes a ``damaged_range`` row, so nothing disappears without a count. Other
record types (request, revisit, warcinfo, metadata, resource) are not documents
and are only counted.

Reasons, in the order they are checked:

* ``damaged_range``: bytes that are no record (garbage, a header without a usable
  Content-Length, a damaged or cut gzip member); detail ``start-end: cause``.
  Reading goes on at the next record (``warc_framing.py``).
* ``length_mismatch``: the block does not fit its Content-Length (cut short, runs
  into the next record, no ``\\r\\n\\r\\n`` after it); never kept with cut text.
* ``no_http_headers``: a response record for an HTTP URI without an HTTP message.
* ``malformed_http``: an HTTP status line without a 3-digit code.
* ``http_status``: a status code outside 2xx (detail: the code).
* ``non_html``: another media type (detail: the MIME type, or ``missing``).
* ``record_too_large``: a block over ``max_record_bytes``: it was not decompressed
  or read past that bound.
* ``content_decode_error``: chunking or content encoding that cannot be undone.
* ``binary_content``: a PNG, PDF, ... (or mostly control bytes), whatever the
  Content-Type said (detail: the kind).
* ``html_too_large``: a payload over ``max_html_bytes`` after content decoding.
* ``html_too_deep``: elements nested deeper than ``max_html_depth``.
* ``extract_timeout``, ``extract_error``, ``extract_empty``, ``too_short``: extraction.

The caps make the output a function of the input alone; the per-page timeout is
a last resort, and a timeout (or a crashed extractor) is counted under
``nondeterministic.*`` because the same page might pass on another machine.
A rejected row keeps at most the first 64 KiB of its decoded payload as text;
its metadata has the stored payload's length and sha256.

Extraction runs in a per-worker child process (``sandbox.py``) so one pathological
page costs at most ``timeout_s`` instead of hanging the partition.

Stats: ``warc.responses``, ``warc.html`` (responses with an HTML type),
``warc.records.<type>`` (the skipped records), ``warc.damaged_ranges``,
``warc.corrupt_files`` (files with a damaged range or a length mismatch),
``warc.extract_seconds`` (wall time spent in the extractor) and
``nondeterministic.extract_timeout`` / ``nondeterministic.extract_crash``.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs
from pydantic import Field
from warcio.statusandheaders import StatusAndHeaders, StatusAndHeadersParser

from arcforge.runtime.documents import DOC_SCHEMA, docs_table, doc_id, dump_metadata, rejected_schema
from arcforge.runtime.stage import Output, Resources, SourceStage, StageParams, TaskContext
from arcforge.pipelines.web.sandbox import SandboxError, SandboxTimeout, get_sandbox
from arcforge.pipelines.web.warc_content import (
    REJECTED_TEXT_BYTES,
    decode_html,
    decode_payload,
    sniff_binary,
    text_prefix,
    too_deep,
)
from arcforge.pipelines.web.warc_arc import iter_arc
from arcforge.pipelines.web.warc_framing import Damage, Record, iter_warc

__all__ = ["BATCH_RECORDS", "REJECTED_SCHEMA", "ExtractParams", "decode_html", "read_warc"]

BATCH_RECORDS = 256  # rows (kept + rejected) per Output, so a worker holds at most one batch of pages
HTML_MIMES = frozenset({"text/html", "application/xhtml+xml"})
REJECTED_SCHEMA = rejected_schema(DOC_SCHEMA)
MAX_ERRORS_PER_FILE = 20  # ctx.errors lines per file; the rest are counted in one more line

_WARM_TIMEOUT_S = 120.0
_CHARSET_RE = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_HTTP_PARSER = StatusAndHeadersParser(["HTTP/"], verify=False)
_STATUS_RE = re.compile(r"\d{3}")
_STATUS_LINE_RE = re.compile(rb"[A-Z][A-Z0-9]*/\d+(?:\.\d+)?[ \t]")  # HTTP/1.1 (pywb's samples also have HTTPX/1.1)


class ExtractParams(StageParams):
    timeout_s: float = Field(10.0, ge=0)  # per document; 0 extracts in-process with no bound (debugging)
    min_text_chars: int = 1  # shorter extracted text is rejected as too_short
    include_tables: bool = True
    favor_precision: bool = False
    source: str = "web"
    max_record_bytes: int = Field(16 << 20, ge=1)  # decompressed WARC block; larger: record_too_large
    max_html_bytes: int = Field(4 << 20, ge=1)  # payload after content decoding; larger: html_too_large
    max_html_depth: int = Field(512, ge=1)  # element nesting; deeper: html_too_deep


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


def _split_http(block: bytes) -> tuple[StatusAndHeaders | None, bytes]:
    """(HTTP headers, payload) of a block that holds an HTTP message, else (None, block)."""
    if not _STATUS_LINE_RE.match(block):
        return None, block
    http = _HTTP_PARSER.parse(io.BytesIO(block))
    return http, block[http.total_len :]


def _text_of(http: StatusAndHeaders | None, payload: bytes, charset: str | None) -> str:
    """What a rejected row keeps: the first 64 KiB of the decoded payload, nothing for binary data."""
    data, cut = payload[:REJECTED_TEXT_BYTES], len(payload) > REJECTED_TEXT_BYTES
    if http is not None:
        try:
            data, cut = decode_payload(http, payload, REJECTED_TEXT_BYTES)
        except (ValueError, zlib.error):
            pass  # the stored bytes, then
    if not data.strip() or sniff_binary(data, charset):
        return ""
    return text_prefix(data, charset, cut)


class _Reader:
    """The rows of one file: records and damaged ranges in, documents and rejections out."""

    def __init__(self, name: str, params: ExtractParams, ctx: TaskContext, is_arc: bool) -> None:
        self.name, self.params, self.ctx, self.is_arc = name, params, ctx, is_arc
        self.extract = _Extractor(params)
        self.problems = 0

    def _report(self, message: str) -> None:
        if self.problems == 0:
            self.ctx.stats.update("warc.corrupt_files")
        self.problems += 1
        if self.problems <= MAX_ERRORS_PER_FILE:
            self.ctx.errors.append(message[:500])

    def finish(self) -> None:
        if self.problems > MAX_ERRORS_PER_FILE:
            more = self.problems - MAX_ERRORS_PER_FILE
            self.ctx.errors.append(f"{more} more damaged ranges or length mismatches in {self.name}")

    def damage_row(self, d: Damage) -> dict[str, Any]:
        self.ctx.stats.update("warc.damaged_ranges")
        detail = f"{d.start}-{d.end}: {d.cause}"
        self._report(f"damaged bytes {detail}")
        return {
            "id": doc_id(self.name, "damaged", d.start),
            "text": "",
            "source": self.params.source,
            "url": d.url,
            "language": None,
            "metadata": dump_metadata({"warc_file": self.name, "offset": d.offset, "start": d.start, "end": d.end}),
            "reason": "damaged_range",
            "detail": detail[:1000],
        }

    def record_row(self, rec: Record) -> dict[str, Any] | None:
        """The row of a response record (None for other record types)."""
        stats, p = self.ctx.stats, self.params
        if rec.rec_type != "response":
            if rec.problem is None:
                stats.update(f"warc.records.{rec.rec_type}")
                return None
            # a non-document record that does not fit its length: its bytes are a damaged range
            return self.damage_row(Damage(rec.pos, rec.end, rec.offset, f"{rec.rec_type} record: {rec.cause}", rec.uri))

        stats.update("warc.responses")
        headers, url = rec.headers, rec.uri
        try:
            http, payload = _split_http(rec.block)
        except Exception:  # noqa: BLE001 - an HTTP header block warcio cannot read
            http, payload = None, rec.block
        mime, charset = _mime_and_charset((http or headers).get_header("Content-Type"))
        is_html = mime in HTML_MIMES
        if is_html:
            stats.update("warc.html")
        status = http.get_statuscode() if http is not None else ""
        keep_text = is_html  # whether a rejected row shows the start of its payload
        text = ""
        reason = detail = None
        if rec.problem:
            reason, detail = rec.problem, rec.cause
            self._report(f"length mismatch in the response record at {rec.pos} ({url}): {rec.cause}")
        elif http is None and (mime == "application/http" or (not mime and (url or "").startswith(("http:", "https:")))):
            # an HTTP exchange without its HTTP message (was "http_status: missing")
            reason, keep_text = "no_http_headers", True
            detail = "empty block" if not rec.block.strip() else f"block starts {rec.block[:24]!r}"
        elif http is not None and not _STATUS_RE.fullmatch(status):
            reason, detail = "malformed_http", f"status line {http.protocol} {http.statusline}"[:200]
        elif http is not None and not 200 <= int(status) < 300:
            reason, detail = "http_status", status
        elif not is_html:
            reason, detail = "non_html", mime or "missing"
        elif not rec.complete:
            reason, keep_text = "record_too_large", False
            detail = f"Content-Length {rec.length} > max_record_bytes {p.max_record_bytes}"
        else:
            reason, detail, text = self._html(http, payload, charset, url)

        meta = {
            "warc_file": self.name,
            "offset": rec.offset,
            "date": headers.get_header("WARC-Date"),
            "record_id": None if self.is_arc else headers.get_header("WARC-Record-ID"),
            "content_type": mime or None,
        }
        if rec.inner:
            meta["offset_in_member"] = rec.inner
        row = {"id": doc_id(self.name, rec.pos), "text": text, "source": p.source, "url": url, "language": None}
        if reason is None:
            return {**row, "metadata": dump_metadata(meta)}
        meta["content_length"] = rec.length
        if rec.complete and not rec.problem:  # the stored payload, whole: what WARC-Payload-Digest covers
            meta["payload_bytes"] = len(payload)
            meta["payload_sha256"] = hashlib.sha256(payload).hexdigest()
        row["text"] = _text_of(http, payload, charset) if keep_text else ""
        return {**row, "metadata": dump_metadata(meta), "reason": reason, "detail": detail}

    def _html(
        self, http: StatusAndHeaders | None, payload: bytes, charset: str | None, url: str | None
    ) -> tuple[str | None, str | None, str]:
        """(reason, detail, text) of an HTML page: the caps, then extraction."""
        p, stats = self.params, self.ctx.stats
        data, over = payload[: p.max_html_bytes], len(payload) > p.max_html_bytes
        if http is not None:
            try:
                data, over = decode_payload(http, payload, p.max_html_bytes)
            except (ValueError, zlib.error) as e:  # bad chunking or gzip inside one HTTP payload
                return "content_decode_error", f"{type(e).__name__}: {e}"[:1000], ""
        if kind := sniff_binary(data, charset):
            return "binary_content", kind, ""
        if over:
            return "html_too_large", f"over max_html_bytes {p.max_html_bytes} after content decoding", ""
        if too_deep(data, p.max_html_depth):
            return "html_too_deep", f"elements nested deeper than max_html_depth {p.max_html_depth}", ""
        t0 = time.perf_counter()
        extracted, reason, detail = self.extract(decode_html(data, charset), url)
        stats.update("warc.extract_seconds", time.perf_counter() - t0)
        if reason == "extract_timeout":
            stats.update("nondeterministic.extract_timeout")
        elif reason == "extract_error" and (detail or "").startswith("SandboxCrash"):
            stats.update("nondeterministic.extract_crash")
        return reason, detail, (extracted or "") if reason is None else ""


def _is_arc(fh: Any, name: str) -> bool:
    """ARC files (warcio reads those) start with a ``filedesc://`` record; everything else is framed as WARC."""
    head = fh.read_at(4096, 0)
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 64)
        except zlib.error:
            head = b""
    head = head.lstrip()
    if head.startswith(b"filedesc://"):
        return True
    return not head.startswith(b"WARC/") and bool(re.search(r"\.arc(\.gz)?$", name))


class _Batch:
    def __init__(self) -> None:
        self.kept: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.kept) + len(self.rejected)

    def add(self, row: dict[str, Any]) -> None:
        (self.rejected if "reason" in row else self.kept).append(row)

    def flush(self) -> Output:
        out = Output(
            kept=docs_table(self.kept),
            rejected=docs_table(self.rejected, REJECTED_SCHEMA) if self.rejected else None,
        )
        self.kept, self.rejected = [], []
        return out


def read_warc(path: str, fs: pafs.FileSystem, params: ExtractParams, ctx: TaskContext) -> Iterator[Output]:
    """Yield documents of one WARC/ARC file (plain or gzip), at most BATCH_RECORDS rows per Output.

    An OSError (the file cannot be opened or read) propagates: the runtime decides
    whether to retry or to quarantine the input.
    """
    name = posixpath.basename(path.rstrip("/"))
    batch = _Batch()
    yielded = False
    # open_input_file, not open_input_stream: the latter would gunzip .gz itself,
    # but gzip member boundaries are how damage is skipped and records are located.
    with fs.open_input_file(path) as raw:
        is_arc = _is_arc(raw, name)
        reader = _Reader(name, params, ctx, is_arc)
        events = iter_arc(raw, params.max_record_bytes) if is_arc else iter_warc(raw, params.max_record_bytes)
        for event in events:
            row = reader.damage_row(event) if isinstance(event, Damage) else reader.record_row(event)
            if row is None:
                continue
            batch.add(row)
            if len(batch) >= BATCH_RECORDS:
                yield batch.flush()
                yielded = True
        reader.finish()
    if len(batch) or not yielded:  # an empty file still yields one (empty) table
        yield batch.flush()


EXTRACT_WARC = SourceStage(
    "web.extract_warc",
    ExtractParams,
    read_warc,
    resources=Resources(cpus=1),
    engine="spark",
    doc="WARC/ARC response records to documents with trafilatura, one bounded call per page.",
)
