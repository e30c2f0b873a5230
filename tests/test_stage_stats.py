"""Every committed stage has distribution stats beside its manifest, and status shows them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from pipeline_stages import make_line_files, pipeline_yaml

from arcforge.runtime import dataset
from arcforge.runtime.config import load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.distribution import read_stats
from arcforge.runtime.runner import Runner

SCORED = """
  - {name: score, uses: "pipeline_stages:SCORE_LENGTH", input: dedup}
  - {name: select, uses: filter, input: score, params: {rules: [{column: length, op: ">=", value: 20, reason: short}]}}
"""


def test_each_stage_writes_stats_that_agree_with_its_data(tmp_path: Path):
    make_line_files(tmp_path / "in", n_files=3, n_lines=80)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", dedup_engine="spark", extra=SCORED))
    Runner(load_plan(cfg)).run()
    run = tmp_path / "runs" / "t"
    for stage in ("lines", "filt", "dedup", "score", "select"):
        ref = DatasetRef(str(run / stage))
        manifest, stats = dataset.read_manifest(ref), read_stats(ref)
        assert stats is not None and stats["fingerprint"] == manifest["fingerprint"], stage
        assert stats["docs"] == manifest["rows"] and stats["partitions_without_stats"] == 0
        dropped = {k.split(".", 1)[1]: v for k, v in manifest["stats"].items() if k.startswith("dropped.")}
        assert {r: e["count"] for r, e in stats["rejected_by_reason"].items()} == dropped, stage
        for reason, entry in stats["rejected_by_reason"].items():
            assert 0 < len(entry["sample"]) <= 10
        kept = dataset.read_dataset(ref)
        chars = np.array([len(t) for t in kept.column("text").to_pylist()])
        text = stats["attributes"]["text_chars"]
        assert (text["count"], text["min"], text["max"]) == (len(chars), chars.min(), chars.max())
        assert text["mean"] == np.float64(chars.mean()).item() or abs(text["mean"] - chars.mean()) < 1e-9
    length = read_stats(DatasetRef(str(run / "select")))["attributes"]["length"]
    values = dataset.read_dataset(DatasetRef(str(run / "select"))).column("length").to_numpy()
    assert length["min"] >= 20 and length["count"] == len(values)
    assert length["quantiles"]["p50"] == np.quantile(values, 0.5, method="inverted_cdf")  # n is small: exact
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "status", str(run)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "select: " in out.stdout and "dropped: short" in out.stdout and "length" in out.stdout
