"""``arcforge funnel``: documents and tokens per stage, drops per reason, tokens per bucket."""

from __future__ import annotations

from collections import Counter

import pytest
from test_tokenizer import shared_run

from arcforge.cli import main
from arcforge.runtime.dataset import DatasetRef, read_dataset
from arcforge.tokenize.funnel import count_tokens, funnel, render
from arcforge.tokenize.spm import Tokenizer


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_corpus):
    _, run, _ = shared_run(tmp_path_factory, demo_corpus, ["shards"])
    return run


def test_tokens_per_stage_and_reason_are_the_tokenizers_counts(run):
    tok = Tokenizer.load(str(run / "tokenizer"))
    rows, buckets, tok_stage = funnel(str(run))
    assert tok_stage == "tokenizer"
    by_name = {r.name: r for r in rows}
    assert {"web", "wiki", "books", "docs"} <= set(by_name) and "tokenizer" not in by_name and "shards" not in by_name
    web = by_name["web"]
    texts = read_dataset(DatasetRef(str(run / "web")), ["text"]).column("text").to_pylist()
    assert web.docs_out == len(texts) and not web.tokens_out.estimated
    assert web.tokens_out.tokens == sum(len(tok.encode(t)) for t in texts) > 0
    rejected = read_dataset(DatasetRef(str(run / "web" / "rejected")), ["text", "reason"]).to_pylist()
    assert web.dropped == dict(Counter(r["reason"] for r in rejected)) and web.dropped
    for reason, count in web.dropped_tokens.items():
        assert count.tokens == sum(len(tok.encode(r["text"] or "")) for r in rejected if r["reason"] == reason)
    # tokens per bucket: the shards stage's own rows, summed by (source, bucket)
    shard_rows = read_dataset(DatasetRef(str(run / "shards"))).to_pylist()
    expected = Counter()
    for r in shard_rows:
        expected[(r["source"], r["bucket"] or "-")] += r["tokens"]
    assert buckets["shards"] == dict(expected)
    assert any(b != "-" for _, b in expected), "the shared run has bucketed sources"
    text = "\n".join(render(rows, buckets, tok_stage))
    assert "tokens per bucket (shards; 0 = lowest quality)" in text and "| bucket | " in text and "| all |" in text


def test_large_datasets_are_sampled_and_marked(run):
    tok = Tokenizer.load(str(run / "tokenizer"))
    exact = count_tokens(tok, DatasetRef(str(run / "wiki")))[None]
    sampled = count_tokens(tok, DatasetRef(str(run / "wiki")), exact_mb=1e-6)[None]
    assert not exact.estimated and sampled.estimated and sampled.render().startswith("≈")
    assert 0 < sampled.tokens  # an estimate from every k-th part, scaled by bytes


def test_cli_prints_the_funnel(run, capsys):
    assert main(["funnel", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| stage | docs in | docs out | tokens out |" in out and "| wiki |" in out
