"""The stage runtime without Spark or Ray: batch helpers, commits, manifests, resume."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
from pipeline_stages import make_line_files, pipeline_yaml

from arcforge.runtime import dataset
from arcforge.runtime.config import load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.documents import DOC_SCHEMA, conform, doc_id, docs_table, rejected_schema
from arcforge.runtime.runner import Runner
from arcforge.runtime.stage import split_rejected


def test_split_rejected_keeps_order_and_reasons():
    t = docs_table([{"id": str(i), "text": "x" * i, "source": "s"} for i in range(5)])
    out = split_rejected(t, [None, "short", None, "short", "bad"], [None, "d1", None, "d3", "d4"])
    assert out.kept.column("id").to_pylist() == ["0", "2"]
    assert out.rejected.column("id").to_pylist() == ["1", "3", "4"]
    assert out.rejected.column("reason").to_pylist() == ["short", "short", "bad"]
    assert out.rejected.column("detail").to_pylist() == ["d1", "d3", "d4"]
    assert split_rejected(t, [None] * 5).rejected is None


def test_conform_adds_missing_and_orders_columns():
    t = pa.table({"text": ["a"], "id": ["1"], "source": ["s"], "extra": [1]})
    out = conform(t, DOC_SCHEMA)
    assert out.schema == DOC_SCHEMA
    assert out.column("language").to_pylist() == [None]
    assert "reason" in rejected_schema(DOC_SCHEMA).names


def test_doc_id_is_stable_and_separates_parts():
    assert doc_id("a", "bc") == doc_id("a", "bc")
    assert doc_id("a", "bc") != doc_id("ab", "c")


def _run(tmp_path, **kw):
    inputs = tmp_path / "in"
    if not inputs.exists():
        make_line_files(inputs)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{inputs}/*.txt", **kw))
    return Runner(load_plan(cfg)).run(), tmp_path / "runs" / "t"


def test_local_run_counts_everything_and_commits_manifests(tmp_path):
    results, run = _run(tmp_path)
    by = {r.name: r for r in results}
    lines = by["lines"].manifest
    filt = by["filt"].manifest
    dedup = by["dedup"].manifest
    assert lines["rows"] == 200
    # every input row is either kept or rejected with a reason, at every stage
    assert filt["stats"]["docs_in"] == lines["rows"]
    assert filt["rows"] + filt["stats"]["dropped.too_short"] == lines["rows"]
    assert dedup["rows"] + dedup["stats"].get("dropped.exact_duplicate", 0) == filt["rows"]
    assert dedup["stats"]["dropped.exact_duplicate"] > 0
    rejected = dataset.read_dataset(DatasetRef(str(run / "dedup" / "rejected")))
    assert set(rejected.column("reason").to_pylist()) == {"exact_duplicate"}
    assert all(d.startswith("duplicate_of=") for d in rejected.column("detail").to_pylist())
    kept = dataset.read_dataset(DatasetRef(str(run / "dedup")))
    assert kept.num_rows == dedup["rows"]
    # the kept texts are unique after normalisation, and the keeper ids are kept rows
    from arcforge.dedup.exact import normalize_text

    norm = [normalize_text(t) for t in kept.column("text").to_pylist()]
    assert len(norm) == len(set(norm))
    keepers = {d.removeprefix("duplicate_of=") for d in rejected.column("detail").to_pylist()}
    assert keepers <= set(kept.column("id").to_pylist())
    for part in dedup["parts"]:
        data = (run / "dedup" / part["name"]).read_bytes()
        assert part["bytes"] == len(data)
        import hashlib

        assert part["sha256"] == hashlib.sha256(data).hexdigest()


def test_rerun_skips_and_param_change_invalidates_downstream(tmp_path):
    _, run = _run(tmp_path)
    first = {p: json.loads((run / p / "_manifest.json").read_text()) for p in ("lines", "filt", "dedup")}
    results, _ = _run(tmp_path)
    assert [r.status for r in results] == ["skipped", "skipped", "skipped"]
    results, _ = _run(tmp_path, min_chars=20)
    assert [r.status for r in results] == ["skipped", "ran", "ran"]
    after = json.loads((run / "dedup" / "_manifest.json").read_text())
    assert after["fingerprint"] != first["dedup"]["fingerprint"]
    assert after["rows"] < first["dedup"]["rows"]


def test_a_stray_part_from_a_killed_attempt_is_invisible(tmp_path):
    _, run = _run(tmp_path)
    ref = DatasetRef(str(run / "filt"))
    before = dataset.read_dataset(ref).num_rows
    # a leftover temp file and an uncommitted extra part, as a killed attempt could leave
    (run / "filt" / ".tmp-deadbeef-part-00000.parquet").write_bytes(b"partial")
    pa.parquet.write_table(docs_table([{"id": "x", "text": "stray", "source": "s"}]), run / "filt" / "part-00099.parquet")
    assert dataset.read_dataset(ref).num_rows == before


def test_a_poisoned_record_is_quarantined_and_the_run_goes_on(tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    make_line_files(inputs, n_files=2, n_lines=20)
    poison = (inputs / "f00.txt").read_text().splitlines()[3]
    monkeypatch.setenv("ARCFORGE_TEST_FAIL_ON", poison)
    results, run = _run(tmp_path, min_chars=0, max_error_fraction=0.2)  # a few of 40 rows: under 20%
    filt = {r.name: r for r in results}["filt"].manifest
    n_poison = sum(line == poison for f in inputs.glob("*.txt") for line in f.read_text().splitlines())
    assert filt["stats"]["dropped.error:ValueError"] == n_poison
    rejected = dataset.read_dataset(DatasetRef(str(run / "filt" / "rejected")))
    assert set(rejected.column("detail").to_pylist()) == {"ValueError: poisoned record"}
    assert filt["rows"] == 40 - n_poison


def test_only_and_from_select_stages(tmp_path):
    _, run = _run(tmp_path)
    cfg = tmp_path / "run.yaml"
    runner = Runner(load_plan(cfg))
    assert [r.name for r in runner.run(only="filt")] == ["filt"]
    assert [r.name for r in Runner(load_plan(cfg)).run(start="filt")] == ["filt", "dedup"]
    forced = Runner(load_plan(cfg)).run(only="dedup", force=True)
    assert forced[0].status == "ran"
    with pytest.raises(ValueError, match="no stage named"):
        Runner(load_plan(cfg)).run(only="nope")


def test_artifact_stage_feeds_a_partition_stage_and_invalidates_it(tmp_path):
    extra = """  - {name: vocab, uses: "pipeline_stages:VOCAB", input: [filt], params: {top: TOP}}
  - {name: counts, uses: "pipeline_stages:COUNT_VOCAB", input: filt, artifacts: {vocab: vocab}}
"""
    results, run = _run(tmp_path, extra=extra.replace("TOP", "3"))
    by = {r.name: r for r in results}
    assert by["vocab"].manifest["kind"] == "artifact"
    words = by["vocab"].manifest["meta"]["words"]
    assert json.loads((run / "vocab" / "vocab.json").read_text()) == words and len(words) == 3
    counts = by["counts"].manifest
    assert counts["rows"] == 4 and counts["stats"]["docs_in"] == by["filt"].manifest["rows"]
    files = [f for p in counts["parts"] for f in p["files"]]
    assert sorted(f["name"] for f in files) == [f"hits/part-{i:05d}.txt" for i in range(4)]
    total = sum(int((run / "counts" / f["name"]).read_text()) for f in files)
    table = dataset.read_dataset(DatasetRef(str(run / "counts")))
    assert sum(table.column("hits").to_pylist()) == total > 0
    # a different artifact (more words) invalidates its users, and only them
    results, _ = _run(tmp_path, extra=extra.replace("TOP", "5"))
    assert [r.status for r in results] == ["skipped", "skipped", "skipped", "ran", "ran"]
    total5 = sum(dataset.read_dataset(DatasetRef(str(run / "counts"))).column("hits").to_pylist())
    assert total5 > total


def test_artifact_reference_must_be_an_earlier_stage(tmp_path):
    from arcforge.runtime.config import ConfigError

    extra = '  - {name: counts, uses: "pipeline_stages:COUNT_VOCAB", input: filt, artifacts: {vocab: later}}\n'
    with pytest.raises(ConfigError, match=r"stages\[counts\]\.artifacts\.vocab: 'later' is not an earlier stage"):
        _run(tmp_path, extra=extra)


def test_a_stage_that_raises_on_many_rows_fails_the_run(tmp_path, monkeypatch):
    from arcforge.runtime.runner import StageFailed

    inputs = tmp_path / "in"
    make_line_files(inputs, n_files=2, n_lines=20)
    poison = (inputs / "f00.txt").read_text().splitlines()[3]
    n_poison = sum(line == poison for f in inputs.glob("*.txt") for line in f.read_text().splitlines())
    monkeypatch.setenv("ARCFORGE_TEST_FAIL_ON", poison)
    with pytest.raises(StageFailed) as exc:
        _run(tmp_path, min_chars=0)  # default max_error_fraction 1%: one poisoned row of 40 trips it
    msg = str(exc.value)
    assert msg.startswith(f"stage filt failed: {n_poison} of 40 rows") and "\n" not in msg
    assert "over its max_error_fraction 0.01; first error: ValueError: poisoned record" in msg
    assert "slow_filter" in exc.value.traceback  # the first failing row's traceback, for the log
    run = tmp_path / "runs" / "t"
    assert not (run / "filt" / "_manifest.json").exists() and not list((run / "filt" / "_commits").glob("*.json"))
    # the fix (here: the poison gone) reruns the stage instead of skipping its partitions
    monkeypatch.delenv("ARCFORGE_TEST_FAIL_ON")
    results, _ = _run(tmp_path, min_chars=0)
    assert {r.name: r for r in results}["filt"].manifest["rows"] == 40


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{extra_column: true}", "stage test.score_length returned column(s) ['debug'] that it does not declare"),
        ("{forget_score: true}", "stage test.score_length did not return the declared column(s) ['length']"),
    ],
)
def test_undeclared_or_missing_columns_fail_the_stage(tmp_path, params, message):
    extra = f'  - {{name: score, uses: "pipeline_stages:SCORE_LENGTH", input: filt, params: {params}}}\n'
    with pytest.raises(RuntimeError, match=re.escape(message)):
        _run(tmp_path, extra=extra)


def test_a_declared_score_column_is_written(tmp_path):
    extra = '  - {name: score, uses: "pipeline_stages:SCORE_LENGTH", input: filt}\n'
    results, run = _run(tmp_path, extra=extra)
    table = dataset.read_dataset(DatasetRef(str(run / "score")))
    assert table.column("length").to_pylist() == [len(t) for t in table.column("text").to_pylist()]


def test_a_scorer_that_raises_on_a_row_quarantines_it(tmp_path, monkeypatch):
    """The quarantined row has no score column; the scored rows do, and the run goes on."""
    inputs = tmp_path / "in"
    make_line_files(inputs, n_files=2, n_lines=20)
    poison = (inputs / "f01.txt").read_text().splitlines()[5]
    monkeypatch.setenv("ARCFORGE_TEST_FAIL_ON", poison)
    extra = '  - {name: score, uses: "pipeline_stages:SCORE_LENGTH", input: lines, max_error_fraction: 0.5}\n'
    results, run = _run(tmp_path, min_chars=0, max_error_fraction=0.5, extra=extra)
    score = {r.name: r for r in results}["score"].manifest
    n_poison = sum(line == poison for f in inputs.glob("*.txt") for line in f.read_text().splitlines())
    assert score["stats"]["dropped.error:ValueError"] == n_poison and score["rows"] == 40 - n_poison
    kept = dataset.read_dataset(DatasetRef(str(run / "score")))
    assert kept.column("length").null_count == 0
