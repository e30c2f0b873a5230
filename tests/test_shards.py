"""tokenize.megatron_shards: real documents -> Megatron .bin/.idx that megatron-core reads."""

from __future__ import annotations

import hashlib
import os
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_tokenizer import shared_run

from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef, read_dataset, read_manifest
from arcforge.runtime.runner import Runner
from arcforge.runtime.stage import MapStage, NoParams, Output, TaskContext
from arcforge.tokenize.shards import SHARD_SCHEMA, group_name
from arcforge.tokenize.spm import Tokenizer


def add_bucket(batch: pa.RecordBatch, params: NoParams, ctx: TaskContext) -> Output:
    """Quality buckets stand-in: long Wikipedia articles (over 20,000 characters) "high", the others "low"."""
    texts = batch.column("text").to_pylist()
    sources = batch.column("source").to_pylist()
    buckets = [("high" if len(t) > 20_000 else "low") if s == "wikipedia" else None for t, s in zip(texts, sources)]
    table = pa.Table.from_batches([batch])
    return Output(kept=table.append_column("bucket", pa.array(buckets, pa.string())))


BUCKETS = MapStage("test.buckets", NoParams, add_bucket, adds=(pa.field("bucket", pa.string()),))

LOCAL = ["shards", "split", "shards_packed"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_corpus):
    cfg, run, results = shared_run(tmp_path_factory, demo_corpus, LOCAL)
    return cfg, run, results, Tokenizer.load(str(run / "tokenizer"))


def _open(run: Path, stage: str, prefix: str):  # noqa: ANN202
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(str(run / stage / prefix))


def _docs_by_group(run: Path) -> dict[tuple[int, str], list[str]]:
    """Input texts per (partition, group), in row order, from the input dataset's parts."""
    ref = DatasetRef(str(run / "docs"))
    out: dict[tuple[int, str], list[str]] = {}
    for part in read_manifest(ref)["parts"]:
        t = pa.parquet.read_table(run / "docs" / part["name"])
        for text, src, bucket in zip(*(t.column(c).to_pylist() for c in ("text", "source", "bucket"))):
            out.setdefault((part["partition"], group_name(src, bucket)), []).append(text)
    return out


def _rows(run: Path, stage: str) -> list[dict]:
    ref = DatasetRef(str(run / stage))
    rows = []
    for part in read_manifest(ref)["parts"]:
        for r in pa.parquet.read_table(run / stage / part["name"]).to_pylist():
            rows.append(dict(r, partition=part["partition"]))
    return rows


def test_one_shard_set_per_source_and_bucket_per_partition(built):
    _, run, results, _ = built
    manifest = results["shards"].manifest
    rows = _rows(run, "shards")
    assert {r["group"] for r in rows} == {"web", "wikipedia__high", "wikipedia__low", "books", "code", "zh", "docs"}
    assert read_dataset(DatasetRef(str(run / "shards"))).schema == SHARD_SCHEMA
    for r in rows:
        assert r["prefix"] == f"shards/{r['group']}/part-{r['partition']:05d}"
        assert r["bucket"] == (r["group"].split("__")[1] if "__" in r["group"] else None)
        assert r["dtype"] == "uint16" and r["pack_seq_length"] is None
    # every published file is in its partition's commit, with the right size and sha256
    listed = {f["name"]: f for p in manifest["parts"] for f in p["files"]}
    assert set(listed) == {r["prefix"] + ext for r in rows for ext in (".bin", ".idx")}
    for name, f in listed.items():
        data = (run / "shards" / name).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    # every input document is in exactly one shard, and the counts add up in the manifest
    docs = _docs_by_group(run)
    assert Counter({(r["partition"], r["group"]): r["documents"] for r in rows}) == Counter({k: len(v) for k, v in docs.items()})
    st = manifest["stats"]
    assert st["docs_in"] == st["shard.documents"] == results["docs"].manifest["rows"]
    assert st["shard.tokens"] == sum(r["tokens"] for r in rows)
    assert st["shard.split_docs"] == 0 and st["shard.pad_tokens"] == 0


def test_megatron_reads_every_document_back_exactly(built):
    _, run, _, tok = built
    docs = _docs_by_group(run)
    for r in _rows(run, "shards"):
        ds = _open(run, "shards", r["prefix"])
        assert ds.index.dtype == np.uint16
        assert len(ds) == r["sequences"] == r["documents"]
        assert int(ds.sequence_lengths.sum()) == r["tokens"]
        texts = docs[(r["partition"], r["group"])]
        for i, text in enumerate(texts):
            ids = ds[i]
            assert ids[-1] == tok.eod_id and tok.eod_id not in ids[:-1]
            assert tok.decode(ids[:-1]) == text, (r["group"], i)


def test_long_documents_are_split_not_dropped(built):
    _, run, results, tok = built
    whole = {(r["partition"], r["group"]): r for r in _rows(run, "shards")}
    split_rows = _rows(run, "split")
    assert results["split"].manifest["stats"]["shard.split_docs"] > 0
    for r in split_rows:
        w = whole[(r["partition"], r["group"])]
        a, b = _open(run, "shards", w["prefix"]), _open(run, "split", r["prefix"])
        long_docs = sum(int(n) > 512 for n in a.sequence_lengths)
        assert r["split_docs"] == long_docs and r["documents"] == w["documents"]
        assert r["tokens"] == w["tokens"]
        assert max(b.sequence_lengths) <= 512
        assert r["sequences"] == len(b) == sum(-(-int(n) // 512) for n in a.sequence_lengths)
        flat_a = np.concatenate([a[i] for i in range(len(a))])
        flat_b = np.concatenate([b[i] for i in range(len(b))])
        assert np.array_equal(flat_a, flat_b)  # same tokens, same order; only boundaries added
        # a cut piece does not end with end-of-document; the last piece of each document does
        assert sum(int(b[i][-1] == tok.eod_id) for i in range(len(b))) == r["documents"]


def test_packed_shards_hold_whole_documents_in_exact_length_sequences(built):
    _, run, results, tok = built
    whole = {(r["partition"], r["group"]): r for r in _rows(run, "shards")}
    st = results["shards_packed"].manifest["stats"]
    for r in _rows(run, "shards_packed"):
        w = whole[(r["partition"], r["group"])]
        a, p = _open(run, "shards", w["prefix"]), _open(run, "shards_packed", r["prefix"])
        assert r["pack_seq_length"] == 2048 and set(p.sequence_lengths.tolist()) == {2048}
        assert r["tokens"] == 2048 * r["sequences"] == r["pad_tokens"] + w["tokens"]
        seqs = [p[i] for i in range(len(p))]
        flat = np.concatenate(seqs)
        assert int((flat == tok.pad_id).sum()) == r["pad_tokens"]
        real = np.sort(flat[flat != tok.pad_id])
        assert np.array_equal(real, np.sort(np.concatenate([a[i] for i in range(len(a))])))
        blobs = [s.tobytes() for s in seqs]
        for i in range(len(a)):
            doc = a[i]
            if len(doc) <= 2048:  # a document that fits is never cut
                assert sum(doc.tobytes() in b for b in blobs) >= 1, (r["group"], i)
        assert r["split_docs"] == sum(int(n) > 2048 for n in a.sequence_lengths)
    assert st["shard.pad_tokens"] / st["shard.tokens"] < 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gloo():
    """torch.distributed on gloo, world size 1 (BlendedDataset asks for the rank), and one
    torch thread: the per-sample mask ops crawl when OpenMP threads contend on 2 cores."""
    import torch
    import torch.distributed as dist

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    owned = not dist.is_initialized()
    if owned:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group("gloo", rank=0, world_size=1)
    yield dist
    if owned:
        dist.destroy_process_group()
    torch.set_num_threads(threads)


def test_gpt_dataset_blend_over_the_shards_yields_samples(built, gloo, tmp_path):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    _, run, _, tok = built
    rows = {r["group"]: r for r in _rows(run, "shards")}
    packed = {r["group"]: r for r in _rows(run, "shards_packed")}
    prefixes = [
        str(run / "shards" / rows["wikipedia__high"]["prefix"]),
        str(run / "shards" / rows["code"]["prefix"]),
        str(run / "shards_packed" / packed["books"]["prefix"]),
    ]
    weights = [0.5, 0.2, 0.3]
    cfg = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=2048,
        blend=(prefixes, weights),
        split="100,0,0",
        tokenizer=tok.megatron_tokenizer(),
        reset_position_ids=True,
        reset_attention_mask=True,
        eod_mask_loss=True,
        path_to_cache=str(tmp_path / "megatron-cache"),
    )
    train, valid, test = BlendedMegatronDatasetBuilder(GPTDataset, [1000, 0, 0], lambda: True, cfg).build()
    assert type(train).__name__ == "BlendedDataset" and len(train) == 1000
    shares = Counter(int(train.dataset_index[i]) for i in range(len(train)))
    for k, w in enumerate(weights):
        assert abs(shares[k] / 1000 - w) < 0.01
    books = _open(run, "shards_packed", packed["books"]["prefix"])
    # Megatron maps pad ids in a sample to 0 (and masks their loss)
    sequences = {np.where(books[i] == tok.pad_id, 0, books[i]).astype(np.int64).tobytes() for i in range(len(books))}
    seen = Counter()
    picks = [i for k in range(3) for i in [j for j in range(1000) if train.dataset_index[j] == k][:40]]
    for i in picks:
        sample = train[i]
        assert sample["tokens"].shape == (2048,) and sample["labels"].shape == (2048,)
        assert int(sample["tokens"].max()) < tok.vocab_size
        ds = int(sample["dataset_id"])
        seen[ds] += 1
        if ds == 2:
            # a packed sequence is exactly one training sample at its length, never straddled
            assert sample["tokens"].numpy().astype(np.int64).tobytes() in sequences
            assert float(sample["loss_mask"][sample["labels"] == 0].sum()) == 0
    assert seen == {0: 40, 1: 40, 2: 40}


@pytest.mark.slow  # starts Spark and Ray, whose workers each import megatron-core: ~40-60 s on 2 cores
def test_engines_write_identical_shards(built, ray_local, spark):
    cfg, run, results, _ = built
    plan = load_plan(cfg)
    runner = Runner(plan)
    by = {rs.name: rs for rs in plan.stages}
    ray_res = runner.run_stage(by["shards_ray"])
    spark_res = runner.run_stage(by["shards_spark"])

    def files(manifest):  # noqa: ANN001, ANN202
        return {(p["partition"], f["name"]): f["sha256"] for p in manifest["parts"] for f in p["files"]}

    assert files(ray_res.manifest) == files(results["shards_packed"].manifest)
    assert files(spark_res.manifest) == files(results["shards"].manifest)
    assert read_dataset(DatasetRef(str(run / "shards_spark"))).equals(read_dataset(DatasetRef(str(run / "shards"))))
    assert read_dataset(DatasetRef(str(run / "shards_ray"))).equals(read_dataset(DatasetRef(str(run / "shards_packed"))))
    # committed: a re-run skips the stage
    assert Runner(load_plan(cfg)).run(only="shards_ray")[0].status == "skipped"


def test_configuration_mistakes_are_clear(built, tmp_path):
    cfg, run, _, _ = built
    text = cfg.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("params: {max_doc_tokens: 512}", "params: {max_doc_tokens: 512, pack_seq_length: 1024}"))
    with pytest.raises(ConfigError) as exc:
        load_plan(bad)
    msg = str(exc.value)
    assert msg.startswith(f"{bad}: stages[split].params") and "not both" in msg and "\n" not in msg
    no_art = tmp_path / "no_art.yaml"
    no_art.write_text(text.replace("{name: split, uses: tokenize.megatron_shards, input: docs, artifacts: {tokenizer: tokenizer},", "{name: split_no_tokenizer, uses: tokenize.megatron_shards, input: docs,"))
    plan = load_plan(no_art)
    rs = next(s for s in plan.stages if s.name == "split_no_tokenizer")
    with pytest.raises(RuntimeError, match=r"needs `artifacts: \{tokenizer:"):
        Runner(plan).run_stage(rs)
