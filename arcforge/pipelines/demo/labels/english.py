"""English ``good`` text for ``quality_en``: Django's reST documentation, the Lee news
corpus and gensim's Wikipedia sample (the ``poor`` side is ``pages``)."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

from arcforge.pipelines.demo.labels.common import (
    PIPELINE_WIKI, SRC_DJANGO, SRC_LEE, SRC_WIKI, Example, package_version,
)
from arcforge.pipelines.demo.labels.text import chunk, clean_paragraph

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
    version = package_version("django")
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
    version = package_version("gensim")
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
    version = package_version("gensim")
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
