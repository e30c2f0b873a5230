"""The same stages on real Spark, real Ray and in-process give byte-identical parts."""

from __future__ import annotations

from pipeline_stages import make_line_files, pipeline_yaml

from arcforge.pipelines import dataset
from arcforge.pipelines.config import load_plan
from arcforge.pipelines.dataset import DatasetRef
from arcforge.pipelines.runner import Runner


def _checksums(run, stage):
    return [p["sha256"] for p in dataset.read_manifest(DatasetRef(str(run / stage)))["parts"]]


def test_spark_ray_and_local_agree(tmp_path, spark, ray_local):
    make_line_files(tmp_path / "in", n_files=5, n_lines=40, seed=3)
    runs = {}
    for engine in ("local", "spark", "ray"):
        cfg = tmp_path / f"{engine}.yaml"
        cfg.write_text(
            pipeline_yaml(
                str(tmp_path / engine),
                f"{tmp_path}/in/*.txt",
                lines_engine=engine,
                filt_engine=engine,
                dedup_engine=engine,
            )
        )
        results = Runner(load_plan(cfg)).run()
        assert [r.status for r in results] == ["ran"] * 3
        runs[engine] = tmp_path / engine / "t"
    for stage in ("lines", "filt", "dedup"):
        assert _checksums(runs["local"], stage) == _checksums(runs["spark"], stage) == _checksums(runs["ray"], stage)
    stats = dataset.read_manifest(DatasetRef(str(runs["spark"] / "dedup")))["stats"]
    assert stats["dropped.exact_duplicate"] > 0
    # the caller's sessions are reused and left running
    assert spark.sparkContext._jsc is not None
    assert ray_local.is_initialized()


def test_spark_dedup_handles_duplicates_across_partitions(tmp_path, spark):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("Same Text here\nunique one\n")
    (inputs / "b.txt").write_text("same   text HERE\nunique two\nSame Text here\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{inputs}/*.txt", dedup_engine="spark", min_chars=0))
    results = {r.name: r for r in Runner(load_plan(cfg)).run()}
    assert results["dedup"].manifest["rows"] == 3
    assert results["dedup"].manifest["stats"]["dropped.exact_duplicate"] == 2
    kept = dataset.read_dataset(DatasetRef(str(tmp_path / "runs" / "t" / "dedup")))
    from arcforge.dedup.exact import normalize_text

    assert sorted(normalize_text(t) for t in kept.column("text").to_pylist()) == ["same text here", "unique one", "unique two"]
