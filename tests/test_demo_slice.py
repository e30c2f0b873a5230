"""The first end-to-end slice on the real demo corpus, on real Spark and Ray."""

from __future__ import annotations

import json
import subprocess
import sys

from arcforge.runtime import dataset
from arcforge.runtime.dataset import DatasetRef


def test_every_document_is_kept_or_rejected_with_a_reason(demo_run):
    run, results = demo_run
    for name, r in results.items():
        st = r.manifest["stats"]
        if r.manifest["kind"] == "artifact":
            continue
        if name.startswith("shards"):  # its rows describe shard sets; documents are counted apart
            assert st["docs_in"] == st["shard.documents"] + st.get("shard.empty_docs", 0), name
            continue
        drops = sum(v for k, v in st.items() if k.startswith("dropped."))
        assert st["docs_in"] == st["docs_out"] + drops, name
        assert st["docs_out"] == r.manifest["rows"]
        rejected = dataset.read_manifest(DatasetRef(str(run / name / "rejected")))
        assert rejected["rows"] == drops, name


def test_extract_quarantines_bad_records_and_reports_the_corrupt_warc(demo_run):
    run, results = demo_run
    extract = results["extract"].manifest
    assert extract["rows"] >= 20
    # pywb's example.warc has a request record 2 bytes short, bad.arc two broken ARC lengths
    assert extract["stats"]["dropped.damaged_range"] == 1
    assert extract["stats"]["dropped.length_mismatch"] == 2
    assert any("example.warc" in e and "damaged bytes 4061-4771" in e for e in extract["errors"])
    rejected = dataset.read_dataset(DatasetRef(str(run / "extract" / "rejected")))
    reasons = set(rejected.column("reason").to_pylist())
    assert {"damaged_range", "length_mismatch", "no_http_headers", "non_html", "http_status"} <= reasons
    # the whole-file-gzipped sample (example-bad.warc.gz.bad) is read to its end now
    urls = {json.loads(m)["warc_file"] for m in dataset.read_dataset(DatasetRef(str(run / "extract")), ["metadata"]).column("metadata").to_pylist()}
    assert "example-bad.warc.gz.bad" in urls
    kept = dataset.read_dataset(DatasetRef(str(run / "extract")))
    assert all(len(t) >= 20 for t in kept.column("text").to_pylist())
    assert all(u.startswith("http") for u in kept.column("url").to_pylist())


def test_dedup_unions_sources_and_drops_exact_copies(demo_run):
    run, results = demo_run
    dedup = results["dedup"].manifest
    assert dedup["stats"]["docs_in"] == sum(results[s].manifest["rows"] for s in ("extract", "wiki", "books", "docs", "multilingual"))
    assert dedup["stats"]["dropped.exact_duplicate"] >= 1  # pywb's samples repeat pages across files
    kept = dataset.read_dataset(DatasetRef(str(run / "dedup")))
    from arcforge.dedup.exact import normalize_text

    norm = [normalize_text(t) for t in kept.column("text").to_pylist()]
    assert len(norm) == len(set(norm))
    assert set(kept.column("source").to_pylist()) == {"web", "wikipedia", "books", "docs", "multilingual"}


def test_near_and_semantic_dedup_run_on_the_demo(demo_run):
    """MinHash: every document carries its cluster, the docutils menu-bar include files are near
    copies; SemDeDup embeds only the English rows and reports its similarity distribution."""
    import pyarrow.compute as pc

    run, results = demo_run
    near = results["near_dedup"].manifest["stats"]
    assert near["minhash.docs"] == results["dedup"].manifest["rows"] and near["dropped.near_duplicate"] >= 1
    kept = dataset.read_dataset(DatasetRef(str(run / "near_dedup")), ["id", "dup_cluster", "dup_cluster_size"])
    assert kept.column("dup_cluster").null_count == 0 and pc.min(kept.column("dup_cluster_size")).as_py() >= 1
    removed = dataset.read_dataset(DatasetRef(str(run / "near_dedup" / "rejected")), ["id", "detail"]).to_pylist()
    assert {"header.txt"} <= {r["id"] for r in removed} and all(r["detail"].startswith("duplicate_of=") for r in removed)
    sem = results["semantic"].manifest["stats"]
    table = dataset.read_dataset(DatasetRef(str(run / "semantic")), ["language", "sem_cluster"])
    english = pc.equal(table.column("language"), "en")
    assert sem["semantic.docs"] == pc.sum(english).as_py() > 0
    assert table.filter(pc.invert(english)).column("sem_cluster").null_count == table.num_rows - sem["semantic.docs"]
    assert "semantic.sim_ge_0.90" in sem


def test_langid_labels_every_document_and_the_filter_selects(demo_run, spark):
    run, results = demo_run
    scored = dataset.read_dataset(DatasetRef(str(run / "langid")))
    assert results["langid"].manifest["stats"].get("dropped", 0) == 0  # scoring only adds attributes
    assert scored.num_rows == results["train_pool"].manifest["rows"] and scored.column("language").null_count == 0
    kept = dataset.read_dataset(DatasetRef(str(run / "select")))
    assert set(kept.column("language").to_pylist()) <= {"en", "zh", "ja", "de"}
    assert {"zh", "ja", "de"} <= set(kept.column("language").to_pylist())  # the multilingual input
    assert kept.column("language").to_pylist().count("en") >= 100
    assert min(kept.column("language_score").to_pylist()) >= 0.4
    assert results["langid"].manifest["stats"]["language.en"] >= 100
    low = [s for lang, s in zip(scored.column("language").to_pylist(), scored.column("language_score").to_pylist())
           if lang in ("en", "zh", "ja", "de") and s < 0.4]
    assert results["select"].manifest["stats"].get("dropped.low_language_score", 0) == len(low)
    # the parts open directly in Spark with the declared schema
    frame = spark.read.parquet(str(run / "langid" / "part-*.parquet"))
    assert frame.count() == results["langid"].manifest["rows"]
    assert {"id", "text", "source", "url", "language", "metadata", "language_score"} <= set(frame.columns)
    meta = json.loads(kept.column("metadata")[0].as_py())
    assert isinstance(meta, dict)


def test_inspect_and_status_cli(demo_run):
    run, results = demo_run
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "inspect", str(run / "langid"), "-n", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"{results['langid'].manifest['rows']:,} rows" in out.stdout
    assert "language_score: float" in out.stdout
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "status", str(run)], capture_output=True, text=True, timeout=120)
    # one table row per stage (a "stale: ... since it was committed" line may follow when a test
    # re-fetched a corpus file after this session's run)
    assert out.returncode == 0 and out.stdout.count("│ committed │") == len(results) == 20
    assert "cut-offs quality_fasttext:" in out.stdout and "cut-offs quality_edu:" in out.stdout


def test_demo_ends_with_a_tokenizer_and_shards_megatron_can_read(demo_run):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    run, results = demo_run
    tok = results["tokenizer"].manifest
    assert tok["kind"] == "artifact" and {f["name"] for f in tok["files"]} >= {"tokenizer.model", "tokenizer.json"}
    shards = dataset.read_dataset(DatasetRef(str(run / "shards")))
    assert sum(shards.column("documents").to_pylist()) == results["buckets"].manifest["rows"]
    assert set(shards.column("bucket").to_pylist()) <= {str(b) for b in range(20)}  # shards per source and bucket
    prefix = str(run / "shards" / shards.column("prefix")[0].as_py())
    ds = IndexedDataset(prefix)
    assert len(ds) == shards.column("documents")[0].as_py()
    assert int(ds[0][-1]) == 2  # every document ends with <|endoftext|>
