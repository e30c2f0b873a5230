"""Text sources that are not web crawls: a MediaWiki XML dump and plain text files.

* ``text.wikipedia_dump`` stream-parses a ``pages-articles`` dump (``.xml``,
  ``.xml.bz2`` or ``.xml.gz``; detected by magic bytes), keeps namespace-0 pages and
  turns their wikitext into plain text with the regex rules of :func:`wikitext_to_text`.
* ``text.plain_files`` makes one document per file, or one per paragraph.

Both open their input through the ``pyarrow.fs`` filesystem they are handed, with
``open_input_file`` (``open_input_stream`` would decompress by extension behind our back).
"""

from __future__ import annotations

import bz2
import gzip
import html
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Literal
from urllib.parse import quote

import pyarrow.fs as pafs

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
# Wikitext -> plain text
# --------------------------------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_MATH = re.compile(r"<(math|chem|ce)\b([^>]*?)(?:/>|>(.*?)</\1\s*>)", re.DOTALL | re.IGNORECASE)
# Elements dropped with their content; each also appears self-closing (<ref name="a" />).
_DROP_ELEMENTS = ("ref", "references", "gallery", "timeline", "imagemap", "score", "graph", "mapframe", "templatedata")
_DROP_SELF_CLOSING = re.compile(r"<(?:{})\b[^>]*/\s*>".format("|".join(_DROP_ELEMENTS)), re.IGNORECASE)
_DROP_PAIRED = re.compile(r"<({})\b[^>]*>.*?</\1\s*>".format("|".join(_DROP_ELEMENTS)), re.DOTALL | re.IGNORECASE)
# Innermost constructs: no nested opener or closer inside, so repeated passes peel nesting.
_TEMPLATE = re.compile(r"\{\{((?:(?!\{\{|\}\}).)*)\}\}", re.DOTALL)
_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*\|\}", re.DOTALL)
_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\]).)*)\]\]", re.DOTALL)
_EXT_LINK = re.compile(r"\[(?:(?:https?|ftp)://|//|mailto:)[^\s\]]+(?:[ \t]+([^\]\n]*))?\]", re.IGNORECASE)
_LINE_BREAK_TAG = re.compile(r"<(?:br|hr)\b[^>]*>|</?(?:p|div|li|ul|ol|blockquote|center|poem)\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
_HEADING = re.compile(r"^(={1,6})[ \t]*(.+?)[ \t]*\1[ \t]*$", re.MULTILINE)
_QUOTES = re.compile(r"'''''|'''|''")
_LIST_MARKER = re.compile(r"^[*#:;]+[ \t]*", re.MULTILINE)
_TABLE_DEBRIS = re.compile(r"^[ \t]*(?:\{\||\|).*$", re.MULTILINE)  # rows of unclosed tables/templates
_HRULE = re.compile(r"^-{4,}[ \t]*$", re.MULTILINE)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS = re.compile(r"\([\s,;:]*\)")
_PAREN_LEADING_PUNCT = re.compile(r"\([\s,;:]+")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([.,;:])(?=\s|$)")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_INTERLANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")
_EQUALS, _PIPE = "\ue002", "\ue003"

_HIDDEN_LINK_NS = {"file", "image", "media", "category"}
_TEXT_TEMPLATES = {"math", "mvar", "nowrap", "nobr", "small", "smaller", "big", "var", "em", "strong"}
_RANGE_WORDS = {"to", "-", "–", "and", "or", "by", "x", "×", "+"}


def _positional(inner: str) -> tuple[str, list[str]]:
    """Template name and positional arguments (an argument with '=' is a named one)."""
    name, *args = inner.split("|")
    return name.strip().lower().replace("_", " "), [a.strip() for a in args if "=" not in a]


def _template(m: re.Match[str]) -> str:
    """Most templates (infoboxes, citations, navboxes) are dropped; a few render inline text."""
    inner = m.group(1)
    name, args = _positional(inner)
    if name in ("=", "!"):  # escapes; restored after the surrounding template is parsed
        return _EQUALS if name == "=" else _PIPE
    if name in _TEXT_TEMPLATES and args:
        return args[0]
    if name in ("chem", "chem2", "chemf") and args:  # {{chem|C|n|H|2n+2}} -> CnH2n+2
        return "".join(args)
    if name == "lang" and len(args) >= 2:
        return args[1]
    if name in ("convert", "cvt") and len(args) >= 2:
        if len(args) >= 4 and args[1] in _RANGE_WORDS:
            return " ".join(args[:4])
        return f"{args[0]} {args[1]}"
    return ""


def _link(m: re.Match[str]) -> str:
    """[[target|label]] -> label, [[target]] -> target; files, categories, interlanguage -> ''."""
    target, sep, label = m.group(1).partition("|")
    target = target.strip()
    if target.startswith(":"):  # [[:Category:X]] is a visible link, not a categorisation
        target = target[1:].strip()
    elif ":" in target:
        prefix = target.split(":", 1)[0].strip()
        if prefix.lower() in _HIDDEN_LINK_NS or _INTERLANGUAGE.fullmatch(prefix):
            return ""
    if label:
        return label  # MediaWiki shows everything after the first pipe
    if sep:  # pipe trick: [[Paris, Texas|]] -> Paris
        target = re.sub(r"\s*\([^)]*\)$", "", target.split(":", 1)[-1]).split(",")[0]
    return target


def _repeat(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str], s: str, limit: int = 50) -> str:
    """Apply an innermost-construct substitution until nothing nested is left."""
    for _ in range(limit):
        s, n = pattern.subn(repl, s)
        if not n:
            break
    return s


def wikitext_to_text(wikitext: str, *, keep_math: bool = True) -> tuple[str, int]:
    """Plain text of a wikitext page and the number of math formulas kept.

    Rules, in order: comments go; ``<math>`` (and ``<chem>``) is set aside as ``$...$``
    (``$$...$$`` for ``display="block"``) or dropped; references, galleries and similar
    elements go with their content; file, category and interlanguage links go, other
    links keep their anchor text (innermost first, so a file caption's links resolve
    before the file link is dropped); templates and tables go, innermost first, except
    a few that render inline text (``{{math}}``, ``{{nowrap}}``, ``{{lang}}``,
    ``{{convert}}``); external links keep their label; remaining HTML tags go but keep their content;
    headings become plain lines; quote markup, list markers and magic words go;
    HTML entities are decoded and whitespace is tidied.
    """
    maths: list[str] = []

    def set_aside(m: re.Match[str]) -> str:
        body = (m.group(3) or "").strip()
        if not keep_math or not body:
            return ""
        if m.group(1).lower() in ("chem", "ce"):
            body = rf"\ce{{{body}}}"
        display = re.search(r"display\s*=\s*[\"']?block", m.group(2) or "", re.IGNORECASE)
        maths.append(f"$${body}$$" if display else f"${body}$")
        return f"\ue000{len(maths) - 1}\ue001"

    s = _COMMENT.sub("", wikitext)
    s = _MATH.sub(set_aside, s)
    s = _DROP_SELF_CLOSING.sub("", s)
    s = _DROP_PAIRED.sub("", s)
    # Links before templates: a link's pipe inside a template ({{lang|ja|[[a|b]]}}) must
    # not be read as the template's argument separator.
    s = _repeat(_LINK, _link, s)
    s = _repeat(_TEMPLATE, _template, s)
    s = _repeat(_TABLE, "", s)
    s = _TABLE_DEBRIS.sub("", s)
    s = _EXT_LINK.sub(lambda m: m.group(1) or "", s)
    s = _LINE_BREAK_TAG.sub("\n", s)
    s = _ANY_TAG.sub("", s)
    s = _HEADING.sub(lambda m: f"\n{m.group(2)}\n", s)
    s = _QUOTES.sub("", s)
    s = _LIST_MARKER.sub("", s)
    s = _HRULE.sub("", s)
    s = _MAGIC_WORD.sub("", s)
    s = html.unescape(s)
    s = _EMPTY_PARENS.sub("", s)
    s = _PAREN_LEADING_PUNCT.sub("(", s)
    s = _SPACES.sub(" ", s)
    s = _SPACE_BEFORE_PUNCT.sub(r"\1", s)
    s = "\n".join(line.strip() for line in s.split("\n"))
    s = _BLANK_LINES.sub("\n\n", s).strip()
    s = s.replace(_EQUALS, "=").replace(_PIPE, "|")
    s = _PLACEHOLDER.sub(lambda m: maths[int(m.group(1))], s)
    return s, len(maths)


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
