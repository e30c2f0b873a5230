"""Fill-in-the-middle (``arcforge.tokenize.fim``): the draw, the arrangement, and the shards
stage writing FIM documents that megatron-core reads and that reassemble to their text."""

from __future__ import annotations


import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from test_tokenizer import shared_run

from arcforge.runtime.dataset import DatasetRef, read_manifest
from arcforge.tokenize.fim import FimCut, FimParams, arrange, encode_with_fim, fim_cut
from arcforge.tokenize.spm import Tokenizer

P, M, S = 4, 5, 6  # fim_prefix, fim_middle, fim_suffix


def test_the_draw_follows_the_rates_and_depends_only_on_seed_id_and_length():
    params = FimParams()
    keys = [f"doc-{i}" for i in range(4000)]
    cuts = [fim_cut(k, "x" * 300, params) for k in keys]
    fim = [c for c in cuts if c is not None]
    # binomial(4000, 0.5): 3 standard deviations are 95 documents; deterministic for this seed
    assert abs(len(fim) - 2000) < 95 and abs(sum(c.spm for c in fim) - len(fim) / 2) < 70
    assert all(0 <= c.prefix_end <= c.suffix_start <= 300 for c in fim)
    assert len({(c.prefix_end, c.suffix_start) for c in fim}) > len(fim) * 0.9  # cuts spread over the text
    assert [fim_cut(k, "y" * 300, params) for k in keys] == cuts  # the draw reads the length, not the text
    assert [fim_cut(k, "x" * 300, FimParams(seed=1)) for k in keys] != cuts
    assert fim_cut("doc-1", "", params) is None
    assert all(fim_cut(k, "abc", FimParams(rate=0)) is None for k in keys[:200])
    assert all(fim_cut(k, "abc", FimParams(rate=1, spm_rate=1)).spm for k in keys[:200])
    with pytest.raises(ValidationError):
        FimParams(rate=1.5)
    with pytest.raises(ValidationError):
        FimParams(order="psm")


def test_psm_and_spm_arrangements():
    cut = FimCut(2, 4, spm=False)
    assert cut.pieces("abcdef") == ("ab", "cd", "ef")
    ids = {"fim_prefix": P, "fim_middle": M, "fim_suffix": S}
    assert arrange(cut, [10, 11], [12], [13, 14], ids) == [P, 10, 11, S, 13, 14, M, 12]
    assert arrange(FimCut(2, 4, spm=True), [10, 11], [12], [13, 14], ids) == [P, S, 13, 14, M, 10, 11, 12]


def reassemble(ids: list[int], tok: Tokenizer) -> str:
    """The text of a FIM document (PSM or SPM, without eod), from its special ids."""
    assert ids[0] == P and ids.count(P) == ids.count(M) == ids.count(S) == 1, ids[:8]
    m = ids.index(M)
    if ids[1] == S:  # SPM: suffix, then prefix + middle
        return tok.decode(ids[m + 1 :]) + tok.decode(ids[2:m])
    s = ids.index(S)
    return tok.decode(ids[1:s]) + tok.decode(ids[m + 1 :]) + tok.decode(ids[s + 1 : m])


@pytest.fixture(scope="module")
def fim_run(tmp_path_factory, demo_corpus):
    _, run, results = shared_run(tmp_path_factory, demo_corpus, ["shards", "shards_fim"])
    return run, results, Tokenizer.load(str(run / "tokenizer"))


def test_encode_with_fim_reassembles_real_code(fim_run):
    _, _, tok = fim_run
    import inspect
    import json

    text = inspect.getsource(json)
    keys = [f"k{i}" for i in range(40)]
    encoded, counts = encode_with_fim([text] * 40, keys, tok, FimParams(rate=0.8))
    assert counts["psm"] > 0 and counts["spm"] > 0 and counts["psm"] + counts["spm"] < 40
    plain = tok.encode(text)
    for ids in encoded:
        if ids == plain:
            continue
        assert reassemble(ids, tok) == text


def test_shards_stage_writes_fim_documents_for_the_named_sources(fim_run):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    run, results, tok = fim_run
    stats = results["shards_fim"].manifest["stats"]
    fim_docs = stats["shard.fim_psm"] + stats["shard.fim_spm"]
    assert stats["shard.fim_psm"] > 0 and stats["shard.fim_spm"] > 0
    plain_rows = {(r["group"], p["partition"]): r for p in read_manifest(DatasetRef(str(run / "shards")))["parts"]
                  for r in pq.read_table(run / "shards" / p["name"]).to_pylist()}
    seen_fim = 0
    for part in read_manifest(DatasetRef(str(run / "shards_fim")))["parts"]:
        for r in pq.read_table(run / "shards_fim" / part["name"]).to_pylist():
            plain = plain_rows[(r["group"], part["partition"])]
            a, b = IndexedDataset(str(run / "shards_fim" / r["prefix"])), IndexedDataset(str(run / "shards" / plain["prefix"]))
            assert len(a) == len(b) == r["documents"]
            if r["source"] not in ("code", "docs"):  # other sources: the same bytes as without FIM
                assert (run / "shards_fim" / f"{r['prefix']}.bin").read_bytes() == (run / "shards" / f"{plain['prefix']}.bin").read_bytes()
                continue
            for i in range(len(a)):
                got, want = [int(x) for x in a[i]], [int(x) for x in b[i]]
                assert got[-1] == want[-1] == tok.eod_id
                if got == want:
                    continue
                seen_fim += 1
                assert reassemble(got[:-1], tok) == tok.decode(want[:-1])
                assert abs(len(got) - len(want) - 3) <= 8  # the three ids; pieces encoded apart differ by a few at the cuts
            assert r["tokens"] == sum(len(a[i]) for i in range(len(a)))
    assert seen_fim == fim_docs
    assert 0.3 < fim_docs / sum(r["documents"] for r in plain_rows.values() if r["source"] in ("code", "docs")) < 0.7
