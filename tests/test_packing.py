"""Best-fit packing on real documents: nothing lost, duplicated or needlessly cut."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest

from arcforge.tokenize.packing import (
    best_fit_decreasing,
    next_fit_sequences,
    pack_documents,
    plan_packing,
    split_document,
)

PAD = 3


@pytest.fixture(scope="module")
def real_docs(demo_corpus: Path) -> list[np.ndarray]:
    """Real documents as byte-level token arrays: Botchan's paragraphs, Python sources
    of installed packages, and the project's own docs; lengths from a few bytes to 40K+."""
    import json as json_mod
    import requests.models
    import requests.sessions
    import requests.utils

    from arcforge.pipelines.web.sources import split_paragraphs

    book = (demo_corpus / "books" / "botchan.txt").read_text()
    texts = split_paragraphs(book)[:400]
    texts += [inspect.getsource(m) for m in (requests.models, requests.sessions, requests.utils, json_mod)]
    texts += [p.read_text() for p in sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))]
    # token ids shifted past the pad id so a pad can never be mistaken for content
    return [np.frombuffer(t.encode(), dtype=np.uint8).astype(np.int64) + 10 for t in texts if t]


def _reassemble(plan, n_docs):  # noqa: ANN001, ANN202
    pieces: list[list] = [[] for _ in range(n_docs)]
    for b, segs in enumerate(plan.bins):
        for s in segs:
            pieces[s.doc].append((s.start, s.end, b))
    return pieces


def test_real_documents_are_packed_without_loss_duplication_or_needless_cuts(real_docs):
    seq = 2048
    lengths = [len(d) for d in real_docs]
    assert max(lengths) > 3 * seq and min(lengths) < 100  # the set exercises both paths
    plan = plan_packing(lengths, seq)
    st = plan.stats
    pieces = _reassemble(plan, len(real_docs))
    for doc, (n, segs) in enumerate(zip(lengths, pieces)):
        segs.sort()
        # the segments of each document tile it exactly: no token lost, none duplicated
        assert segs[0][0] == 0 and segs[-1][1] == n, doc
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:])), doc
        if n <= seq:
            assert len(segs) == 1, f"document {doc} fits ({n} tokens) but was cut"
        else:
            # only documents longer than a sequence are cut, into full chunks plus one remainder
            assert all(e - s == seq for s, e, _ in segs[: n // seq])
            assert len(segs) == n // seq + (n % seq > 0)
    for segs in plan.bins:
        assert sum(s.length for s in segs) <= seq
    assert st.split_docs == sum(n > seq for n in lengths)
    assert st.tokens == sum(lengths)
    assert st.pad_tokens == st.sequences * seq - st.tokens
    assert st.sequences >= math.ceil(st.tokens / seq)
    # best fit decreasing beats packing in arrival order, and wastes little on real data
    assert st.sequences <= next_fit_sequences(lengths, seq)
    assert st.efficiency > 0.97, st.as_dict()
    print(f"\npacking {st.documents} real documents at {seq}: {st.as_dict()}")


def test_packed_sequences_hold_every_token_once_and_pad_only_at_the_end(real_docs):
    seq = 4096
    seqs, st = pack_documents(real_docs, seq, PAD)
    assert len(seqs) == st.sequences
    assert all(len(s) == seq for s in seqs)
    content = np.concatenate(seqs)
    assert int((content == PAD).sum()) == st.pad_tokens
    for s in seqs:  # padding is a suffix
        nz = np.flatnonzero(s != PAD)
        assert nz[-1] == len(nz) - 1 if len(nz) else True
    # the multiset of real tokens is exactly the input's
    assert np.array_equal(np.sort(content[content != PAD]), np.sort(np.concatenate(real_docs)))
    # every document that fits appears as one contiguous run of some sequence
    joined = [s.tobytes() for s in seqs]
    for d in real_docs[:60]:
        if len(d) <= seq:
            assert sum(d.tobytes() in j for j in joined) >= 1
    unpadded, st2 = pack_documents(real_docs, seq, None)
    assert sum(len(s) for s in unpadded) == st2.tokens
    assert st2.sequences == st.sequences


def test_best_fit_decreasing_on_known_instances():
    # optimal is 2 bins; next fit in arrival order needs 3
    assert sorted(map(sorted, best_fit_decreasing([1, 5, 2, 4, 3, 3, 2], 10))) == [[0, 1, 3], [2, 4, 5, 6]]
    assert next_fit_sequences([1, 5, 2, 4, 3, 3, 2], 10) == 3
    # the last item goes to the tightest open bin (room 2), not the first that fits (room 3)
    assert best_fit_decreasing([7, 4, 4, 1], 10) == [[0], [1, 2, 3]]
    assert best_fit_decreasing([], 8) == []
    with pytest.raises(ValueError):
        best_fit_decreasing([9], 8)
    # deterministic: ties are broken by index
    assert best_fit_decreasing([3, 3, 3, 3], 6) == [[0, 1], [2, 3]]


def test_exact_fits_and_long_documents():
    plan = plan_packing([8, 8, 20, 0, 3], 8)
    st = plan.stats
    assert st.split_docs == 1  # only the 20-token document is cut: 8 + 8 + remainder 4
    assert st.full_chunks == 2 and st.sequences == 5  # 2 chunks, 2 whole docs, (4 + 3)
    assert st.pad_tokens == 1
    assert st.documents == 5 and st.tokens == 39
    assert [len(p) for p in split_document(np.arange(10), 4)] == [4, 4, 2]
    assert np.array_equal(np.concatenate(split_document(np.arange(10), 3)), np.arange(10))
