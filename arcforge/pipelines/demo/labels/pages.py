"""Crawled pages (trafilatura's and htmldate's cached test pages): main text vs. boilerplate.

English pages give ``poor`` (``web-boilerplate``, ``web-junk-page``), German ones give
``not_edu`` boilerplate and, by site, ``web-edu-page`` / ``web-lifestyle-page`` main text.
"""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arcforge.pipelines.demo.labels.common import (
    SRC_HTMLDATE, SRC_TRAFILATURA, Example, package_version, rank, read_tar,
)
from arcforge.pipelines.demo.labels.text import SENTENCE_END, chunk, decode_page, visible_lines

PROSE_LINE_CHARS = 200  # a boilerplate line this long with 2+ sentence ends is taken for missed content
# A page whose boilerplate is mostly long lines (150+ characters) is taken for an extraction
# failure (the extractor kept one part of the content): its boilerplate is not used.
MAX_LONG_LINE_SHARE = 0.4
JUNK_PAGE_CAP = 20  # chunks taken from one whole junk page

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
            elif len(line) >= PROSE_LINE_CHARS and len(SENTENCE_END.findall(line.rstrip())) >= 2:
                removed["long_prose_line"] += 1
            else:
                out.append(line)
        return out, removed


def load_pages(root: Path) -> list[Page]:
    """The cached pages of both packages, decoded and extracted; byte-identical copies once."""
    pages, seen = [], set()
    for package, src in (("trafilatura", SRC_TRAFILATURA), ("htmldate", SRC_HTMLDATE)):
        version = package_version(package)
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
            chosen = set(sorted(range(len(pieces)), key=lambda i: rank(f"{page.key}#{i}"))[:JUNK_PAGE_CAP])
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
