"""text.stats: vectorised measures that equal their plain-Python definitions."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from arcforge.pipelines.web.textstats import FIELDS, add_text_stats, text_stats
from arcforge.runtime.stage import NoParams, TaskContext


def python_stats(text: str) -> dict[str, float]:
    """The definitions, written the obvious way (as datatrove's and Gopher's filters compute them)."""
    words = text.split()
    lines = [line for line in text.splitlines() if line.strip()]
    n = len(text)
    return {
        "n_chars": n,
        "n_words": len(words),
        "n_lines": len(lines),
        "mean_word_length": sum(map(len, words)) / len(words) if words else 0.0,
        "frac_alpha_chars": sum(c.isalpha() for c in text) / n if n else 0.0,
        "frac_digit_chars": sum(c.isdecimal() for c in text) / n if n else 0.0,
        "hash_word_ratio": sum(w.startswith("#") for w in words) / len(words) if words else 0.0,
        "frac_lines_ellipsis": sum(line.strip().endswith(("...", "…")) for line in lines) / len(lines) if lines else 0.0,
    }


EDGE = ["", " ", "\n\n", "one", "  two  words \n", "#tag #tag plain", "wait...\nno…\r\nyes\x85x",
        "数字１２３ and ٣ digits", "tab\tsep\u00a0nbsp\u3000ideographic", "e\u0301 combining"]


def _texts(demo_corpus: Path) -> list[str]:
    with gzip.open(demo_corpus / "jsonl" / "docutils-docs.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    book = (demo_corpus / "books" / "botchan.txt").read_text(encoding="utf-8")
    return EDGE + docs + book.split("\n\n")


def test_every_measure_equals_its_python_definition_on_real_text(demo_corpus: Path):
    texts = _texts(demo_corpus)
    got = text_stats(pa.array(texts))
    assert list(got) == [f.name for f in FIELDS]
    for name, values in got.items():
        want = np.array([python_stats(t)[name] for t in texts], dtype=float)
        bad = np.flatnonzero(~np.isclose(values.astype(float), want))
        assert not len(bad), f"{name}: {len(bad)} differ, first {texts[bad[0]][:80]!r}: {values[bad[0]]} != {want[bad[0]]}"


def test_the_stage_adds_its_declared_columns_once():
    batch = pa.RecordBatch.from_pydict({"id": ["a", "b"], "text": ["hello world", "#x"]})
    out = add_text_stats(batch, NoParams(), TaskContext())
    again = add_text_stats(out.kept.to_batches()[0], NoParams(), TaskContext())  # re-scoring replaces, never appends
    assert again.kept.column_names == ["id", "text", *[f.name for f in FIELDS]]
    assert again.kept.column("n_words").to_pylist() == [2, 1]
    assert again.kept.column("hash_word_ratio").to_pylist() == pytest.approx([0.0, 1.0])
