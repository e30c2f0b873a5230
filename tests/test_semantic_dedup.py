"""``dedup.semantic`` (SemDeDup): the pure parts without an engine, then real Django and
docutils pages through the stage (local, and the same parts on Ray and Spark), and a missing model
as a config error. The encoder loads once in this process (module-level cache) and once in
a Ray worker."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from arcforge.dedup import semantic_parts as sp
from arcforge.dedup.semantic import RESULT_SCHEMA, SemanticDedupParams, annotate, pairwise
from arcforge.runtime import dataset
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runner import Runner
from arcforge.runtime.stage import Stats


def _unit_q(rng: np.random.Generator, n: int) -> np.ndarray:
    return sp.quantise(sp.unit(sp.quantise(rng.standard_normal((n, sp.DIM)))))


def test_pairwise_rule_follows_keep_order_and_blocks_change_nothing():
    rng = np.random.default_rng(1)
    base = _unit_q(rng, 40)
    q = np.concatenate([base, sp.quantise(sp.unit(base[:10] + 0.2 * sp.SCALE / np.sqrt(sp.DIM) * rng.standard_normal((10, sp.DIM))))])
    best, arg = sp.earlier_max(q)
    ref_best, ref_arg = sp.earlier_max_reference(q)
    assert np.isnan(best[0]) and arg[0] == -1
    np.testing.assert_array_equal(best, ref_best)  # exact: integer dot products
    np.testing.assert_array_equal(arg, ref_arg)
    for block_bytes in (1, 8 * len(q) * 3, 1 << 30):  # one row per block, three rows, everything at once
        b, a = sp.earlier_max(q, block_bytes)
        np.testing.assert_array_equal(b, best)
        np.testing.assert_array_equal(a, arg)
    # the near-copies (rows 40..49) find their originals, which come earlier in the order
    assert list(arg[40:]) == list(range(10)) and (best[40:] > 0.9).all() and (best[1:40] < 0.5).all()
    # the same documents in the opposite order: now the originals are the duplicates
    rb, ra = sp.earlier_max(q[::-1].copy())
    assert (rb[40:50] > 0.9).all() and (rb[1:10] < 0.5).all() and np.isnan(rb[0])
    # an exact copy: similarity 1, a duplicate of the earliest of equal candidates
    b2, a2 = sp.earlier_max(np.stack([q[3], q[5], q[3], q[3]]))
    assert b2[2] == b2[3] == 1.0 and a2[2] == a2[3] == 0


def test_group_function_and_annotation():
    rng = np.random.default_rng(2)
    q = _unit_q(rng, 5)
    q[2] = q[0]
    q[4] = sp.quantise(sp.unit(q[3:4] + 0.05 * sp.SCALE / np.sqrt(sp.DIM) * rng.standard_normal((1, sp.DIM))))[0]
    groups = pa.table({"partition": pa.array([0, 0, 1, 1, 0], pa.int32()), "row": pa.array([0, 1, 0, 1, 2], pa.int32()),
                       "id": ["a", "b", "c", "d", "e"], "cluster": pa.array([0, 0, 0, 7, 7], pa.int64()),
                       "emb": sp.to_binary(q)})
    out = pairwise(groups, 1 << 20)
    assert out.schema == RESULT_SCHEMA
    assert out.column("dup_of").to_pylist() == [None, "a", "a", None, "d"]
    sims = out.column("max_sim").to_pylist()
    assert sims[0] is None and sims[3] is None and sims[2] == 1.0 and sims[4] > 0.99
    np.testing.assert_array_equal(sp.from_binary(sp.to_binary(q).slice(1, 3)), q[1:4])
    # partition 0 of a 3-row input: c (partition 1) is not its concern
    part0 = out.filter(pa.compute.equal(out.column("partition"), 0))
    table = pa.table({"id": ["a", "b", "e"], "text": ["x", "y", "z"]})
    stats = Stats()
    annotated, reasons, details = annotate(table, part0, 0.05, stats)
    assert annotated.column("sem_cluster").to_pylist() == [0, 0, 7]
    assert reasons == [None, None, "semantic_duplicate"]
    assert details[2] == f"duplicate_of=d similarity={sims[4]:.4f}"
    assert stats.counters["semantic.clusters"] == 1 and stats.counters["semantic.sim_ge_0.99"] == 1
    _, reasons, _ = annotate(table, part0, None, Stats())
    assert reasons == [None] * 3


def test_sample_depends_on_ids_only_and_kmeans_is_deterministic():
    ids = [f"doc-{i}" for i in range(500)]
    keys = sp.sample_keys(ids)
    assert (keys >= 0).all() and len(set(keys.tolist())) == 500
    chosen = {ids[i] for i in sp.take_sample(keys, ids, 50)}
    for seed in (1, 2):
        shuffled = ids[:]
        random.Random(seed).shuffle(shuffled)
        assert {shuffled[i] for i in sp.take_sample(sp.sample_keys(shuffled), shuffled, 50)} == chosen
    cut = sp.sample_cutoff(500, 50)
    assert cut is not None and {i for i, k in zip(ids, keys) if k < cut} >= chosen  # the cut-off keeps a margin
    assert sp.sample_cutoff(40, 50) is None
    assert sp.n_clusters_for(1_000_000, 100_000, "auto") == 707 and sp.n_clusters_for(10, 10, "auto") == 1
    assert sp.n_clusters_for(100, 30, 50) == 30
    rng = np.random.default_rng(3)
    centres = _unit_q(rng, 3)
    pts = np.concatenate([sp.quantise(sp.unit(np.repeat(centres[i:i + 1], 20, 0) + 0.3 * sp.SCALE / np.sqrt(sp.DIM) * rng.standard_normal((20, sp.DIM))))
                          for i in range(3)])
    c1, method = sp.fit_centroids(pts, 3, 0)
    c2, _ = sp.fit_centroids(pts, 3, 0)
    assert method == "sklearn.KMeans"
    np.testing.assert_array_equal(c1, c2)
    labels = sp.assign(pts, c1)
    assert [len(set(labels[i * 20:(i + 1) * 20].tolist())) for i in range(3)] == [1, 1, 1] and len(set(labels.tolist())) == 3
    np.testing.assert_array_equal(labels, np.concatenate([sp.assign(pts[:7], c1), sp.assign(pts[7:], c1)]))  # chunking


# --- through the stage: real templated pages ----------------------------------------------------

# docutils' three menu-bar include files (one template, other links) and three of Django's
# "How to use Django with <ASGI server>" pages, among six distinct Django pages
CLONES = ["docutils-docs/header.txt", "docutils-docs/header0.txt", "docutils-docs/header2.txt"]
HOWTOS = [f"django-docs/howto/deployment/asgi/{s}.txt" for s in ("daphne", "hypercorn", "uvicorn")]
DISTINCT = [f"django-docs/{p}.txt" for p in ("faq/help", "intro/install", "topics/db/search", "ref/files/file", "howto/delete-app", "misc/api-stability")]


@pytest.fixture(scope="module")
def pages(tmp_path_factory, demo_corpus):
    from arcforge.dedup.templated import templated_set

    docs, labels = templated_set(demo_corpus)
    by_id = {d["id"]: (d, lab) for d, lab in zip(docs, labels)}
    wanted = CLONES + HOWTOS + DISTINCT
    assert [by_id[i][1] for i in wanted] == ["menu-bar"] * 3 + ["server-howto"] * 3 + [None] * 6
    folder = tmp_path_factory.mktemp("sem")
    path = folder / "docs.jsonl"
    path.write_text("".join(json.dumps(by_id[i][0]) + "\n" for i in wanted))
    return folder, path


def _run(folder, path, name: str, params: str, engine: str = "local", uses: str = "dedup.semantic"):
    cfg = folder / f"{name}.yaml"
    cfg.write_text(f'name: {name}\nstorage: {{root: "{folder / "runs"}"}}\nstages:\n'
                   f'  - {{name: docs, uses: io.read, engine: local, input: {{files: ["{path}"]}}, params: {{partition_mb: 0.005}}}}\n'
                   f'  - {{name: sem, uses: {uses}, engine: {engine}, input: docs, params: {{device: cpu, {params}}}}}\n')
    result = Runner(load_plan(cfg)).run()[-1]
    out = folder / "runs" / name / "sem"
    kept = dataset.read_dataset(DatasetRef(str(out)))
    rej = dataset.read_dataset(DatasetRef(str(out / "rejected"))) if (out / "rejected").exists() else None
    return result.manifest, kept, rej if rej is not None and rej.num_rows else None


def test_stage_explores_then_removes_the_template_clones(pages):
    folder, path = pages
    manifest, kept, rej = _run(folder, path, "explore", "keep: [-length, id]")
    assert len(manifest["parts"]) > 1
    assert rej is None and kept.num_rows == 12  # eps: null removes nothing
    sims = dict(zip(kept.column("id").to_pylist(), kept.column("sem_max_sim").to_pylist()))
    assert kept.schema.field("sem_cluster").type == pa.int64() and kept.schema.field("sem_max_sim").type == pa.float64()
    assert sum(s is None for s in sims.values()) == manifest["stats"]["semantic.clusters"] == 1  # 12 docs: one cluster
    stats = manifest["stats"]
    assert stats["semantic.docs"] == 12 and stats["semantic.sim_ge_0.80"] >= 2
    assert stats["semantic.sim_ge_0.80"] == sum(s is not None and s >= 0.8 for s in sims.values())
    # the two shorter menu bars are near-copies of the longest (header2.txt, first in keep order)
    assert [sims[c] is not None and sims[c] > 0.9 for c in CLONES] == [True, True, False]
    assert max(sims[d] for d in DISTINCT if sims[d] is not None) < 0.8

    manifest, kept, rej = _run(folder, path, "remove", "keep: [-length, id], eps: 0.1")
    removed = rej.column("id").to_pylist()
    assert sorted(removed) == sorted(i for i, s in sims.items() if s is not None and s > 0.9)  # eps only moves the cut
    assert len(set(removed) & set(CLONES)) == 2 and not set(removed) & set(DISTINCT)
    assert set(rej.column("reason").to_pylist()) == {"semantic_duplicate"}
    assert set(CLONES) - set(removed) == {"docutils-docs/header2.txt"}
    for detail, doc in zip(rej.column("detail").to_pylist(), removed):
        assert detail.startswith("duplicate_of=docutils-docs/header") and detail.endswith(f" similarity={sims[doc]:.4f}")
    assert manifest["stats"]["dropped.semantic_duplicate"] == len(removed)
    assert kept.num_rows + rej.num_rows == 12


@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_ray_and_spark_write_the_local_parts(pages, engine, request):
    request.getfixturevalue("ray_local" if engine == "ray" else "spark")
    folder, path = pages
    params = "keep: [-length, id], eps: 0.1"  # the local run of the test above, when it ran
    local = dataset.read_manifest(DatasetRef(str(folder / "runs" / "remove" / "sem")))
    if local is None:
        local, _, _ = _run(folder, path, "remove", params)
    other, _, rej = _run(folder, path, f"on_{engine}", params, engine)
    assert rej is not None and rej.num_rows == 2
    assert [p["sha256"] for p in other["parts"]] == [p["sha256"] for p in local["parts"]]


def test_a_failed_run_keeps_its_embeddings_and_the_rerun_resumes_from_them(pages, tmp_path, caplog):
    """The stage fails once every partition is embedded; the re-run reads the embeddings back
    instead of running the encoder again and writes what an uninterrupted run writes."""
    folder, path = pages
    marker = tmp_path / "marker"
    marker.mkdir()
    params = f"keep: [-length, id], eps: 0.1, marker_dir: '{marker}'"
    with pytest.raises(Exception, match="failing once after the embeddings"):
        _run(folder, path, "failed", params, uses="pipeline_stages:FAILING_SEMANTIC")
    work = folder / "runs" / "failed" / "sem" / "_semantic_work"
    kept = sorted(p.name for p in (work / "embeddings").iterdir())
    assert len(kept) > 1 and all(n.startswith("part-") for n in kept)
    with caplog.at_level("INFO", logger="arcforge.dedup.semantic"):
        manifest, _, rej = _run(folder, path, "failed", params, uses="pipeline_stages:FAILING_SEMANTIC")
    assert f"embeddings of {len(kept)} of {len(kept)} partitions" in caplog.text
    assert not work.exists()  # removed once the stage committed
    clean, _, clean_rej = _run(folder, path, "resume_clean", "keep: [-length, id], eps: 0.1")
    assert [p["sha256"] for p in manifest["parts"]] == [p["sha256"] for p in clean["parts"]]
    assert rej.equals(clean_rej)


def test_a_missing_model_is_a_config_error_before_any_engine(tmp_path):
    docs = tmp_path / "d.jsonl"
    docs.write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f'name: bad\nstorage: {{root: "{tmp_path / "runs"}"}}\nstages:\n'
                   f'  - {{name: docs, uses: io.read, engine: local, input: {{files: ["{docs}"]}}}}\n'
                   f'  - {{name: sem, uses: dedup.semantic, input: docs, params: {{model: "{tmp_path / "nope"}"}}}}\n')
    with pytest.raises(ConfigError) as err:
        load_plan(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "stages[sem].params.model" in msg and "no such model directory" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither modules.json nor config.json"):
        SemanticDedupParams(model=str(tmp_path / "empty"))
    cfg.write_text(cfg.read_text().replace(f'model: "{tmp_path / "nope"}"', "keep: [-source]"))
    with pytest.raises(ConfigError, match=r"stages\[sem\]\.params: keep: -source asks for the largest first"):
        load_plan(cfg)
    assert not (tmp_path / "runs").exists()
    assert SemanticDedupParams().model is None and SemanticDedupParams().eps is None  # the bundled encoder; explore first


def test_the_encoders_bytes_are_in_the_fingerprint(tmp_path):
    """The params carry the encoder directory's identity (every file's bytes), so a stage run
    with other weights or another pooling at the same path is a different stage, and a pinned
    identity that no longer matches is a one-line config error. The same bytes elsewhere are
    the same encoder."""
    bundled = Path(sp.default_model())
    copy = tmp_path / "enc"
    for f in bundled.rglob("*"):
        if f.is_file():
            (copy / f.relative_to(bundled)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(bundled)).symlink_to(f)
    (copy / ".cache").mkdir()
    (copy / ".cache" / "download.metadata").write_text("etag and time of a download: not the model")
    same = SemanticDedupParams(model=str(copy)).model_fingerprint
    assert same == SemanticDedupParams().model_fingerprint and same.startswith("dir-sha256:")
    pooling = copy / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    pooling.unlink()
    pooling.write_text(json.dumps({**cfg, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    other = SemanticDedupParams(model=str(copy)).model_fingerprint
    assert other != same
    with pytest.raises(ValueError, match="the encoder changed: it is dir-sha256:"):  # pinned before the change
        SemanticDedupParams(model=str(copy), model_fingerprint=same)
    assert SemanticDedupParams(model=str(copy), model_fingerprint=other).model_fingerprint == other


def test_languages_limits_what_is_embedded_and_compared():
    """The English encoder sees only the rows of the listed languages; the others keep their row
    numbers out of the frame, so they get no cluster and are never removed."""
    import pyarrow as pa

    from arcforge.dedup.semantic import SemanticDedupParams, embed_table

    table = pa.table({"id": ["a", "b", "c", "d"], "text": ["Hello world.", "你好，世界。", "Bonjour.", "Hi there."],
                      "language": ["en", "zh", None, "en"]})
    out = embed_table(table, 7, SemanticDedupParams(languages=["en"], device="cpu"), [("id", False)])
    assert out.column("row").to_pylist() == [0, 3] and out.column("id").to_pylist() == ["a", "d"]
    assert set(out.column("partition").to_pylist()) == {7}
    assert all(len(e) == 768 for e in out.column("emb").to_pylist())
