"""The same stages on real Spark, real Ray and in-process give byte-identical parts."""

from __future__ import annotations

import subprocess
import sys

from pipeline_stages import make_line_files, pipeline_yaml

from arcforge.runtime import dataset
from arcforge.runtime.config import load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runner import Runner


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


def test_spark_reruns_a_failed_partition(tmp_path):
    """engines.spark.task_retries: a partition whose first attempt fails is re-run by Spark.
    (The CLI runs in its own process, so it builds its own Spark session with the retries.)"""
    make_line_files(tmp_path / "in", n_files=3, n_lines=10)
    (tmp_path / "markers").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
name: t
storage: {{root: "{tmp_path / 'runs'}"}}
engines: {{spark: {{master: "local[2]", task_retries: 1}}}}
stages:
  - {{name: lines, uses: "pipeline_stages:FLAKY_LINES", input: {{files: ["{tmp_path}/in/*.txt"]}}, engine: spark,
     params: {{marker_dir: "{tmp_path / 'markers'}"}}}}
""")
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "run", str(cfg)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in (tmp_path / "markers").iterdir()) == ["attempt-0", "attempt-1", "attempt-2"]
    assert dataset.read_manifest(DatasetRef(str(tmp_path / "runs" / "t" / "lines")))["rows"] == 30
    # without retries the same failure stops the run, with one line naming the partition
    for p in (tmp_path / "markers").iterdir():
        p.unlink()
    cfg.write_text(cfg.read_text().replace("task_retries: 1", "task_retries: 0").replace("name: t\n", "name: t0\n"))
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "run", str(cfg)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "arcforge: stage lines, partition" in out.stderr and "RuntimeError: first attempt fails" in out.stderr


def _zero_head(folder) -> str:  # noqa: ANN001
    """A real head.npz for the bundled encoder whose weights are all zero: every score is exactly 0.5."""
    import numpy as np

    from arcforge.classifiers.embedding_model import ENCODER, ENCODER_DIM, Head, save_head

    folder.mkdir()
    save_head(folder / "head.npz", Head(np.zeros(ENCODER_DIM), 0.0, {}), {"encoder": ENCODER, "max_chars": 256})
    return str(folder / "head.npz")


def test_resources_come_from_params_cuda_reserves_a_gpu_and_auto_never_does(tmp_path, ray_local):
    """No GPU here, none faked: the resources are derived from the params; a Ray run on CPU works,
    and a Ray run that needs a GPU on a cluster without one fails at once with one clear line."""
    import json

    import pytest

    from arcforge.classifiers.stages import EMBEDDING_QUALITY, EmbeddingQualityParams
    from arcforge.runtime.chain import CHAIN, ChainParams, task_resources
    from arcforge.runtime.io.read import READ
    from arcforge.runtime.stage import Resources

    model = _zero_head(tmp_path / "head")
    on = {d: EmbeddingQualityParams(model=model, name="e", device=d) for d in ("cuda", "auto", "cpu")}
    assert EMBEDDING_QUALITY.resources_for(on["cuda"]) == Resources(cpus=1, gpus=1)
    assert EMBEDDING_QUALITY.resources_for(on["auto"]) == EMBEDDING_QUALITY.resources_for(on["cpu"]) == Resources(cpus=1, gpus=0)
    steps = {"steps": [{"name": "stats", "uses": "text.stats"}, {"name": "e", "uses": "quality.embedding", "params": on["cuda"].model_dump(mode="json")}]}
    assert CHAIN.resources_for(ChainParams.model_validate(steps)) == Resources(cpus=1, gpus=1)  # the most any step needs
    assert task_resources(READ, {}, steps) == Resources(cpus=1, gpus=1)  # a reader with the GPU step fused after it
    assert task_resources(READ, {}, None) == READ.resources
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Paragraph {i} about the history of Europe."}) + "\n" for i in range(4)))
    cfg = tmp_path / "e.yaml"
    for device in ("cpu", "cuda"):
        cfg.write_text(f'name: {device}\nstorage: {{root: "{tmp_path / "runs"}"}}\nstages:\n'
                       f'  - {{name: docs, uses: io.read, engine: local, input: {{files: ["{docs}"]}}}}\n'
                       f'  - {{name: emb, uses: quality.embedding, engine: ray, input: docs, params: {{model: "{model}", name: e, device: {device}}}}}\n')
        if device == "cpu":
            Runner(load_plan(cfg)).run()
            scores = dataset.read_dataset(DatasetRef(str(tmp_path / "runs" / "cpu" / "emb"))).column("quality_e").to_pylist()
            assert scores == [0.5] * 4
        elif not ray_local.cluster_resources().get("GPU", 0):  # on a GPU machine the cuda run would just work
            with pytest.raises(RuntimeError, match=r"stage emb: each task needs 1 GPU\(s\) \(quality.embedding\), but the Ray cluster has 0"):
                Runner(load_plan(cfg)).run()
