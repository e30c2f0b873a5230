"""The quality-classifier label sets built from the pinned demo corpus (the labels package), and the
Debian-package path of the corpus fetcher.

The corpus (and so the label sets) is fetched once into the user cache (or
$ARCFORGE_CACHE_DIR); tests that modify files work on a copy.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import re
import shutil
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import pytest

from arcforge.pipelines.demo import corpus as dc
from arcforge.pipelines.demo import packages
from arcforge.pipelines.demo import labels as lb
from arcforge.pipelines.demo.labels.common import BOILERPLATE_CHARS, MAX_CHARS, MIN_CHARS, SRC_REALWORLD
from arcforge.pipelines.demo.labels.english import rst_paragraphs
from arcforge.pipelines.demo.labels.multilingual import feed_items, peoples_daily_articles
from arcforge.pipelines.demo.labels.pages import realworld_expectations
from arcforge.pipelines.demo.labels.text import cjk_fraction, clean_paragraph, decode_page, visible_lines
from arcforge.pipelines.demo.corpus import DemoCorpusError, fetch_demo_corpus
from arcforge.pipelines.demo.pins import PACKAGES, Package

LABEL_FIELDS = {"id", "text", "label", "source", "language"}
CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
KANA = re.compile("[\u3040-\u30ff]")


@pytest.fixture(scope="module")
def corpus() -> Path:
    return fetch_demo_corpus(quiet=True)


@pytest.fixture(scope="module")
def sets(corpus: Path) -> dict[str, list[dict[str, str]]]:
    return {p: list(lb.iter_jsonl(corpus / p)) for p in (lb.QUALITY_EN, lb.EDU_MULTILINGUAL, lb.EDU_HELDOUT)}


def _counts(rows: list[dict[str, str]]) -> Counter[tuple[str, str]]:
    return Counter((r["language"], r["label"]) for r in rows)


def test_files_and_fields(corpus: Path, sets: dict[str, list[dict[str, str]]]) -> None:
    for path in lb.DERIVED_PATHS:
        assert (corpus / path).is_file(), path
    for path, rows in sets.items():
        assert rows, path
        assert all(set(r) == LABEL_FIELDS for r in rows), path
        assert len({r["id"] for r in rows}) == len(rows), f"duplicate ids in {path}"
        assert len({" ".join(r["text"].split()) for r in rows}) == len(rows), f"duplicate texts in {path}"
    assert {r["label"] for r in sets[lb.QUALITY_EN]} == {"good", "poor"}
    assert {r["language"] for r in sets[lb.QUALITY_EN]} == {"en"}
    for path in (lb.EDU_MULTILINGUAL, lb.EDU_HELDOUT):
        assert {r["label"] for r in sets[path]} == {"edu", "not_edu"}
        assert {r["language"] for r in sets[path]} == {"zh", "ja", "de"}


def test_both_classes_per_language_with_sane_counts(sets: dict[str, list[dict[str, str]]]) -> None:
    quality = _counts(sets[lb.QUALITY_EN])
    assert 500 <= quality["en", "good"] <= 2000 and 200 <= quality["en", "poor"] <= 2000, quality
    assert quality["en", "good"] <= 5 * quality["en", "poor"], quality
    edu = _counts(sets[lb.EDU_MULTILINGUAL])
    for lang in ("zh", "ja", "de"):
        for label in ("edu", "not_edu"):
            assert 200 <= edu[lang, label] <= 2000, (lang, label, edu)
        assert 1 / 3 <= edu[lang, "edu"] / edu[lang, "not_edu"] <= 3, (lang, edu)
    held = _counts(sets[lb.EDU_HELDOUT])
    for lang in ("zh", "ja", "de"):
        for label in ("edu", "not_edu"):
            assert 5 <= held[lang, label] <= 60, (lang, label, held)
    # no single source dominates a class, and the classes mix several sources where there are several
    sources = Counter((r["language"], r["label"], r["source"]) for r in sets[lb.EDU_MULTILINGUAL])
    zh_edu = {s for (lang, label, s) in sources if (lang, label) == ("zh", "edu")}
    zh_not_edu = {s for (lang, label, s) in sources if (lang, label) == ("zh", "not_edu")}
    assert zh_edu == {"debian-reference", "peoples-daily-1998"} and zh_not_edu == {"product-reviews", "blog-feeds"}
    for r in (*sets[lb.QUALITY_EN], *sets[lb.EDU_MULTILINGUAL]):  # paragraph- to page-sized
        furniture = r["source"] in ("web-boilerplate", "web-junk-page")
        lo = BOILERPLATE_CHARS[0] if furniture else MIN_CHARS[r["language"]]
        assert lo <= len(r["text"]) <= 3 * MAX_CHARS[r["language"]], (r["id"], len(r["text"]))


def test_build_is_deterministic(corpus: Path) -> None:
    stamp = json.loads((corpus / lb.STAMP).read_text(encoding="utf-8"))
    files, info = lb.build_label_sets(corpus)  # a second build, in memory
    assert {p: hashlib.sha256(b).hexdigest() for p, b in files.items()} == stamp["outputs"]
    for path, sha in stamp["outputs"].items():
        assert hashlib.sha256((corpus / path).read_bytes()).hexdigest() == sha
    assert info["counts"] == stamp["counts"]
    assert stamp["inputs"] == {p: next(f.sha256 for f in (*dc.FILES, *dc.BUNDLES) if f.path == p) for p in lb.INPUTS}


def test_up_to_date_labels_are_not_rebuilt(corpus: Path) -> None:
    before = {p: (corpus / p).stat().st_mtime_ns for p in lb.DERIVED_PATHS}
    assert lb.ensure_labels(corpus, quiet=True) is False
    assert {p: (corpus / p).stat().st_mtime_ns for p in lb.DERIVED_PATHS} == before


def test_changed_label_file_is_rebuilt(corpus: Path, tmp_path: Path) -> None:
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns(".lock", ".download-*"))
    target = copy / lb.QUALITY_EN
    original = target.read_bytes()
    target.write_bytes(original[: len(original) // 2])
    assert lb.ensure_labels(copy, quiet=True) is True
    assert target.read_bytes() == original


def _demo_pipeline_texts(corpus: Path) -> list[str]:
    """Text of everything the demo pipeline reads: the Wikipedia sample, the book, the docutils
    JSONL and the HTML responses of the WARC/ARC samples."""
    import pyarrow.fs as pafs

    from arcforge.pipelines.web.sources import iter_dump_pages, wikitext_to_text
    from arcforge.pipelines.web.warc_arc import iter_arc
    from arcforge.pipelines.web.warc_framing import Record, iter_warc

    texts = []
    for path in corpus.glob("wiki/*.bz2"):
        with bz2.open(path, "rb") as fh:
            texts.extend(wikitext_to_text(page["text"])[0] for page in iter_dump_pages(fh))
    texts.extend(p.read_text(encoding="utf-8-sig") for p in corpus.glob("books/*.txt"))
    for path in corpus.glob("jsonl/*.jsonl.gz"):
        texts.extend(d["text"] for d in lb.iter_jsonl(path))
    fs = pafs.LocalFileSystem()
    pages = 0
    for path in sorted((corpus / "warcs").iterdir()):
        with fs.open_input_file(str(path)) as fh:
            records = iter_arc(fh, 1 << 26) if ".arc" in path.name else iter_warc(fh, 1 << 26)
            for rec in records:
                if not isinstance(rec, Record) or rec.rec_type != "response":
                    continue
                body = rec.block.partition(b"\r\n\r\n")[2]
                if body[:2] == b"\x1f\x8b":
                    try:
                        body = zlib.decompressobj(47).decompress(body)
                    except zlib.error:
                        continue
                if b"<" in body[:4096]:
                    texts.append("\n".join(visible_lines(decode_page(body))))
                    pages += 1
    assert pages >= 30  # the WARC samples' HTML pages were read
    return texts


def _shingles(text: str, k: int = 13) -> set[int]:
    words = re.findall(r"\w+", text.casefold())
    return {hash(tuple(words[i : i + k])) for i in range(len(words) - k + 1)}


def test_no_overlap_with_demo_pipeline_inputs(corpus: Path, sets: dict[str, list[dict[str, str]]]) -> None:
    pipeline: set[int] = set()
    for text in _demo_pipeline_texts(corpus):
        pipeline |= _shingles(text)
    assert len(pipeline) > 100_000
    for path, rows in sets.items():
        shared = [r["id"] for r in rows if _shingles(r["text"]) & pipeline]
        assert not shared, f"{path}: 13-word spans shared with the demo pipeline's input: {shared[:5]}"


def test_heldout_input_is_unseen_and_unlabelled(corpus: Path, sets: dict[str, list[dict[str, str]]]) -> None:
    inputs = list(lb.iter_jsonl(corpus / lb.MULTILINGUAL_INPUT))
    assert all(set(d) == {"id", "text", "origin"} for d in inputs)
    held = {r["id"]: r for r in sets[lb.EDU_HELDOUT]}
    assert [d["id"] for d in inputs] == list(held) and all(held[d["id"]]["text"] == d["text"] for d in inputs)
    def lines(text: str) -> set[str]:
        return {" ".join(line.split()).casefold() for line in text.split("\n") if len(line) >= 30}

    train = set().union(*(lines(r["text"]) for r in sets[lb.EDU_MULTILINGUAL]))
    for d in inputs:
        assert not lines(d["text"]) & train, d["id"]
    train_shingles = set().union(*(_shingles(r["text"]) for r in sets[lb.EDU_MULTILINGUAL]))
    assert not [d["id"] for d in inputs if _shingles(d["text"]) & train_shingles]


def test_decoding_gives_real_cjk_text(sets: dict[str, list[dict[str, str]]]) -> None:
    rows = sets[lb.EDU_MULTILINGUAL] + sets[lb.EDU_HELDOUT]
    for lang in ("zh", "ja"):
        docs = [r["text"] for r in rows if r["language"] == lang]
        assert not [t for t in docs if "\ufffd" in t]  # every byte decoded
        chars = [c for t in docs for c in t if not c.isspace()]
        assert sum(bool(CJK.match(c)) for c in chars) >= 0.7 * len(chars), lang
        for t in docs:  # CJK letters and punctuation (a book list with English titles has the least)
            assert cjk_fraction(t) >= 0.3, t[:100]
    ja = [r for r in rows if r["language"] == "ja"]
    assert sum(bool(KANA.search(r["text"])) for r in ja) >= 0.95 * len(ja)
    # every legacy encoding of chardet's feeds gave documents, with real text
    folders = Counter(r["id"].split("/")[2] for r in sets[lb.EDU_MULTILINGUAL] if r["source"] == "blog-feeds")
    assert all(folders[f] >= 50 for f in ("GB2312", "Big5", "EUC-JP", "SHIFT_JIS")), folders
    text = "\n".join(r["text"] for r in rows)
    assert "诺伊托维斯特" in text  # GB2312 (read as GB18030)
    assert "顧問項目裡，老闆連誰是誰都不清楚" in text  # Big5
    assert "ハワイ後も連日仕事漬け" in text  # EUC-JP
    assert "一発１００万円は" in text  # Shift_JIS (read as CP932)
    de = [r["text"] for r in rows if r["language"] == "de"]
    assert any("ä" in t or "ü" in t or "ß" in t for t in de)
    assert not any("Ã¤" in t or "Ã¼" in t for t in de)  # no UTF-8 read as Latin-1


def test_boilerplate_agrees_with_trafilaturas_realworld_tests(
    corpus: Path, sets: dict[str, list[dict[str, str]]]
) -> None:
    expectations = realworld_expectations((corpus / SRC_REALWORLD).read_text(encoding="utf-8"))
    assert len(expectations) >= 60
    rows = sets[lb.QUALITY_EN] + sets[lb.EDU_MULTILINGUAL]
    boilerplate = {}
    for r in rows:
        parts = r["id"].split("/", 3)  # <lang>/web-boilerplate/<package>/<file>#<i>
        if len(parts) == 4 and parts[1:3] == ["web-boilerplate", "trafilatura"]:
            boilerplate.setdefault(parts[3].rsplit("#", 1)[0], []).append(r["text"])
    found_drop = total_drop = 0
    for name, (keep, drop) in expectations.items():
        texts = "\n".join(boilerplate.get(name, []))
        for k in keep:
            assert k not in texts, (name, k)  # main content never labelled as boilerplate
        total_drop += len(drop)
        found_drop += sum(d in texts for d in drop)
    assert found_drop >= 0.25 * total_drop, (found_drop, total_drop)


def test_docstring_states_what_labels_mean() -> None:
    doc = lb.__doc__ or ""
    assert "by source type" in doc and "Weakness" in doc
    for source in ("django-docs", "lee-news", "web-boilerplate", "web-junk-page", "debian-reference",
                   "peoples-daily-1998", "product-reviews", "blog-feeds", "web-edu-page", "web-lifestyle-page"):
        assert source in doc, source


# --------------------------------------------------------------------------------------
# small parsers
# --------------------------------------------------------------------------------------


def test_feed_items_and_decoding() -> None:
    feed = (
        '<?xml version="1.0" encoding="gb2312"?><rss><channel><title>博客</title>'
        "<item><title>标题一</title>"
        "<description><![CDATA[<p>第一段。</p><p>第二段&amp;。</p>]]></description></item>"
        "<item><title>标题二</title><description>&lt;b&gt;粗体&lt;/b&gt;正文</description></item>"
        "</channel></rss>"
    ).encode("gb18030")
    items = feed_items(feed.decode("gb18030"))
    assert items == ["标题一\n\n第一段。\n第二段&。", "标题二\n\n粗体正文"]


def test_peoples_daily_untagging_and_articles() -> None:
    text = (
        "北京/ns  举行/v  新年/t  音乐会/n\n"
        "[中央/n  人民/n  广播/vn  电台/n]nt  报道/v  ，/w  Windows/nx  NT/nx  很/d  好/a  。/w\n"
        "李鹏/nr  在/p  北京/ns  考察/v\n"
        "他/r  说/v  ：/w\n"
        "要/v  努力/a  。/w\n"
    )
    assert peoples_daily_articles(text) == [
        ["北京举行新年音乐会", "中央人民广播电台报道，Windows NT很好。"],
        ["李鹏在北京考察", "他说：", "要努力。"],
    ]


def test_rst_paragraphs() -> None:
    src = (
        "=====\nTitle\n=====\n\n"
        "Use :class:`~django.db.models.Model` and ``save()`` with a `link <https://x>`_ and Jinja2_ here.\n"
        "Second line of the same paragraph.\n\n"
        ".. note::\n\n    Indented directive body is skipped entirely here.\n\n"
        "Example::\n\n    code = 1\n\n"
        "* A bullet item that is long enough to be kept as prose.\n"
        "* Another bullet item that is long enough to be kept.\n"
    )
    assert rst_paragraphs(src) == [
        ("Title", "Use Model and save() with a link and Jinja2 here. Second line of the same paragraph."),
        ("Title", "A bullet item that is long enough to be kept as prose."),
        ("Title", "Another bullet item that is long enough to be kept."),
    ]


def test_page_decoding_and_visible_lines() -> None:
    latin = '<html><head><meta charset="iso-8859-1"><title>T</title><script>x()</script></head>' \
            "<body><div>Gr\xfc\xdfe \x93quoted\x94</div><p>Zweiter <b>Absatz</b></p><!-- c --></body></html>"
    markup = decode_page(latin.encode("latin-1"))
    assert "Grüße \u201cquoted\u201d" in markup  # ISO-8859-1 is read as windows-1252, as browsers do
    assert visible_lines(markup) == ["Grüße \u201cquoted\u201d", "Zweiter Absatz"]
    assert decode_page("<p>café</p>".encode("utf-8")) == "<p>café</p>"
    assert clean_paragraph("这是一个\n  测试 Linux\n系统") == "这是一个测试 Linux 系统"


# --------------------------------------------------------------------------------------
# Debian packages in the corpus fetcher
# --------------------------------------------------------------------------------------


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode("ascii")
        assert len(header) == 60
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _data_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        d = tarfile.TarInfo("./usr/share/doc/")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("compress", ["xz", "gz", "bz2", ""])
def test_deb_members_are_read_without_dpkg(tmp_path: Path, compress: str) -> None:
    tar = _data_tar({"./usr/share/doc/x/a.txt": b"hello", "./usr/share/doc/x/b.html": b"<p>odd</p>!"})
    packers = {"xz": lzma.compress, "gz": lambda b: gzip.compress(b, mtime=0), "bz2": bz2.compress, "": lambda b: b}
    packed = packers[compress](tar)
    name = f"data.tar.{compress}" if compress else "data.tar"
    deb = tmp_path / "x_1.0_all.deb"
    control = lzma.compress(_data_tar({}))
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", control), (name, packed)]))
    got = {m: r.read() for m, r in dc._open_members(deb, Package("x", "1.0", "deb"))}
    assert got == {"usr/share/doc/x/a.txt": b"hello", "usr/share/doc/x/b.html": b"<p>odd</p>!"}


def test_damaged_deb_is_a_clear_error(tmp_path: Path) -> None:
    deb = tmp_path / "x_1.0_all.deb"
    deb.write_bytes(b"not an ar archive")
    with pytest.raises(DemoCorpusError, match="not a Debian package"):
        list(dc._open_members(deb, Package("x", "1.0", "deb")))


def test_missing_apt_get_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(packages.shutil, "which", lambda name: None)
    pkg = PACKAGES["debian-reference-ja"]
    assert pkg.requirement == "debian-reference-ja=2.100"
    msg = "debian-reference-ja=2.100 is a Debian package and this host has no apt-get"
    with pytest.raises(DemoCorpusError, match=msg):
        dc._apt_download(pkg, tmp_path, quiet=True)


def test_unknown_deb_version_is_a_clear_error(tmp_path: Path) -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get here")
    with pytest.raises(DemoCorpusError, match=r"could not download debian-reference-ja=0\.0\.0-nonexistent"):
        dc._apt_download(Package("debian-reference-ja", "0.0.0-nonexistent", "deb"), tmp_path, quiet=True)
