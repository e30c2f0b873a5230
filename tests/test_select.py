"""The filter stage: scores are attributes, selection is a separate, cheap step."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pipeline_stages import make_line_files, pipeline_yaml

from arcforge.runtime import dataset
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runner import Runner
from arcforge.runtime.select import FilterParams, select_rows
from arcforge.runtime.stage import TaskContext


def test_rules_give_a_reason_each_and_nulls_fail():
    batch = pa.RecordBatch.from_pydict({
        "text": ["a", "b", "c", "d", "e"],
        "language": ["en", "fr", "en", None, "zh"],
        "language_score": pa.array([0.9, 0.99, 0.2, 0.8, None], pa.float32()),
    })
    params = FilterParams.model_validate({"rules": [
        {"column": "language", "op": "in", "value": ["en", "zh"], "reason": "language_not_selected"},
        {"column": "language_score", "op": ">=", "value": 0.4},
    ]})
    ctx = TaskContext()
    out = select_rows(batch, params, ctx)
    assert out.kept.column("text").to_pylist() == ["a"]
    rej = out.rejected.to_pylist()
    assert [(r["text"], r["reason"]) for r in rej] == [
        ("b", "language_not_selected"), ("c", "language_score_ge"), ("d", "language_not_selected"), ("e", "language_score_ge"),
    ]
    assert rej[1]["detail"] == "language_score=0.20000000298023224 fails language_score >= 0.4"
    assert ctx.stats.as_dict() == {"filter.language_not_selected": 2, "filter.language_score_ge": 2}


def test_rule_values_are_checked():
    with pytest.raises(ValueError, match="needs a list value"):
        FilterParams.model_validate({"rules": [{"column": "x", "op": "in", "value": 3}]})
    with pytest.raises(ValueError, match="needs a value"):
        FilterParams.model_validate({"rules": [{"column": "x", "op": ">="}]})


SCORED = """
  - {{name: score, uses: "pipeline_stages:SCORE_LENGTH", input: filt}}
  - {{name: select, uses: filter, input: score, params: {{rules: [{{column: {column}, op: ">=", value: {value}}}]}}}}
"""


def test_a_threshold_change_reruns_only_the_filter(tmp_path):
    make_line_files(tmp_path / "in", n_files=2, n_lines=30)
    cfg = tmp_path / "c.yaml"
    for value, expect in ((10, ["ran"] * 5), (10, ["skipped"] * 5), (25, ["skipped"] * 4 + ["ran"])):
        cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", min_chars=0,
                                     extra=SCORED.format(column="length", value=value)))
        results = Runner(load_plan(cfg)).run()
        assert [r.status for r in results] == expect, value
        kept = dataset.read_dataset(DatasetRef(str(tmp_path / "runs" / "t" / "select")))
        assert min(kept.column("length").to_pylist()) >= value
        st = results[-1].manifest["stats"]
        assert st["dropped.length_ge"] == results[3].manifest["rows"] - results[4].manifest["rows"]


def test_a_rule_on_a_column_no_stage_declares_is_a_config_error(tmp_path):
    make_line_files(tmp_path / "in", n_files=1, n_lines=5)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", extra=SCORED.format(column="lenght", value=3)))
    with pytest.raises(ConfigError) as exc:
        load_plan(cfg)
    msg = str(exc.value)
    assert msg.startswith(f"{cfg}: stages[select]: filter reads column(s) ['lenght'], which no upstream stage declares")
    assert "length" in msg and "\n" not in msg
    assert not (tmp_path / "runs").exists()


def test_split_sides_are_disjoint_complete_and_partition_independent(tmp_path):
    from arcforge.runtime.split import SplitParams, split_rows

    ids = [f"doc-{i}" for i in range(2000)]
    batch = pa.RecordBatch.from_pydict({"id": ids, "text": ids})
    sample = split_rows(batch, SplitParams(fraction=0.1, seed=3), TaskContext())
    rest = split_rows(batch, SplitParams(fraction=0.1, seed=3, side="rest"), TaskContext())
    s, r = set(sample.kept.column("id").to_pylist()), set(rest.kept.column("id").to_pylist())
    assert not s & r and s | r == set(ids) and 150 < len(s) < 250
    assert set(sample.rejected.column("reason").to_pylist()) == {"other_split"}
    # the side of a row depends on its key and the seed only, not on the batch it is in
    pieces = [split_rows(batch.slice(i, 300), SplitParams(fraction=0.1, seed=3), TaskContext()) for i in range(0, 2000, 300)]
    assert {x for p in pieces for x in p.kept.column("id").to_pylist()} == s
    other_seed = split_rows(batch, SplitParams(fraction=0.1, seed=4), TaskContext())
    assert set(other_seed.kept.column("id").to_pylist()) != s


def test_split_runs_as_a_stage(tmp_path):
    make_line_files(tmp_path / "in", n_files=2, n_lines=40)
    cfg = tmp_path / "c.yaml"
    extra = """
  - {name: held, uses: split, input: filt, params: {fraction: 0.3, seed: 1}}
  - {name: pool, uses: split, input: filt, params: {fraction: 0.3, seed: 1, side: rest}}
"""
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", min_chars=0, extra=extra))
    Runner(load_plan(cfg)).run()
    run = tmp_path / "runs" / "t"
    rows = lambda name: dataset.read_dataset(DatasetRef(str(run / name))).column("id").to_pylist()  # noqa: E731
    held, pool, all_ids = set(rows("held")), set(rows("pool")), set(rows("filt"))
    assert held and pool and not held & pool and held | pool == all_ids
    assert dataset.read_manifest(DatasetRef(str(run / "held")))["stats"]["dropped.other_split"] == len(pool)
