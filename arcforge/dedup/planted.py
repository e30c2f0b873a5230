"""A labelled near-duplicate set made from real text: edited copies planted at known rates.

``planted_set(docs)`` takes real ``(id, text)`` documents and adds edited copies of each, so
a fuzzy-dedup method can be scored against the *true* 5-gram Jaccard of every pair (the
shingle sets of ``arcforge.dedup.shingles.shingles(text, 5)``), not against a guess.

Why each edit kind exists:

* ``insert`` -- words drawn from the document's own vocabulary inserted at rate ``r`` per
  word. Each insertion breaks up to 5 shingles, so Jaccard falls roughly like
  ``(1-r)^5`` and a grid of rates walks the true Jaccard from ~1.0 down to ~0.3, across the
  0.7/0.8/0.9 thresholds (the scraped-page-with-extra-words case).
* ``delete`` -- words dropped at rate ``r``: the copy's shingles are mostly a *subset* of the
  original's (truncated or trimmed reposts), an asymmetry inserts do not exercise.
* ``reorder`` -- a fraction ``r`` of the paragraphs permuted among their positions. Only
  the shingles spanning a moved boundary change, so the words are all there but the order
  is not: long-paragraph text stays near 1.0, while reStructuredText full of short
  paragraphs (headings, code lines) drops to ~0.6-0.8 -- the case where a method's
  similarity must track the shingle *set*, not a word-count or order heuristic.
* ``boilerplate`` -- real boilerplate paragraphs (cookie banners copied from crawled pages,
  the BSD-3-Clause licence text) added until they make ``r`` of the words. The same
  paragraphs land in many *unrelated* documents, so they also create low, real overlap
  between different originals: a method must not cluster documents on shared boilerplate.

The originals keep whatever near-duplicates they already have among themselves (release
notes, licence files): the true Jaccard is computed over every pair, so those count too.
Everything is deterministic for a seed. Dependencies: numpy, stdlib, arcforge.dedup.shingles.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from arcforge.dedup.shingles import batch_shingles

# Real boilerplate, verbatim: cookie banners from pages in the trafilatura test cache of
# the demo corpus (luxuriousmagazine.com, theverge.com, phys.org) and Django's BSD-3-Clause
# licence text (Django's LICENSE file).
BOILERPLATE = (
    "We use cookies to ensure that we give you the best experience on our website. If you "
    "continue to use this site we will assume that you are happy with it.",
    "We use cookies and other tracking technologies to improve your browsing experience on our "
    "site, show personalized content and targeted ads, analyze site traffic, and understand where "
    "our audience is coming from.",
    "This site uses cookies to assist with navigation, analyse your use of our services, and "
    "provide content from third parties.",
    "Redistribution and use in source and binary forms, with or without modification, are "
    "permitted provided that the following conditions are met:",
    "1. Redistributions of source code must retain the above copyright notice, this list of "
    "conditions and the following disclaimer.",
    "2. Redistributions in binary form must reproduce the above copyright notice, this list of "
    "conditions and the following disclaimer in the documentation and/or other materials "
    "provided with the distribution.",
    "3. Neither the name of Django nor the names of its contributors may be used to endorse or "
    "promote products derived from this software without specific prior written permission.",
    'THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS '
    "OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF "
    "MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE "
    "COPYRIGHT OWNER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, "
    "EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE "
    "GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND "
    "ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING "
    "NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED "
    "OF THE POSSIBILITY OF SUCH DAMAGE.",
)

# (kind, rate): the grid the copies cycle through; rates chosen so the true Jaccard spreads
# over ~0.3..1.0 (insert/delete ~ (1-r)^5), densest around 0.7..0.9.
COPIES = (
    ("insert", 0.005), ("insert", 0.01), ("insert", 0.02), ("insert", 0.03), ("insert", 0.05), ("insert", 0.1),
    ("delete", 0.005), ("delete", 0.01), ("delete", 0.02), ("delete", 0.03), ("delete", 0.05), ("delete", 0.12),
    ("reorder", 0.3), ("reorder", 1.0),
    ("boilerplate", 0.05), ("boilerplate", 0.15), ("boilerplate", 0.4),
)  # fmt: skip


@dataclass
class PlantedSet:
    """Originals + copies (``docs``, shuffled), what each is (``meta``: id -> (original id,
    kind, rate); originals are ``(id, "original", 0.0)``) and the true Jaccard of every pair
    above ``min_jaccard`` (``pairs``: ``(id_a, id_b)`` with ``id_a < id_b`` -> Jaccard)."""

    docs: list[tuple[str, str]]
    meta: dict[str, tuple[str, str, float]]
    pairs: dict[tuple[str, str], float] = field(repr=False)
    ngram: int = 5
    min_jaccard: float = 0.05

    def true_pairs(self, threshold: float) -> dict[tuple[str, str], float]:
        """Pairs whose true Jaccard is ``>= threshold`` (``threshold > min_jaccard``)."""
        if threshold <= self.min_jaccard:
            raise ValueError(f"only pairs above {self.min_jaccard} are known")
        return {k: j for k, j in self.pairs.items() if j >= threshold}


def _paragraphs(text: str) -> list[str]:
    paras = [p for p in text.split("\n\n") if p.strip()]
    if len(paras) >= 3:
        return paras
    words = text.split()  # one-paragraph text: blocks of ~8 equal word runs instead
    k = max(1, len(words) // 8)
    return [" ".join(words[i : i + k]) for i in range(0, len(words), k)]


def edit(text: str, kind: str, rate: float, rng: np.random.Generator) -> str:
    """One edited copy of ``text`` (module docstring for the kinds)."""
    if kind in ("insert", "delete"):
        out, pos = [], 0
        vocab = text.split()
        hits = rng.random(len(vocab)) < rate
        if len(vocab) and not hits.any():  # at least one edit: a copy is never the original
            hits[rng.integers(len(vocab))] = True
        for para in text.split("\n\n"):
            words = para.split()
            hit, pos = hits[pos : pos + len(words)], pos + len(words)
            if kind == "delete":
                words = [w for w, h in zip(words, hit) if not h]
            else:
                new = rng.integers(0, len(vocab), int(hit.sum())) if vocab else []
                it = iter(new)
                words = [x for w, h in zip(words, hit) for x in ((vocab[next(it)], w) if h else (w,))]
            out.append(" ".join(words))
        return "\n\n".join(p for p in out if p)
    if kind == "reorder":
        paras = _paragraphs(text)
        k = min(len(paras), max(2, round(rate * len(paras))))
        pos = np.sort(rng.choice(len(paras), k, replace=False))
        perm = rng.permutation(pos)
        if (perm == pos).all():
            perm = np.roll(pos, 1)
        moved = list(paras)
        for p, q in zip(pos, perm):
            moved[p] = paras[q]
        return "\n\n".join(moved)
    if kind == "boilerplate":
        want, added, head, tail = rate * len(text.split()), 0, [], []
        for i in rng.permutation(len(BOILERPLATE)):
            (head if rng.random() < 0.5 else tail).append(BOILERPLATE[i])
            added += len(BOILERPLATE[i].split())
            if added >= want:
                break
        return "\n\n".join([*head, text, *tail])
    raise ValueError(f"unknown edit kind {kind!r}")


def jaccard_pairs(texts: list[str], ngram: int = 5, min_jaccard: float = 0.05) -> list[tuple[int, int, float]]:
    """``(i, j, J)`` with ``i < j`` for every pair of ``texts`` whose shingle-set Jaccard is
    ``> min_jaccard``; candidates from an inverted index (shingle -> documents), exact counts."""
    lists = batch_shingles(texts, ngram)
    offsets = lists.offsets.to_numpy().astype(np.int64)
    ids = pc.dictionary_encode(lists.flatten()).indices.to_numpy().astype(np.int64)
    n = len(texts)
    doc = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    key = np.unique(doc * (int(ids.max(initial=0)) + 1) + ids)  # distinct (doc, shingle)
    d, s = key // (int(ids.max(initial=0)) + 1), key % (int(ids.max(initial=0)) + 1)
    size = np.bincount(d, minlength=n)
    doff = np.zeros(n + 1, np.int64)
    np.cumsum(size, out=doff[1:])
    order = np.argsort(s, kind="stable")  # postings: shingle -> docs (ascending doc)
    pdocs = d[order]
    poff = np.zeros(int(s.max(initial=-1)) + 2, np.int64)
    np.cumsum(np.bincount(s, minlength=len(poff) - 1), out=poff[1:])
    out = []
    for i in range(n):
        sh = s[doff[i] : doff[i + 1]]
        starts, lens = poff[sh], poff[sh + 1] - poff[sh]
        lens_ok = lens > 1
        starts, lens = starts[lens_ok], lens[lens_ok]
        if not len(lens):
            continue
        base = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        cand = pdocs[base + np.arange(int(lens.sum()))]
        cand = cand[cand > i]
        if not len(cand):
            continue
        js, inter = np.unique(cand, return_counts=True)
        jac = inter / (size[i] + size[js] - inter)
        keep = jac > min_jaccard
        out.extend((i, int(j), float(v)) for j, v in zip(js[keep], jac[keep]))
    return out


def planted_set(
    docs: list[tuple[str, str]],
    *,
    seed: int = 0,
    copies: tuple[tuple[str, float], ...] = COPIES,
    copies_per_doc: int = 4,
    ngram: int = 5,
    min_jaccard: float = 0.05,
) -> PlantedSet:
    """Originals plus ``copies_per_doc`` edited copies of each, the ``(kind, rate)`` of the
    copies cycling through ``copies`` in a seeded order (so every edit is equally common),
    shuffled, with the true Jaccard of every pair above ``min_jaccard``."""
    ids = [i for i, _ in docs]
    if len(set(ids)) != len(ids):
        raise ValueError("document ids must be unique")
    rng = np.random.default_rng(seed)
    plan = [copies[k] for k in rng.permutation(np.arange(len(docs) * copies_per_doc) % len(copies))]
    out, meta = list(docs), {i: (i, "original", 0.0) for i in ids}
    for n, (oid, text) in enumerate(docs):
        doc_rng = np.random.default_rng([seed, n])
        for c in range(copies_per_doc):
            kind, rate = plan[n * copies_per_doc + c]
            cid = f"{oid}#{c}-{kind}-{rate:g}"
            if cid in meta:
                raise ValueError(f"copy id {cid!r} collides with an input id")
            out.append((cid, edit(text, kind, rate, doc_rng)))
            meta[cid] = (oid, kind, rate)
    out = [out[k] for k in rng.permutation(len(out))]
    texts = [t for _, t in out]
    pairs = {}
    for i, j, jac in jaccard_pairs(texts, ngram, min_jaccard):
        a, b = sorted((out[i][0], out[j][0]))
        pairs[(a, b)] = jac
    return PlantedSet(out, meta, pairs, ngram, min_jaccard)


def _truncate(text: str, max_words: int) -> str:
    paras, kept, n = text.split("\n\n"), [], 0
    for p in paras:
        w = len(p.split())
        if kept and n + w > max_words:
            break
        kept.append(p)
        n += w
    return "\n\n".join(kept)


def demo_documents(n: int, min_words: int = 100, max_words: int = 3000, corpus_dir=None) -> list[tuple[str, str]]:
    """The first ``n`` real documents of the demo corpus with ``>= min_words`` words: docutils'
    docs, then Django's docs, then (if more are needed) the Lee news corpus, one per line.
    Long ones are cut at a paragraph boundary near ``max_words`` (keeps the set fast)."""
    from pathlib import Path

    if corpus_dir is None:
        from arcforge.pipelines.demo.corpus import demo_corpus_dir

        corpus_dir = demo_corpus_dir()
    root = Path(corpus_dir)

    def rows():
        for name, rel in (("docutils", "jsonl/docutils-docs.jsonl.gz"), ("django", "sources/django-docs.jsonl.gz")):
            with gzip.open(root / rel, "rt", encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    yield f"{name}:{r['id']}", r["text"]
        lee = root / "sources/gensim-lee_background.cor"
        if lee.exists():
            for k, line in enumerate(lee.read_text(encoding="utf-8", errors="replace").splitlines()):
                yield f"lee:{k}", line

    out = []
    for did, text in rows():
        if len(out) >= n:
            break
        if len(text.split()) >= min_words:
            out.append((did, _truncate(text, max_words)))
    if len(out) < n:
        raise ValueError(f"the demo corpus has only {len(out)} documents of >= {min_words} words")
    return out
