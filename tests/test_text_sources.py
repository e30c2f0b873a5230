"""text.wikipedia_dump and text.plain_files on the real demo corpus files."""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from arcforge.pipelines.demo.corpus import fetch_demo_corpus
from arcforge.runtime.documents import DOC_SCHEMA, doc_id
from arcforge.runtime.stage import Output, SourceStage, TaskContext, resolve_stage
from arcforge.pipelines.web.sources import (
    BATCH_ROWS,
    PlainTextParams,
    WikiParams,
    read_plain_file,
    read_wikipedia_dump,
    split_paragraphs,
    wikitext_to_text,
)

FS = pafs.LocalFileSystem()
MATH = re.compile(r"\$[^$\n]*\\[a-zA-Z]+[^$\n]*\$")  # a $...$ span with a LaTeX command


@pytest.fixture(scope="module")
def corpus() -> Path:
    return fetch_demo_corpus(quiet=True)


@pytest.fixture(scope="module")
def wiki_dump(corpus: Path) -> Path:
    return next((corpus / "wiki").glob("*.bz2"))


def _collect(outs: list[Output]) -> tuple[pa.Table, pa.Table | None]:
    for o in outs:
        assert o.kept.num_rows + (o.rejected.num_rows if o.rejected is not None else 0) <= BATCH_ROWS
    kept = pa.concat_tables([o.kept for o in outs]) if outs else DOC_SCHEMA.empty_table()
    rejected = [o.rejected for o in outs if o.rejected is not None]
    return kept, (pa.concat_tables(rejected) if rejected else None)


@pytest.fixture(scope="module")
def wiki(wiki_dump: Path) -> tuple[pa.Table, pa.Table, TaskContext]:
    ctx = TaskContext()
    kept, rejected = _collect(list(read_wikipedia_dump(str(wiki_dump), FS, WikiParams(), ctx)))
    assert rejected is not None
    return kept, rejected, ctx


def test_stages_are_registered() -> None:
    for name, params in (("text.wikipedia_dump", WikiParams), ("text.plain_files", PlainTextParams)):
        stage = resolve_stage(name)
        assert isinstance(stage, SourceStage) and stage.params is params
        assert stage.engine == "local" and stage.resources.cpus == 1
    with pytest.raises(ValueError):
        WikiParams(min_chars=3)  # type: ignore[call-arg]


def test_wikipedia_dump_articles(wiki: tuple[pa.Table, pa.Table, TaskContext]) -> None:
    kept, rejected, ctx = wiki
    assert kept.schema == DOC_SCHEMA
    assert 90 <= kept.num_rows <= 120
    stats = ctx.stats.as_dict()
    assert stats["wiki.pages"] == 206 and stats["wiki.skipped_namespace"] == 1
    assert stats["wiki.docs"] == kept.num_rows
    assert stats["wiki.redirect"] == rejected.num_rows - stats.get("wiki.too_short", 0)
    assert set(rejected.column("reason").to_pylist()) <= {"redirect", "too_short"}
    assert not ctx.errors

    rows = kept.to_pylist()
    assert {r["source"] for r in rows} == {"wikipedia"}
    assert all(len(r["text"]) >= 200 for r in rows)
    by_title = {json.loads(r["metadata"])["title"]: r for r in rows}
    anarchism = by_title["Anarchism"]
    assert anarchism["url"] == "https://en.wikipedia.org/wiki/Anarchism"
    assert json.loads(anarchism["metadata"]) == {"title": "Anarchism", "page_id": 12, "revision_id": 716551092}
    assert anarchism["text"].startswith("Anarchism is a political philosophy")
    # ids are unique and derived from the page id only (so reruns are byte-identical)
    ids = kept.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert all(r["id"] == doc_id("wikipedia", str(json.loads(r["metadata"])["page_id"])) for r in rows)
    assert all(" " not in r["url"] for r in rows)


def test_wikipedia_markup_is_gone(wiki: tuple[pa.Table, pa.Table, TaskContext]) -> None:
    texts = wiki[0].column("text").to_pylist()
    for marker in ("[[", "]]", "<ref", "{|", "'''", "&nbsp;", "thumb|"):
        assert not [t for t in texts if marker in t], marker
    # LaTeX may legitimately contain {{ }}; outside math no template is left
    outside_math = [re.sub(r"\$[^$]*\$", "", t) for t in texts]
    assert sum("{{" in t or "}}" in t for t in outside_math) <= len(texts) // 20
    with_math = [t for t in texts if MATH.search(t)]
    assert len(with_math) >= 5
    albedo = next(t for t in texts if t.startswith("Albedo"))
    assert r"$A =\left ( \frac{1329\times10^{-H/5}}{D} \right ) ^2$" in albedo


def test_wikipedia_redirects_rejected(wiki: tuple[pa.Table, pa.Table, TaskContext]) -> None:
    rejected = wiki[1].to_pylist()
    first = next(r for r in rejected if json.loads(r["metadata"])["title"] == "AccessibleComputing")
    assert first["reason"] == "redirect" and first["detail"] == "Computer accessibility"
    assert first["text"].startswith("#REDIRECT")


def test_wikipedia_truncated_dump_keeps_what_was_read(wiki_dump: Path, tmp_path: Path) -> None:
    cut = tmp_path / "truncated.xml.bz2"
    cut.write_bytes(wiki_dump.read_bytes()[:300_000])
    ctx = TaskContext()
    kept, _ = _collect(list(read_wikipedia_dump(str(cut), FS, WikiParams(), ctx)))
    assert 0 < kept.num_rows < 90
    assert len(ctx.errors) == 1 and ctx.errors[0].split(":")[0] in {"EOFError", "ParseError", "OSError"}, ctx.errors


def test_wikipedia_plain_xml_namespaces_and_short_pages(tmp_path: Path) -> None:
    ns = "http://www.mediawiki.org/xml/export-0.10/"
    body = "Body of the article with a [[link|label]] and <math>\\sqrt{2}</math>. " * 5

    def page(pid: int, title: str, ns_id: int, text: str) -> str:
        return (
            f"<page><title>{title}</title><ns>{ns_id}</ns><id>{pid}</id>"
            f"<revision><id>{pid * 10}</id><model>wikitext</model><text>{text}</text></revision></page>"
        )

    xml = (
        f'<mediawiki xmlns="{ns}"><siteinfo><base>https://de.wikipedia.org/wiki/Hauptseite</base></siteinfo>'
        + page(1, "Talk:Foo", 1, body)
        + page(2, "Short one", 0, "Tiny.")
        + page(3, "Straße &amp; Co", 0, body.replace("<", "&lt;"))
        + "</mediawiki>"
    )
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(xml.encode()))
    ctx = TaskContext()
    kept, rejected = _collect(list(read_wikipedia_dump(str(path), FS, WikiParams(source="dewiki"), ctx)))
    assert ctx.stats.as_dict()["wiki.skipped_namespace"] == 1
    assert rejected is not None and rejected.column("reason").to_pylist() == ["too_short"]
    [doc] = kept.to_pylist()
    assert doc["url"] == "https://de.wikipedia.org/wiki/Stra%C3%9Fe_%26_Co" and doc["source"] == "dewiki"
    assert "label" in doc["text"] and "$\\sqrt{2}$" in doc["text"]
    ctx2 = TaskContext()
    kept2, _ = _collect(list(read_wikipedia_dump(str(path), FS, WikiParams(keep_math=False, min_text_chars=50), ctx2)))
    assert "sqrt" not in kept2.column("text")[0].as_py()
    assert kept2.column("id").to_pylist() == kept.column("id").to_pylist() == [doc_id("wikipedia", "3")]


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        (
            "'''Foo''' is a [[bar|baz]] thing.<ref>Smith {{cite|x}}</ref><ref name=a/> More<!-- c -->.",
            "Foo is a baz thing. More.",
        ),
        ("== Head ==\n* item [[Category:C]] [[de:Foo]] [[:Category:Seen|shown]]", "Head\n\nitem shown"),
        ("{|\n|-\n| a || b\n|}\nAfter [http://x.org label] text.", "After label text."),
        ("{{Infobox|a={{nested|b}}|c=[[d|e]]}}Start {{lang|ja|[[wikt:合|合]]}} end", "Start 合 end"),
        ("[[File:A.jpg|thumb|Cap with [[link]] {{x}}]]Next", "Next"),
        ("x {{math|''a'' {{=}} 1}} y {{convert|5|km}} z &amp; <sup>2</sup>", "x a = 1 y 5 km z & 2"),
        ('Let <math display="block">x^{{2}}</math> hold', "Let $$x^{{2}}$$ hold"),
    ],
)
def test_wikitext_rules(wikitext: str, expected: str) -> None:
    assert wikitext_to_text(wikitext)[0] == expected


def test_botchan_file_and_paragraphs(corpus: Path) -> None:
    path = str(corpus / "books" / "botchan.txt")
    ctx = TaskContext()
    kept, rejected = _collect(list(read_plain_file(path, FS, PlainTextParams(), ctx)))
    assert rejected is None and kept.num_rows == 1
    [doc] = kept.to_pylist()
    assert doc["text"].startswith("Project Gutenberg's Botchan")  # the BOM is gone
    assert "\r" not in doc["text"] and len(doc["text"]) > 250_000
    assert doc["source"] == "books" and doc["url"] == path and doc["id"] == doc_id("botchan.txt", "0")
    assert json.loads(doc["metadata"]) == {"file": "botchan.txt", "index": 0}

    ctx = TaskContext()
    outs = list(read_plain_file(path, FS, PlainTextParams(split="paragraphs", min_text_chars=20), ctx))
    kept, rejected = _collect(outs)
    assert len(outs) > 1 and kept.num_rows > 1000
    ids = kept.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert rejected is not None and set(rejected.column("reason").to_pylist()) == {"too_short"}
    stats = ctx.stats.as_dict()
    assert stats["plain.docs"] == kept.num_rows and stats["plain.too_short"] == rejected.num_rows
    # botchan.txt has no blank lines at all, so each line counts as a paragraph
    assert stats["plain.one_paragraph_per_line"] == 1


def test_paragraphs_split_on_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"First para\nstill first.\r\n\r\nSecond.\n \t\nThird\n\n\n")
    kept, rejected = _collect(list(read_plain_file(str(path), FS, PlainTextParams(split="paragraphs"), TaskContext())))
    assert rejected is None
    assert kept.column("text").to_pylist() == ["First para\nstill first.", "Second.", "Third"]
    assert [json.loads(m)["index"] for m in kept.column("metadata").to_pylist()] == [0, 1, 2]
    assert split_paragraphs("a\nb") == ["a", "b"] and split_paragraphs(" \n ") == []


def test_invalid_utf8_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    ctx = TaskContext()
    kept, rejected = _collect(list(read_plain_file(str(path), FS, PlainTextParams(), ctx)))
    assert kept.num_rows == 0
    assert rejected is not None and rejected.column("reason").to_pylist() == ["decode_error"]
    assert "can't decode" in rejected.column("detail")[0].as_py()
    assert ctx.stats.as_dict()["plain.decode_error"] == 1
    # the same bytes read fine with the right encoding
    kept, _ = _collect(list(read_plain_file(str(path), FS, PlainTextParams(encoding="latin-1"), TaskContext())))
    assert kept.column("text").to_pylist() == ["caf\u00e9 cr\u00e8me"]


def test_empty_file_is_too_short(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    kept, rejected = _collect(list(read_plain_file(str(path), FS, PlainTextParams(), TaskContext())))
    assert kept.num_rows == 0 and rejected is not None
    assert rejected.column("reason").to_pylist() == ["too_short"]
