"""dedup.minhash: the worker functions, planted near-duplicates of real documents, the same
output on every engine and partitioning, bad input, and a kill in the middle of the components."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from arcforge.dedup import lsh
from arcforge.dedup.fuzzy import MinhashParams, size_bin
from arcforge.dedup.keep import keep_columns, resolve_rule
from arcforge.dedup.shingles import shingles
from arcforge.runtime import dataset
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.globalops import canonical_sort
from arcforge.runtime.runner import Runner

# ---------------------------------------------------------------------------- worker functions


def test_bucket_edges_are_stars_from_the_smallest_id_hash_with_a_size_row():
    # two buckets of band 0 (keys 5 and 7) and a singleton bucket, rows in canonical order
    t = pa.table({"band": [0, 0, 0, 0, 1], "key": [5, 5, 5, 7, 5], "node": [30, 10, 20, 40, 10], "idh": [1, 2, 3, 9, 4]},
                 schema=lsh.BANDS)
    out = lsh.bucket_edges(canonical_sort(t, ["band", "key", "idh", "node"])).to_pylist()
    edges = sorted((r["src"], r["dst"]) for r in out if r["bucket"] == 0)
    assert edges == [(30, 10), (30, 20)]  # hub = idh 1 (node 30): k - 1 edges, not k^2
    assert [(r["src"], r["bucket"]) for r in out if r["bucket"]] == [(30, 3)]  # singletons give nothing
    sizes = lsh.bucket_sizes(pa.Table.from_pylist(out, lsh.BUCKET_EDGES), limit=2).to_pylist()
    assert sizes == [{"k": 0, "size": 3, "big": 1, "big_docs": 3}]


def test_keep_rule_prefers_quality_then_length_then_id_and_labels_by_smallest_id():
    docs = pa.table({"id": ["b", "a", "c", "d"], "text": ["x" * 10, "x" * 50, "x" * 50, "x"],
                     "quality_score": [0.9, 0.2, None, 0.9]})
    rule, missing = MinhashParams().rule(docs.schema)
    assert [n for n, _ in rule] == ["quality_score", "length", "id"] and missing == []
    keep = keep_columns(docs, rule)
    node = np.array([0, 1, (1 << 32) | 5, (1 << 32) | 6], np.int64)
    t = pa.table({"component": [0, 0, 0, 0], "node": node, "id": docs.column("id"),
                  **{f"keep_{i}": c for i, c in enumerate(keep)}})
    out = lsh.choose_keepers(canonical_sort(t, ["component", "keep_0", "keep_1", "keep_2"])).to_pylist()
    # b and d tie on quality; b is longer. a missing score ranks last (c)
    assert {r["keeper"] for r in out} == {"b"} and {r["cluster"] for r in out} == {"a"} and {r["size"] for r in out} == {4}
    assert sorted((r["partition"], r["row"]) for r in out) == [(0, 0), (0, 1), (1, 5), (1, 6)]
    # without the score column the rule falls back to length, then id (a before c)
    rule2, missing2 = MinhashParams().rule(docs.drop_columns(["quality_score"]).schema)
    assert missing2 == ["quality_score"] and [n for n, _ in rule2] == ["length", "id"]
    with pytest.raises(ValueError, match="-id|only be ascending"):
        resolve_rule(["-id"], docs.schema)
    with pytest.raises(ValueError, match="-source asks for the largest first"):
        resolve_rule(["-source"], pa.schema([("id", pa.string()), ("source", pa.string())]))


def test_short_documents_are_kept_unsigned_and_never_share_a_bucket():
    t = pa.table({"id": ["e1", "e2", "w1", "w2", "long"], "text": ["", "", "hello", "hello", "one two three four five six"]})
    rows = lsh.sign_rows(3, t, column="text", ngram=5, normalize=True, num_perm=16, seed=1, bands=4, rows=4,
                         min_tokens=5, rule=[("id", False)])
    bands = rows.filter(pa.compute.greater_equal(rows.column("band"), 0))
    docs = rows.filter(pa.compute.less(rows.column("band"), 0))
    assert docs.num_rows == 5 and docs.column("tokens").to_pylist() == [0, 0, 1, 1, 6]
    assert set(bands.column("node").to_pylist()) == {(3 << 32) | 4}  # only the long one is signed
    assert bands.num_rows == 4


def test_size_bins():
    assert [size_bin(s) for s in (2, 3, 4, 5, 8, 9, 100)] == ["0002", "0003-0004", "0003-0004", "0005-0008", "0005-0008",
                                                               "0009-0016", "0065-0128"]


def test_params_are_checked():
    with pytest.raises(ValueError, match="set both"):
        MinhashParams(bands=4)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinhashParams(bands=20, rows=10)
    assert MinhashParams(verify=False).banding() == (9, 13)  # datasketch's MinHashLSH(0.8, 128)
    assert MinhashParams().banding() == (16, 8)  # recall-weighted when pairs are verified


# ---------------------------------------------------------------------------- planted duplicates


def _real_docs(demo_corpus, n):
    with gzip.open(demo_corpus / "jsonl" / "docutils-docs.jsonl.gz", "rt") as f:
        texts = [json.loads(line)["text"] for line in f]
    return [t for t in texts if 300 <= len(t.split()) <= 3000][:n]


@pytest.fixture(scope="module")
def planted(demo_corpus, tmp_path_factory):
    """Real docutils pages and edited copies: near copies (a few words deleted, far above
    0.8) and far copies (half the paragraphs replaced, far below), plus empty and one-word
    pages; the expected clusters are the components of the true Jaccard >= 0.8 graph."""
    rng = random.Random(5)
    originals = _real_docs(demo_corpus, 24)
    docs = [(f"doc{i:02d}", t) for i, t in enumerate(originals)]
    for i, text in enumerate(originals[:16]):
        words = text.split()
        if i % 2 == 0:
            docs.append((f"doc{i:02d}-near", " ".join(w for w in words if rng.random() > 0.005)))
        else:
            docs.append((f"doc{i:02d}-near", " ".join(words + ["Cookies", "help", "us", "deliver", "our", "services."])))
        if i % 4 == 0:
            docs.append((f"doc{i:02d}-far", " ".join(words[: len(words) // 2] + originals[-1 - i // 4].split()[:200])))
    docs += [("short-a", "A short page."), ("short-b", "a short page"), ("word-a", "hello"), ("word-b", "hello")]
    rng.shuffle(docs)
    ids = [i for i, _ in docs]
    parent = {i: i for i in ids}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    sets = [set(shingles(t)) if len(t.split()) >= 5 else None for _, t in docs]
    for a in range(len(docs)):
        for b in range(a + 1, len(docs)):
            if sets[a] is not None and sets[b] is not None:
                j = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
                assert not 0.7 < j < 0.88, f"{ids[a]} {ids[b]} {j}: keep the fixture away from the threshold"
                if j >= 0.8:
                    parent[find(ids[a])] = find(ids[b])
    expected = {}
    for i in ids:
        expected.setdefault(find(i), set()).add(i)
    root = tmp_path_factory.mktemp("planted")
    for parts in (1, 3):
        d = root / f"in{parts}"
        d.mkdir()
        for p in range(parts):
            with open(d / f"part-{p}.jsonl", "w") as f:
                for i, t in docs[p::parts]:
                    f.write(json.dumps({"id": i, "text": t}) + "\n")
    return root, dict(docs), sorted(sorted(c) for c in expected.values())


def _config(root, name, inputs, engine, uses="dedup.minhash", params="{}"):
    path = root / f"{name}.yaml"
    path.write_text(f"""name: t
storage: {{root: {root / name}}}
stages:
  - {{name: read, uses: io.read, input: {{files: ["{inputs}/*.jsonl"]}}, engine: local}}
  - {{name: mh, uses: {uses}, input: read, engine: {engine}, params: {params}}}
""")
    return path


def _clusters(run):
    ref = DatasetRef(str(run / "t" / "mh"))
    kept, rej = dataset.read_dataset(ref), dataset.read_dataset(ref.rejected)
    rows = kept.select(["id", "dup_cluster", "dup_cluster_size"]).to_pylist()
    rows += rej.select(["id", "dup_cluster", "dup_cluster_size"]).to_pylist()
    by = {}
    for r in rows:
        by.setdefault(r["dup_cluster"], set()).add(r["id"])
    return kept, rej, sorted(sorted(c) for c in by.values()), {r["id"]: r for r in rows}


def test_planted_near_duplicates_give_the_expected_clusters(planted):
    root, texts, expected = planted
    Runner(load_plan(_config(root, "local3", root / "in3", "local"))).run()
    kept, rej, clusters, rows = _clusters(root / "local3")
    assert clusters == expected
    assert sum(len(c) > 1 for c in expected) >= 12  # the fixture does plant clusters
    for members in expected:
        label = min(members)
        keeper = max(members, key=lambda i: (len(texts[i]), [-ord(c) for c in i]))  # longest, then smallest id
        assert all(rows[i]["dup_cluster"] == label and rows[i]["dup_cluster_size"] == len(members) for i in members)
        assert keeper in kept.column("id").to_pylist()
    assert set(rej.column("reason").to_pylist()) == {"near_duplicate"}
    keepers = {r["id"]: r["detail"] for r in rej.select(["id", "detail"]).to_pylist()}
    for i, detail in keepers.items():
        k = detail.removeprefix("duplicate_of=")
        assert rows[k]["dup_cluster"] == rows[i]["dup_cluster"] and k in kept.column("id").to_pylist()
    # one-word and short pages (no 5-gram; io.read already drops empty ones): kept, counted, alone
    for i in ("short-a", "short-b", "word-a", "word-b"):
        assert rows[i]["dup_cluster"] == i and rows[i]["dup_cluster_size"] == 1
    manifest = dataset.read_manifest(DatasetRef(str(root / "local3" / "t" / "mh")))
    stats = manifest["stats"]
    assert stats["minhash.docs_unsigned"] == 4
    assert stats["dropped.near_duplicate"] == sum(len(c) - 1 for c in expected)
    assert stats["minhash.clusters"] == sum(len(c) > 1 for c in expected)
    assert sum(v for k, v in stats.items() if k.startswith("minhash.cluster_size.")) == stats["minhash.clusters"]
    report = json.loads((root / "local3" / "t" / "mh" / "minhash.json").read_text())
    assert report["counters"]["verified_pairs"] <= report["counters"]["candidate_pairs"]


def test_inspect_shows_cluster_sizes_and_members(planted, capsys):
    from arcforge.cli import main

    root, texts, expected = planted
    run = root / "local3i"
    Runner(load_plan(_config(root, "local3i", root / "in3", "local"))).run()
    assert main(["inspect", str(run / "t" / "mh"), "-n", "0", "--clusters", "2"]) == 0
    out = capsys.readouterr().out
    pairs = sum(len(c) == 2 for c in expected)
    assert f"duplicate clusters by size (clusters): 2: {pairs}" in out
    shown = [line for line in out.splitlines() if line.startswith("cluster of ")]
    assert len(shown) == 2 and all("(near_duplicate), kept doc" in line for line in shown)
    removed = [line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("    removed ")]
    assert removed and all(r.endswith(("-near", "-far")) or r in texts for r in removed)


def test_same_output_on_every_engine_and_partitioning(planted, spark, ray_local):
    root, _, expected = planted
    Runner(load_plan(_config(root, "local1", root / "in1", "local"))).run()
    assert _clusters(root / "local1")[2] == expected
    sums = {}
    for engine in ("local", "spark", "ray"):
        name = f"{engine}3b"
        Runner(load_plan(_config(root, name, root / "in3", engine))).run()
        sums[engine] = [p["sha256"] for p in dataset.read_manifest(DatasetRef(str(root / name / "t" / "mh")))["parts"]]
    assert sums["local"] == sums["spark"] == sums["ray"]
    one, three = _clusters(root / "local1"), _clusters(root / "local3b")
    assert sorted(one[0].column("id").to_pylist()) == sorted(three[0].column("id").to_pylist())  # same keepers
    assert one[3] == three[3]  # same labels and sizes


def test_config_errors_name_the_key(tmp_path, planted):
    root, _, _ = planted
    with pytest.raises(ConfigError, match=r"keep.*only be ascending"):
        load_plan(_config(tmp_path, "bad", root / "in3", "local", params="{keep: ['-id']}"))
    with pytest.raises(ConfigError, match=r"bands and rows: set both"):
        load_plan(_config(tmp_path, "bad2", root / "in3", "local", params="{bands: 4}"))
    with pytest.raises(ConfigError, match=r"-source asks for the largest first"):
        load_plan(_config(tmp_path, "bad3", root / "in3", "local", params="{keep: ['-source']}"))


def test_kill_in_the_middle_of_the_components_then_resume(demo_corpus, tmp_path):
    """A chain of real text, each page a few words away from the previous one: one component
    that takes many rounds; the stage SIGKILLs its process after round 2 on the first run. The
    re-run resumes from the work the killed one finished (signatures, verified pairs, two rounds)
    and writes what an uninterrupted run writes."""
    rng = random.Random(1)
    base = max(_real_docs(demo_corpus, 40), key=len).split()[:300]
    words, inputs = list(base), tmp_path / "in"
    inputs.mkdir()
    with open(inputs / "chain.jsonl", "w") as f:
        for i in range(120):
            f.write(json.dumps({"id": f"c{i:03d}", "text": " ".join(words)}) + "\n")
            for _ in range(2):
                words[rng.randrange(len(words))] = rng.choice(base)
    marker = tmp_path / "marker"
    marker.mkdir()
    cfg = _config(tmp_path, "killed", inputs, "local", uses="pipeline_stages:KILLING_MINHASH", params=f"{{marker_dir: '{marker}'}}")
    cmd = [sys.executable, "-m", "arcforge.cli", "run", str(cfg)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == -9, first.stdout + first.stderr  # SIGKILL after the second round
    assert (marker / "broken").exists()
    assert not (tmp_path / "killed" / "t" / "mh" / "_manifest.json").exists()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    logs = [p.read_text() for p in (tmp_path / "killed" / "t" / "_logs").glob("run-*.log")]
    resumed = [text for text in logs if "dedup.minhash: resuming from" in text]
    assert len(logs) == 2 and len(resumed) == 1, logs
    # the second run read the signatures and verified pairs back and went on from round 3
    assert "signatures of 1 of 1 partitions, pairs kept" in resumed[0], resumed[0]
    assert "components round 3," in resumed[0] and "components round 2," not in resumed[0], resumed[0]
    Runner(load_plan(_config(tmp_path, "clean", inputs, "local"))).run()

    def parts(run):
        m = dataset.read_manifest(DatasetRef(str(run / "t" / "mh")))
        return [(p["name"], p["rows"], p["sha256"]) for p in m["parts"]], m["stats"]

    killed, clean = parts(tmp_path / "killed"), parts(tmp_path / "clean")
    assert killed[0] == clean[0]
    assert clean[1]["minhash.component_rounds"] >= 3 and clean[1]["minhash.largest_component"] >= 100
    assert not (tmp_path / "killed" / "t" / "mh" / "_minhash_work").exists()
