"""MinHash signatures, LSH parameters and band keys (arcforge.dedup.minhash) on real prose:
Python's bundled documentation (pydoc_data) and the demo corpus' Chinese documents."""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import datasketch
import numpy as np
import pyarrow as pa
import pytest
from datasketch.lsh import _optimal_param
from pydoc_data.topics import topics

from arcforge.dedup.minhash import (
    band_keys,
    batch_shingles,
    datasketch_signatures,
    jaccard,
    lsh_params,
    minhash,
    permutations,
    shingle_hashes,
    shingles,
    signatures,
)

MULTILINGUAL = Path.home() / ".cache/arcforge/demo-corpus/3/multilingual/heldout.jsonl.gz"


def _paragraphs(min_words: int = 40) -> list[str]:
    out = []
    for key in sorted(topics):
        for p in topics[key].split("\n\n"):
            if len(p.split()) >= min_words:
                out.append(p)
    return out


PARAS = _paragraphs()
DOCS = [topics[k] for k in sorted(topics)[:60]] + ["", "word", None, "Two words."]


def _reference_shingles(text: str | None, n: int = 5) -> list[str]:
    """The docstring's rule, in plain Python: NFKC, lower, non-(L, M, N) runs split words."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in text)
    words = text.split()
    if not words:
        return []
    if len(words) < n:
        return [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _chinese_docs() -> list[str]:
    if not MULTILINGUAL.exists():
        pytest.skip("demo corpus not generated")
    with gzip.open(MULTILINGUAL, "rt") as f:
        docs = [json.loads(line)["text"] for line in f]
    zh = [d for d in docs if len(re.findall(r"[\u4e00-\u9fff]", d)) > 30 and not re.search(r"[\u3040-\u30ff]", d)]
    assert len(zh) >= 5
    return zh[:20]


# --- shingles -------------------------------------------------------------------------


def test_shingle_rules():
    assert shingles("Ｈｅｌｌｏ, World!  Ça   va? — fine_thanks 42.", ngram=3) == [
        "hello world ça",
        "world ça va",
        "ça va fine",
        "va fine thanks",
        "fine thanks 42",
    ]
    assert shingles("", ngram=5) == []
    assert shingles(" \n\t ...!? ", ngram=5) == []
    assert shingles("Word.", ngram=5) == ["word"]
    assert shingles("Three short words", ngram=5) == ["three short words"]
    assert shingles("exactly five words here now", ngram=5) == ["exactly five words here now"]
    assert shingles("Keep Case, please", ngram=2, normalize=False) == ["Keep Case,", "Case, please"]
    lists = batch_shingles(["", None, "one", "a b c d e f"], ngram=5).to_pylist()
    assert lists == [[], [], ["one"], ["a b c d e", "b c d e f"]]


def test_shingles_match_the_stated_rule_on_real_prose():
    got = batch_shingles(DOCS, ngram=5).to_pylist()
    assert got == [_reference_shingles(d) for d in DOCS]
    assert sum(map(len, got)) > 10_000
    assert batch_shingles(pa.chunked_array([DOCS[:10], DOCS[10:20]]), 3).to_pylist() == [
        _reference_shingles(d, 3) for d in DOCS[:20]
    ]


def test_cjk_text_is_shingled_by_characters():
    zh = _chinese_docs()
    got = batch_shingles(zh, ngram=5).to_pylist()
    for doc, sh in zip(zh, got):
        chars = [c for c in unicodedata.normalize("NFKC", doc).lower() if unicodedata.category(c)[0] in "LMN"]
        assert sh == ["".join(chars[i : i + 5]) for i in range(len(chars) - 4)]
        assert all(" " not in s for s in sh)
    # a short CJK document is one shingle of its characters; an English one in the same batch keeps words
    mixed = batch_shingles([zh[0][:3], PARAS[0], "日本語。"], ngram=5).to_pylist()
    assert mixed[0] == ["".join(c for c in zh[0][:3] if unicodedata.category(c)[0] in "LMN")]
    assert mixed[1] == _reference_shingles(PARAS[0])
    assert mixed[2] == ["日本語"]
    # forcing the mode
    assert shingles("日本語の 文章です", ngram=2, cjk=False) == ["日本語の 文章です"]
    assert shingles("ab cd", ngram=3, cjk=True) == ["abc", "bcd"]


# --- datasketch-exact signatures -------------------------------------------------------


@pytest.mark.parametrize("scheme", ["affine32", "legacy", "affine64"])
@pytest.mark.parametrize(("num_perm", "seed"), [(16, 1), (128, 1), (256, 42), (64, 7)])
def test_datasketch_signatures_equal_datasketch(num_perm, seed, scheme):
    docs = DOCS[:25] + ["", "one"]
    sh = batch_shingles(docs, ngram=5).to_pylist()
    got = datasketch_signatures(sh, num_perm=num_perm, seed=seed, scheme=scheme)
    ref = []
    for doc in sh:
        m = datasketch.MinHash(num_perm, seed, scheme=scheme)
        for s in doc:
            m.update(s.encode("utf8"))
        ref.append(m.hashvalues)
    ref = np.array(ref)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    empty = datasketch.MinHash(num_perm, seed, scheme=scheme).hashvalues
    np.testing.assert_array_equal(got[sh.index([])], empty)
    a, b = permutations(num_perm, seed, scheme)
    np.testing.assert_array_equal(np.array([a, b]), datasketch.MinHash(num_perm, seed, scheme=scheme).permutations)


def test_datasketch_default_is_affine32():
    sh = batch_shingles(DOCS[:5]).to_pylist()
    ref = []
    for doc in sh:
        m = datasketch.MinHash(128, 1)
        m.update_batch([s.encode("utf8") for s in doc])
        ref.append(m.hashvalues)
    np.testing.assert_array_equal(datasketch_signatures(sh), np.array(ref))
    np.testing.assert_array_equal(datasketch_signatures(batch_shingles(DOCS[:5])), np.array(ref))


# --- the fast path ---------------------------------------------------------------------


def test_fast_path_is_datasketch_affine64_over_its_shingle_hashes():
    docs = DOCS[:30]
    hv, offsets = shingle_hashes(docs)
    sh = batch_shingles(docs).to_pylist()
    assert np.diff(offsets).tolist() == [len(s) for s in sh]
    table: dict[bytes, int] = {}
    for s, h in zip((s for doc in sh for s in doc), hv.tolist()):
        assert table.setdefault(s.encode("utf8"), h) == h  # one hash per shingle string
    assert len(set(table.values())) == len(table)  # and no collisions on real prose
    sig = signatures(docs, num_perm=96, seed=3)
    for i, doc in enumerate(sh):
        m = datasketch.MinHash(96, 3, scheme="affine64", hashfunc=table.__getitem__)
        m.update_batch([s.encode("utf8") for s in doc])
        np.testing.assert_array_equal(sig[i], m.hashvalues)
    np.testing.assert_array_equal(minhash(hv, offsets, 96, 3), sig)


def _edit(words: list[str], rng: random.Random, rate: float) -> list[str]:
    out = list(words)
    for i in range(len(out)):
        r = rng.random()
        if r < rate / 2:
            out[i] = rng.choice(words) + "x"
        elif r < rate:
            out[i] = ""
    return [w for w in out if w]


def test_fast_signatures_estimate_jaccard_as_well_as_datasketch():
    rng = random.Random(0)
    paras = [p for p in PARAS if len(p.split()) >= 80][:60]
    assert len(paras) >= 40
    a, b = [], []
    for i, p in enumerate(paras):
        words = p.split()
        a.append(" ".join(words))
        b.append(" ".join(_edit(words, rng, rate=(0.01, 0.03, 0.06, 0.12)[i % 4])))
    sa, sb = batch_shingles(a).to_pylist(), batch_shingles(b).to_pylist()
    true = np.array([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(sa, sb)])
    assert true.min() < 0.3 and true.max() > 0.9 and np.median(true) < 0.8  # a spread of similarities
    fast = jaccard(signatures(a, num_perm=128), signatures(b, num_perm=128))
    ds = jaccard(datasketch_signatures(sa, 128), datasketch_signatures(sb, 128))
    err_fast, err_ds = np.abs(fast - true).mean(), np.abs(ds - true).mean()
    # one estimate with 128 permutations has sd sqrt(J(1-J)/128) <= 0.044
    assert err_fast < 0.045, err_fast
    assert err_fast < err_ds + 0.015, (err_fast, err_ds)
    assert abs((fast - true).mean()) < 0.02  # unbiased
    unrelated = jaccard(signatures(a[:20], num_perm=128), signatures(a[20:40], num_perm=128))
    assert unrelated.max() < 0.1


def test_batch_splits_give_the_same_signatures():
    docs = DOCS + [PARAS[3], "日本語の文章です。これは試験です。"]
    whole = signatures(docs, num_perm=64, seed=5)
    for k in (1, 17, len(docs) // 2, len(docs) - 1):
        halves = [signatures(docs[:k], num_perm=64, seed=5), signatures(docs[k:], num_perm=64, seed=5)]
        np.testing.assert_array_equal(whole, np.vstack(halves))
    order = list(range(len(docs)))[::-1]
    np.testing.assert_array_equal(whole[order], signatures([docs[i] for i in order], num_perm=64, seed=5))
    sh = batch_shingles(docs).to_pylist()
    halves = [datasketch_signatures(sh[:9], 64, 5), datasketch_signatures(sh[9:], 64, 5)]
    np.testing.assert_array_equal(datasketch_signatures(sh, 64, 5), np.vstack(halves))
    # empty documents: the empty signature; a one-word document: a real one, equal to its duplicate's
    assert (whole[DOCS.index("")] == np.iinfo(np.uint64).max).all()
    assert (whole[DOCS.index(None)] == np.iinfo(np.uint64).max).all()
    one = signatures(["word", "Word!", "other"], num_perm=64, seed=5)
    assert (one[0] < np.iinfo(np.uint64).max).all()
    np.testing.assert_array_equal(one[0], one[1])
    assert jaccard(one[0], one[2]) < 0.2
    assert signatures([], num_perm=8).shape == (0, 8)


# --- LSH parameters and band keys --------------------------------------------------------


@pytest.mark.parametrize("num_perm", [64, 128, 256])
def test_lsh_params_equal_datasketch(num_perm):
    for t in np.round(np.arange(0.5, 0.951, 0.05), 2):
        assert lsh_params(float(t), num_perm) == _optimal_param(float(t), num_perm, 0.5, 0.5), t
    assert lsh_params(0.7, num_perm, 0.2, 0.8) == _optimal_param(0.7, num_perm, 0.2, 0.8)


def test_lsh_params_run_without_datasketch():
    code = (
        "import sys; sys.modules['datasketch'] = None\n"
        "from arcforge.dedup.minhash import lsh_params; print(lsh_params(0.85, 64))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(_optimal_param(0.85, 64, 0.5, 0.5))


def test_band_keys():
    docs = [PARAS[0], PARAS[0].replace(" the ", " a ", 1), PARAS[1], PARAS[0]]
    sig = signatures(docs, num_perm=128)
    bands, rows = lsh_params(0.8, 128)
    keys = band_keys(sig, bands, rows)
    assert keys.shape == (4, bands) and keys.dtype == np.uint64
    np.testing.assert_array_equal(keys[0], keys[3])
    same_band = (sig[0, : bands * rows].reshape(bands, rows) == sig[1, : bands * rows].reshape(bands, rows)).all(axis=1)
    np.testing.assert_array_equal(keys[0] == keys[1], same_band)
    assert same_band.any()  # the near duplicate shares a bucket
    assert not (keys[0] == keys[2]).any()  # an unrelated paragraph shares none
    # the band index is part of the key: equal values in two bands give two keys
    flat = np.zeros((1, 8), np.uint64)
    k = band_keys(flat, 2, 4)
    assert k[0, 0] != k[0, 1]
    # uint32 signatures (datasketch affine32) work too, and one changed value changes one key
    ds = datasketch_signatures(batch_shingles(docs[:1]), 32)
    ds2 = ds.copy()
    ds2[0, 5] ^= 1
    assert (band_keys(ds, 8, 4) != band_keys(ds2, 8, 4)).tolist() == [[False, True] + [False] * 6]
    with pytest.raises(ValueError):
        band_keys(sig, 20, 7)


def test_band_keys_are_equal_across_processes():
    code = (
        "import numpy as np\n"
        "from pydoc_data.topics import topics\n"
        "from arcforge.dedup.minhash import band_keys, signatures\n"
        "docs = [topics[k] for k in sorted(topics)[:8]]\n"
        "print(band_keys(signatures(docs, num_perm=64), 8, 8).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    here = band_keys(signatures([topics[k] for k in sorted(topics)[:8]], num_perm=64), 8, 8)
    assert json.loads(out) == here.tolist()


def test_chunked_minhash_equals_a_direct_computation():
    """Batches larger than one block (many documents, and one document longer than a block)
    against the plain definition: min over shingles of a * fmix64(h) + b mod 2^64."""
    from arcforge.dedup.shingles import fmix64

    big = " ".join(topics[k] for k in sorted(topics))
    docs = DOCS + [big, PARAS[0]]
    hv, offsets = shingle_hashes(docs)
    import arcforge.dedup.minhash as mh

    block = mh._CHUNK // mh._STEP  # shingles per block
    assert np.diff(offsets).max() > 2 * block and len(hv) - np.diff(offsets).max() > 2 * block
    sig = minhash(hv, offsets, num_perm=24, seed=9)
    a, b = permutations(24, 9, "affine64")
    with np.errstate(over="ignore"):
        for i in range(len(docs)):
            h = fmix64(hv[offsets[i] : offsets[i + 1]])
            if len(h):
                want = (h[:, None] * a[None, :] + b[None, :]).min(axis=0)
            else:
                want = np.full(24, np.iinfo(np.uint64).max)
            np.testing.assert_array_equal(sig[i], want, err_msg=str(i))
