"""kill -9 in the middle of a stage, re-run, and get exactly the uninterrupted outputs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from pipeline_stages import make_line_files, pipeline_yaml, signal_after_commits

from arcforge.runtime import dataset
from arcforge.runtime.config import load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runner import Runner


def _cli(cfg, *args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "arcforge.cli", "run", str(cfg), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes Spark's JVM and workers too
        **kw,
    )


def _parts(run, stage):
    m = dataset.read_manifest(DatasetRef(str(run / stage)))
    return [(p["name"], p["rows"], p["sha256"]) for p in m["parts"]], m["stats"]


def test_kill_mid_stage_then_resume_matches_clean_run(tmp_path, spark):
    make_line_files(tmp_path / "in", n_files=8, n_lines=30, seed=7)
    inputs = f"{tmp_path}/in/*.txt"
    # the slow stage runs on Spark: 8 partitions, ~1.5 s each, 2 at a time
    killed_cfg = tmp_path / "killed.yaml"
    killed_cfg.write_text(pipeline_yaml(str(tmp_path / "a"), inputs, filt_engine="spark", seconds=1.5))
    clean_cfg = tmp_path / "clean.yaml"
    clean_cfg.write_text(pipeline_yaml(str(tmp_path / "b"), inputs, filt_engine="spark", seconds=0.0))

    run = tmp_path / "a" / "t"
    commits = run / "filt" / "_commits"
    proc = _cli(killed_cfg)
    signal_after_commits(proc, commits, 2, signal.SIGKILL)
    proc.wait()
    committed_before = {p.name: p.stat().st_mtime_ns for p in commits.glob("*.json")}
    assert 2 <= len(committed_before) < 8, "the kill must land in the middle of the stage"
    assert not (run / "filt" / "_manifest.json").exists()
    # what a reader sees: the stage is not there; the upstream stage is whole
    assert dataset.read_manifest(DatasetRef(str(run / "lines")))["rows"] == 240

    out = subprocess.run(
        [sys.executable, "-m", "arcforge.cli", "run", str(killed_cfg)], capture_output=True, text=True, timeout=400
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed" in out.stdout
    # committed partitions were not redone
    for name, mtime in committed_before.items():
        assert (commits / name).stat().st_mtime_ns == mtime
    Runner(load_plan(clean_cfg)).run()  # the uninterrupted run, in this process on the session's Spark
    for stage in ("lines", "filt", "dedup"):
        resumed_parts, resumed_stats = _parts(run, stage)
        clean_parts, clean_stats = _parts(tmp_path / "b" / "t", stage)
        assert resumed_parts == clean_parts
        assert resumed_stats["docs_out"] == clean_stats["docs_out"]
        assert {k: v for k, v in resumed_stats.items() if k.startswith("dropped")} == {
            k: v for k, v in clean_stats.items() if k.startswith("dropped")
        }
    # no duplicated rows: ids are unique in every committed dataset
    for stage in ("filt", "dedup"):
        ids = dataset.read_dataset(DatasetRef(str(run / stage))).column("id").to_pylist()
        assert len(ids) == len(set(ids))
    status = subprocess.run(
        [sys.executable, "-m", "arcforge.cli", "status", str(run)], capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 0
    assert status.stdout.count("committed") == 3
    assert json.loads((run / "_run.json").read_text())["stages"][1]["name"] == "filt"


CHAIN_RUN = """
name: t
storage: {{root: "{root}"}}
engines: {{spark: {{master: "local[2]"}}}}
stages:
  - {{name: lines, uses: "pipeline_stages:LINES", input: {{files: ["{inputs}"]}}}}
  - name: quality
    input: lines
    engine: spark
    steps:
      - {{name: slow, uses: "pipeline_stages:SLOW_FILTER", params: {{min_chars: 12, seconds: {seconds}}}}}
      - {{name: score, uses: "pipeline_stages:SCORE_LENGTH"}}
      - {{name: long, uses: filter, params: {{rules: [{{column: length, op: ">=", value: 20, reason: short}}]}}}}
  - {{name: dedup, uses: dedup.exact, input: quality, engine: spark}}
"""


def test_kill_inside_a_fused_chain_then_resume_matches_clean_run(tmp_path, spark):
    make_line_files(tmp_path / "in", n_files=8, n_lines=30, seed=3)
    inputs = f"{tmp_path}/in/*.txt"
    killed_cfg, clean_cfg = tmp_path / "killed.yaml", tmp_path / "clean.yaml"
    killed_cfg.write_text(CHAIN_RUN.format(root=tmp_path / "a", inputs=inputs, seconds=1.5))
    clean_cfg.write_text(CHAIN_RUN.format(root=tmp_path / "b", inputs=inputs, seconds=0.0))
    run = tmp_path / "a" / "t"
    proc = _cli(killed_cfg)
    signal_after_commits(proc, run / "quality" / "_commits", 2, signal.SIGKILL)
    proc.wait()
    assert not (run / "quality" / "_manifest.json").exists()
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "run", str(killed_cfg)], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    Runner(load_plan(clean_cfg)).run()
    for stage in ("quality", "quality/rejected", "dedup"):
        if stage.endswith("rejected"):
            resumed = dataset.read_dataset(DatasetRef(str(run / stage))).to_pylist()
            clean = dataset.read_dataset(DatasetRef(str(tmp_path / "b" / "t" / stage))).to_pylist()
            assert sorted(resumed, key=lambda r: r["id"]) == sorted(clean, key=lambda r: r["id"])
            continue
        resumed_parts, resumed_stats = _parts(run, stage)
        clean_parts, clean_stats = _parts(tmp_path / "b" / "t", stage)
        assert resumed_parts == clean_parts
        assert {k: v for k, v in resumed_stats.items() if "dropped" in k} == {k: v for k, v in clean_stats.items() if "dropped" in k}
