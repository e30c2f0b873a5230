"""Text helpers of the label builder: paragraph clean-up and chunking, decoding crawled
pages to their visible lines, and the language check every document passes."""

from __future__ import annotations

import codecs
import hashlib
import re
from collections import Counter
from collections.abc import Iterable

from arcforge.pipelines.demo.labels.common import (
    BOILERPLATE_CHARS, MAX_CHARS, MIN_CHARS, MIN_CJK_FRACTION, MIN_LID_SCORE, Example, LanguageID,
)

# --------------------------------------------------------------------------------------
# paragraphs and chunks
# --------------------------------------------------------------------------------------

_CJK = "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3200-\u32ff\u3400-\u4dbf\u4e00-\u9fff" \
       "\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_CJK_RE = re.compile(f"[{_CJK}]")
_CJK_BREAK = re.compile(rf"(?<=[{_CJK}])[ \t\r]*\n\s*(?=[{_CJK}])")
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")


def clean_paragraph(text: str) -> str:
    """One paragraph on one line: a line break between two CJK characters is dropped
    (CJK text has no spaces), any other whitespace run becomes one space."""
    return " ".join(_CJK_BREAK.sub("", text).split())


def normalized(text: str) -> str:
    return " ".join(text.split()).casefold()


_SPACE = re.compile(r"\s")


def cjk_fraction(text: str) -> float:
    """The share of CJK characters (letters and punctuation) among the non-space ones."""
    n = len(text) - len(_SPACE.findall(text))
    return len(_CJK_RE.findall(text)) / n if n else 0.0


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    if len(paragraph) <= max_chars:
        return [paragraph]
    parts, cur = [], ""
    for sentence in SENTENCE_END.split(paragraph):
        if cur and len(cur) + len(sentence) > max_chars:
            parts.append(cur.strip())
            cur = ""
        cur += sentence if not cur or _CJK_RE.match(sentence[:1] or " ") else " " + sentence
    if cur.strip():
        parts.append(cur.strip())
    # a "sentence" longer than the limit (lists without punctuation): cut at spaces or hard
    out = []
    for p in parts:
        while len(p) > 2 * max_chars:
            cut = p.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            out.append(p[:cut].strip())
            p = p[cut:].strip()
        out.append(p)
    return out


def chunk(paragraphs: Iterable[str], language: str, sep: str = "\n\n", *, boilerplate: bool = False) -> list[str]:
    """Greedy chunks of consecutive paragraphs, each at most MAX_CHARS (a longer paragraph
    is split at sentence ends); chunks shorter than MIN_CHARS are dropped. Boilerplate
    (lines of page furniture) is cut shorter, as such documents are in a crawl."""
    lo, hi = MIN_CHARS[language], MAX_CHARS[language]
    if boilerplate:
        lo, hi = BOILERPLATE_CHARS
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for para in paragraphs:
        for piece in _split_long(para, hi):
            if cur and size + len(piece) > hi:
                out.append(sep.join(cur))
                cur, size = [], 0
            cur.append(piece)
            size += len(piece) + len(sep)
    if cur:
        out.append(sep.join(cur))
    return [c for c in out if len(c) >= lo]


# --------------------------------------------------------------------------------------
# crawled pages: bytes to visible lines
# --------------------------------------------------------------------------------------

XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)
_BLOCK_TAGS = frozenset(
    "address article aside blockquote body br button caption center dd details dialog div dl dt fieldset "
    "figcaption figure footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol option p pre section select "
    "summary table tbody td tfoot th thead tr ul".split()
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INVISIBLE = "//script|//style|//noscript|//template|//svg|//head|//iframe|//object|//embed|//canvas|//comment()"


def decode_page(raw: bytes) -> str:
    """UTF-8 if it decodes, else the charset the page declares (ISO-8859-1 read as
    windows-1252, as browsers do), else windows-1252; never fails."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    m = _META_CHARSET.search(raw[:16384])
    encoding = "cp1252"
    if m:
        try:
            encoding = codecs.lookup(m.group(1).decode("ascii")).name
        except LookupError:
            pass
    if encoding in ("latin-1", "iso8859-1", "ascii"):
        encoding = "cp1252"
    return raw.decode(encoding, "replace")


def visible_lines(markup: str) -> list[str]:
    """The page's visible text, one line per block element, whitespace-normalised."""
    import lxml.html
    from lxml import etree

    markup = _CONTROL.sub(" ", XML_DECL.sub("", markup, count=1))  # lxml refuses control characters
    if not markup.strip():
        return []
    try:
        doc = lxml.html.document_fromstring(markup)
    except (ValueError, etree.ParserError):
        return []
    for el in doc.xpath(_INVISIBLE):
        if el.getparent() is not None:
            el.drop_tree()
    parts: list[str] = []
    for event, el in etree.iterwalk(doc, events=("start", "end")):
        element = isinstance(el.tag, str)
        block = element and el.tag.lower() in _BLOCK_TAGS
        if event == "start":
            if block:
                parts.append("\n")
            if element and el.text:
                parts.append(el.text)
        else:
            if block:
                parts.append("\n")
            if el.tail and el is not doc:
                parts.append(el.tail)
    lines = (" ".join(line.split()) for line in "".join(parts).split("\n"))
    return [line for line in lines if line]


# --------------------------------------------------------------------------------------
# language checks
# --------------------------------------------------------------------------------------


def load_lid() -> tuple[LanguageID, str]:
    """fastText lid.176 (the pipeline's language-ID model) and its sha256."""
    from arcforge.pipelines.web.langid import bundled_lid_model, predict_languages

    import fasttext

    path = bundled_lid_model()
    fasttext.FastText.eprint = lambda *a, **k: None
    model = fasttext.load_model(str(path))

    def predict(texts: list[str]) -> list[tuple[str, float]]:
        if not texts:
            return []
        langs, scores = predict_languages(model, texts, 2000)
        return list(zip(langs, scores))

    return predict, hashlib.sha256(path.read_bytes()).hexdigest()


def lid_model_sha256() -> str:
    from arcforge.pipelines.web.langid import bundled_lid_model

    return hashlib.sha256(bundled_lid_model().read_bytes()).hexdigest()


def language_checked(examples: list[Example], lid: LanguageID, stats: Counter[str]) -> list[Example]:
    """The examples whose language lid.176 confirms (and, for zh/ja, that are mostly CJK)."""
    out = []
    for ex, (got, score) in zip(examples, lid([e.text for e in examples])):
        if got != ex.language or score < MIN_LID_SCORE:
            stats[f"dropped.language.{ex.language}.{ex.source}"] += 1
        elif ex.language in ("zh", "ja") and cjk_fraction(ex.text) < MIN_CJK_FRACTION:
            stats[f"dropped.mostly_not_cjk.{ex.language}.{ex.source}"] += 1
        else:
            out.append(ex)
    return out
