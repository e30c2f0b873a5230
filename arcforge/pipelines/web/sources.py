"""Text sources that are not web crawls: a MediaWiki XML dump and plain text files.

* ``text.wikipedia_dump`` stream-parses a ``pages-articles`` dump (``.xml``,
  ``.xml.bz2`` or ``.xml.gz``; detected by magic bytes), keeps namespace-0 pages and
  turns their wikitext into plain text with the regex rules of
  :func:`arcforge.pipelines.web.wikitext.wikitext_to_text`.
* ``text.plain_files`` makes one document per file, or one per paragraph.

Both open their input through the ``pyarrow.fs`` filesystem they are handed, with
``open_input_file`` (``open_input_stream`` would decompress by extension behind our back).
"""

from __future__ import annotations

import bz2
import gzip
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal
from urllib.parse import quote

import pyarrow.fs as pafs

from arcforge.pipelines.web.wikitext import wikitext_to_text
from arcforge.runtime.documents import doc_id, docs_table, dump_metadata
from arcforge.runtime.stage import (
    Output,
    Resources,
    SourceStage,
    StageParams,
    TaskContext,
    split_rejected,
)

BATCH_ROWS = 256  # kept + rejected rows per yielded Output


class _Batcher:
    """Collects rows with their reject reason and cuts them into Outputs of <= BATCH_ROWS rows."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.reasons: list[str | None] = []
        self.details: list[str | None] = []

    def add(self, row: dict[str, Any], reason: str | None = None, detail: str | None = None) -> Output | None:
        self.rows.append(row)
        self.reasons.append(reason)
        self.details.append(detail)
        return self.flush() if len(self.rows) >= BATCH_ROWS else None

    def flush(self) -> Output | None:
        if not self.rows:
            return None
        out = split_rejected(docs_table(self.rows), self.reasons, self.details)
        self.rows, self.reasons, self.details = [], [], []
        return out


# --------------------------------------------------------------------------------------
# text.wikipedia_dump
# --------------------------------------------------------------------------------------


class WikiParams(StageParams):
    source: str = "wikipedia"
    min_text_chars: int = 200  # plain-text characters; shorter pages are rejected as too_short
    keep_math: bool = True  # <math> as $...$ LaTeX; False drops formulas


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def _child_text(elem: ET.Element, name: str) -> str | None:
    c = _child(elem, name)
    return None if c is None else (c.text or "")


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """Wrap a random-access file in bz2 or gzip by its magic bytes (dump names vary)."""
    head = raw.read(3)
    raw.seek(0)
    if head == b"BZh":
        return bz2.open(raw, "rb")  # type: ignore[return-value]
    if head[:2] == b"\x1f\x8b":
        return gzip.open(raw, "rb")  # type: ignore[return-value]
    return raw


def iter_dump_pages(stream: BinaryIO) -> Iterator[dict[str, Any]]:
    """Yield one dict per <page> (title, ns, page_id, redirect, revision_id, model, text, base)
    with constant memory: each page is cleared from the tree once read."""
    root: ET.Element | None = None
    base: str | None = None
    for event, elem in ET.iterparse(stream, events=("start", "end")):
        if event == "start":
            if root is None:
                root = elem
            continue
        tag = _local(elem.tag)
        if tag == "base" and base is None:
            base = elem.text
        elif tag == "page":
            revisions = [c for c in elem if _local(c.tag) == "revision"]
            rev = revisions[-1] if revisions else None  # full-history dumps: the latest
            ns = _child_text(elem, "ns")
            yield {
                "title": _child_text(elem, "title") or "",
                "ns": int(ns) if ns and ns.strip().lstrip("-").isdigit() else 0,
                "page_id": (_child_text(elem, "id") or "").strip(),
                "redirect": _child(elem, "redirect") is not None,
                "revision_id": (_child_text(rev, "id") or "").strip() if rev is not None else "",
                "model": _child_text(rev, "model") if rev is not None else None,
                "text": (_child_text(rev, "text") or "") if rev is not None else "",
                "base": base,
            }
            elem.clear()
            if root is not None:
                root.clear()  # drop finished pages (and siteinfo) from the tree


def _wiki_url(base: str | None, title: str) -> str:
    """Canonical article URL; percent-encodes as MediaWiki's wfUrlencode does."""
    prefix = "https://en.wikipedia.org/wiki/"
    if base and "/" in base:
        prefix = base.rsplit("/", 1)[0] + "/"
    return prefix + quote(title.replace(" ", "_"), safe=";@$!*(),/~:")


_REDIRECT_TEXT = re.compile(r"\s*#REDIRECT\b\s*:?\s*\[\[([^\]|#]*)", re.IGNORECASE)


def _int_or_none(v: str) -> int | None:
    return int(v) if v.isdigit() else None


def read_wikipedia_dump(path: str, fs: pafs.FileSystem, params: WikiParams, ctx: TaskContext) -> Iterator[Output]:
    stats = ctx.stats
    batch = _Batcher()
    with fs.open_input_file(path) as raw:
        stream = _decompressed(raw)
        try:
            for page in iter_dump_pages(stream):
                stats.update("wiki.pages")
                if page["ns"] != 0:
                    stats.update("wiki.skipped_namespace")
                    continue
                title, page_id = page["title"], page["page_id"]
                row = {
                    "id": doc_id("wikipedia", page_id),
                    "source": params.source,
                    "url": _wiki_url(page["base"], title),
                    "language": None,
                    "metadata": dump_metadata(
                        {
                            "title": title,
                            "page_id": _int_or_none(page_id),
                            "revision_id": _int_or_none(page["revision_id"]),
                        }
                    ),
                }
                redirect = _REDIRECT_TEXT.match(page["text"])
                if page["redirect"] or redirect:
                    stats.update("wiki.redirect")
                    target = redirect.group(1).strip() if redirect else None
                    out = batch.add({**row, "text": page["text"]}, "redirect", target)
                else:
                    text, n_math = wikitext_to_text(page["text"], keep_math=params.keep_math)
                    stats.update("wiki.math", n_math)
                    if len(text) < params.min_text_chars:
                        stats.update("wiki.too_short")
                        detail = f"{len(text)} chars < {params.min_text_chars}"
                        out = batch.add({**row, "text": text}, "too_short", detail)
                    else:
                        stats.update("wiki.docs")
                        out = batch.add({**row, "text": text})
                if out is not None:
                    yield out
        except (ET.ParseError, EOFError, OSError) as exc:
            # A truncated or corrupt dump: keep what was read, report the file, go on.
            stats.update("wiki.corrupt_files")
            ctx.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if stream is not raw:
                stream.close()
    out = batch.flush()
    if out is not None:
        yield out


# --------------------------------------------------------------------------------------
# text.plain_files
# --------------------------------------------------------------------------------------


class PlainTextParams(StageParams):
    source: str = "books"
    split: Literal["file", "paragraphs"] = "file"
    min_text_chars: int = 1
    encoding: str = "utf-8"


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def split_paragraphs(text: str) -> list[str]:
    """Blank-line-separated blocks. A text with no blank line at all is taken to hold
    one paragraph per line, the layout of many prepared corpora (sentencepiece's
    ``botchan.txt`` among them)."""
    text = text.strip()
    if not text:
        return []
    parts = _PARAGRAPH_BREAK.split(text) if _BLANK_LINE.search(text) else text.split("\n")
    return [p.strip() for p in parts if p.strip()]


def read_plain_file(path: str, fs: pafs.FileSystem, params: PlainTextParams, ctx: TaskContext) -> Iterator[Output]:
    stats = ctx.stats
    name = os.path.basename(path.rstrip("/"))
    with fs.open_input_file(path) as fh:
        data = fh.read()
    stats.update("plain.files")
    stats.update("plain.bytes", len(data))
    batch = _Batcher()

    def row(index: int, text: str) -> dict[str, Any]:
        return {
            "id": doc_id(name, str(index)),
            "text": text,
            "source": params.source,
            "url": path,
            "language": None,
            "metadata": dump_metadata({"file": name, "index": index}),
        }

    try:
        text = data.decode(params.encoding)
    except UnicodeDecodeError as exc:
        stats.update("plain.decode_error")
        batch.add(row(0, data.decode(params.encoding, errors="replace")), "decode_error", str(exc))
        yield batch.flush()  # type: ignore[misc]
        return

    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if params.split == "file":
        blocks = [text.strip()]
    else:
        if text.strip() and not _BLANK_LINE.search(text.strip()):
            stats.update("plain.one_paragraph_per_line")
        blocks = split_paragraphs(text)
    for i, block in enumerate(blocks):
        if len(block) < params.min_text_chars:
            stats.update("plain.too_short")
            out = batch.add(row(i, block), "too_short", f"{len(block)} chars < {params.min_text_chars}")
        else:
            stats.update("plain.docs")
            out = batch.add(row(i, block))
        if out is not None:
            yield out
    out = batch.flush()
    if out is not None:
        yield out


WIKIPEDIA_DUMP = SourceStage(
    "text.wikipedia_dump",
    WikiParams,
    read_wikipedia_dump,
    resources=Resources(cpus=1),
    engine="local",
    doc="MediaWiki XML dump (.xml/.bz2/.gz) -> namespace-0 articles as plain text.",
)

PLAIN_FILES = SourceStage(
    "text.plain_files",
    PlainTextParams,
    read_plain_file,
    resources=Resources(cpus=1),
    engine="local",
    doc="Plain text files -> one document per file or per paragraph.",
)

__all__ = [
    "PLAIN_FILES",
    "WIKIPEDIA_DUMP",
    "PlainTextParams",
    "WikiParams",
    "iter_dump_pages",
    "read_plain_file",
    "read_wikipedia_dump",
    "split_paragraphs",
    "wikitext_to_text",
]
