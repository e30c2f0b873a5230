"""arcforge.dedup.planted: a labelled near-duplicate set planted in real text."""

from __future__ import annotations

import random
from itertools import combinations

import numpy as np
import pytest

from arcforge.dedup.planted import BOILERPLATE, COPIES, demo_documents, edit, jaccard_pairs, planted_set
from arcforge.dedup.shingles import shingles


def _real_docs(n: int) -> list[tuple[str, str]]:
    try:
        return demo_documents(n, max_words=600)
    except (OSError, ValueError):  # no demo corpus here: stand-in paragraphs of varied text
        rng = random.Random(0)
        vocab = [f"w{i}" for i in range(3000)]
        return [(f"d{k}", "\n\n".join(" ".join(rng.choice(vocab) for _ in range(40)) for _ in range(8)))
                for k in range(n)]


@pytest.fixture(scope="module")
def docs():
    return _real_docs(24)


@pytest.fixture(scope="module")
def planted(docs):
    return planted_set(docs, seed=3, copies_per_doc=len(COPIES) // 3)


def _jaccard(a: str, b: str) -> float:
    sa, sb = set(shingles(a, 5)), set(shingles(b, 5))
    return len(sa & sb) / len(sa | sb)


def test_deterministic(docs, planted):
    again = planted_set(docs, seed=3, copies_per_doc=len(COPIES) // 3)
    assert again.docs == planted.docs and again.pairs == planted.pairs and again.meta == planted.meta
    other = planted_set(docs, seed=4, copies_per_doc=len(COPIES) // 3)
    assert other.docs != planted.docs


def test_contents(docs, planted):
    ids = [i for i, _ in planted.docs]
    assert len(ids) == len(set(ids)) == len(docs) * (1 + len(COPIES) // 3)
    assert ids != sorted(ids, key=lambda i: (planted.meta[i][0], i))  # shuffled
    texts = dict(planted.docs)
    for i, t in docs:
        assert texts[i] == t and planted.meta[i] == (i, "original", 0.0)
    for cid, (oid, kind, rate) in planted.meta.items():
        if kind != "original":
            assert (kind, rate) in COPIES and texts[cid] != texts[oid]
            if kind == "boilerplate":
                assert any(b in texts[cid] for b in BOILERPLATE)


def test_true_jaccard_matches_brute_force(planted):
    texts = dict(planted.docs)
    sample = random.Random(0).sample(sorted(planted.pairs), 8)
    for a, b in sample:
        assert planted.pairs[(a, b)] == pytest.approx(_jaccard(texts[a], texts[b]), abs=1e-12)
    # every copy against its original, found or not
    for cid, (oid, kind, _) in list(planted.meta.items())[:40]:
        if kind != "original":
            j = _jaccard(texts[cid], texts[oid])
            assert planted.pairs.get(tuple(sorted((cid, oid))), 0.0) == pytest.approx(j if j > 0.05 else 0.0)
    hi = planted.true_pairs(0.8)
    assert hi and all(j >= 0.8 for j in hi.values()) and set(hi) <= set(planted.pairs)


def test_index_finds_every_pair_of_a_small_set(docs):
    texts = [t for _, t in docs[:6]]
    rng = np.random.default_rng(0)
    texts += [edit(t, "insert", 0.05, rng) for t in texts] + [edit(texts[0], "delete", 0.2, rng)]
    got = {(i, j): v for i, j, v in jaccard_pairs(texts, 5, 0.0)}
    for i, j in combinations(range(len(texts)), 2):
        want = _jaccard(texts[i], texts[j])
        assert got.get((i, j), 0.0) == pytest.approx(want)


def test_copies_span_the_thresholds(planted):
    js = []
    texts = dict(planted.docs)
    for cid, (oid, kind, _) in planted.meta.items():
        if kind != "original":
            js.append(planted.pairs.get(tuple(sorted((cid, oid))), _jaccard(texts[cid], texts[oid])))
    js = np.array(js)
    assert js.min() < 0.6 and js.max() > 0.95
    for lo, hi in [(0.3, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0)]:
        assert ((js >= lo) & (js < hi)).sum() >= 3, (lo, hi)


def test_edit_rates_order_the_jaccard(docs):
    text = docs[0][1]
    for kind in ("insert", "delete"):
        js = [_jaccard(text, edit(text, kind, r, np.random.default_rng(1))) for r in (0.01, 0.05, 0.15)]
        assert js[0] > js[1] > js[2]
    moved = edit(text, "reorder", 1.0, np.random.default_rng(1))
    assert sorted(moved.split()) == sorted(text.split())
    with pytest.raises(ValueError):
        edit(text, "nope", 0.1, np.random.default_rng(1))


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError):
        planted_set([("a", "x y z"), ("a", "p q r")])
