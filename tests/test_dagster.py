"""The run config as a Dagster code location, run in-process with ``materialize`` (real Dagster,
real runtime, real Spark and Ray): assets, metadata, blocking checks, partitions and the sensor."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import dagster as dg
import pytest

from arcforge.orchestrate.dagster_defs import arcforge_definitions, file_keys
from arcforge.runtime import dataset
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef
from conftest import TESTS, write_config


def _jsonl(path: Path, prefix: str, n: int) -> None:
    with gzip.open(path, "wt") as fh:
        for i in range(n):
            text = "short" if i % 3 == 0 else f"a document long enough to keep, number {i} of {prefix}"
            fh.write(json.dumps({"id": f"{prefix}{i}", "text": text}) + "\n")


SMALL = """
name: small
storage: {{root: {root}}}
stages:
  - name: read
    uses: io.read
    input: {{files: ["{inputs}/*.jsonl.gz"]}}
    engine: local
    params: {{source: t}}
  - name: stats
    uses: text.stats
    input: read
    engine: spark
  - name: keep
    uses: filter
    input: stats
    engine: local
    params:
      rules:
        - {{column: n_chars, op: ">=", value: 20, reason: too_short}}
    checks:
      - {{metric: drop_share, reason: too_short, max: {max_share}, blocking: {blocking}}}
      - {{metric: error_share, max: 0.01}}
  - name: after
    uses: filter
    input: keep
    engine: ray
    params:
      rules:
        - {{column: n_words, op: ">=", value: 0, reason: never}}
"""


def small_config(tmp: Path, *, max_share: float = 0.5, blocking: bool = True) -> Path:
    inputs = tmp / "in"
    inputs.mkdir(exist_ok=True)
    _jsonl(inputs / "a.jsonl.gz", "a", 30)
    _jsonl(inputs / "b.jsonl.gz", "b", 21)
    text = SMALL.format(root=tmp / "runs", inputs=inputs, max_share=max_share, blocking=str(blocking).lower())
    return write_config(tmp / "small.yaml", text)


def _materialised(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.path[-1] for e in result.get_asset_materialization_events() if e.asset_key}


def _metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    [mat] = result.asset_materializations_for_node(name)
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def _check_manifest_metadata(meta: dict, manifest: dict) -> None:
    stats = manifest["stats"]
    assert meta["fingerprint"] == manifest["fingerprint"]
    for key in ("docs_in", "docs_out", "bytes_out", "dropped"):
        if key in stats:
            assert meta[key] == stats[key], key
    assert meta["seconds"] == pytest.approx(stats["seconds"])
    drops = {k.removeprefix("dropped."): v for k, v in stats.items() if k.startswith("dropped.")}
    assert meta.get("dropped_by_reason", {}) == drops


def test_partitions_run_one_file_each_and_checks_block(tmp_path, spark, ray_local):
    cfg = small_config(tmp_path, max_share=0.2)  # 1 in 3 documents is short: 0.35 > 0.2 fails
    defs = arcforge_definitions(str(cfg))
    assets, resources = list(defs.assets), defs.resources
    assert resources["engines"].spark.master == "local[*]" and resources["engines"].ray.address is None
    inst = dg.DagsterInstance.ephemeral()
    keys = sorted(file_keys(sorted(str(p) for p in (tmp_path / "in").glob("*.jsonl.gz"))))
    assert keys == ["a.jsonl.gz", "b.jsonl.gz"]
    inst.add_dynamic_partitions("small__read__files", keys)
    run = tmp_path / "runs" / "small"

    first = dg.materialize(assets, instance=inst, selection="read", partition_key="a.jsonl.gz", resources=resources)
    assert _metadata(first, "read")["status"] == "partial"
    assert dataset.read_manifest(DatasetRef(str(run / "read"))) is None  # b is still to run
    assert len(dataset.read_commits(DatasetRef(str(run / "read")))) == 1
    second = dg.materialize(assets, instance=inst, selection="read", partition_key="b.jsonl.gz", resources=resources)
    meta = _metadata(second, "read")
    assert meta["status"] == "resumed" and meta["partitions_run"] == 1 and meta["docs_out"] == 51
    _check_manifest_metadata(meta, dataset.read_manifest(DatasetRef(str(run / "read"))))
    again = dg.materialize(assets, instance=inst, selection="read", partition_key="a.jsonl.gz", resources=resources)
    assert _metadata(again, "read")["status"] == "skipped"  # a retry never duplicates data
    assert dataset.read_manifest(DatasetRef(str(run / "read")))["rows"] == 51

    rest = dg.materialize(assets, instance=inst, selection=dg.AssetSelection.assets("stats", "keep", "after"), resources=resources, raise_on_error=False)
    assert not rest.success
    assert _materialised(rest) == {"stats", "keep"}  # the blocking check on keep stopped `after`
    evals = {e.check_name: e for e in rest.get_asset_check_evaluations()}
    assert evals["drop_share_too_short"].passed is False and evals["error_share"].passed is True
    assert evals["drop_share_too_short"].metadata["value"].value == pytest.approx(17 / 51)  # i % 3 == 0: 10 of a, 7 of b
    _check_manifest_metadata(_metadata(rest, "keep"), dataset.read_manifest(DatasetRef(str(run / "keep"))))
    assert dataset.read_manifest(DatasetRef(str(run / "after"))) is None


def test_a_non_blocking_check_warns_and_downstream_runs(tmp_path, spark, ray_local):
    cfg = small_config(tmp_path, max_share=0.2, blocking=False)
    defs = arcforge_definitions(str(cfg))
    inst = dg.DagsterInstance.ephemeral()
    inst.add_dynamic_partitions("small__read__files", ["a.jsonl.gz", "b.jsonl.gz"])
    for key in ("a.jsonl.gz", "b.jsonl.gz"):
        dg.materialize(list(defs.assets), instance=inst, selection="read", partition_key=key, resources=defs.resources)
    rest = dg.materialize(list(defs.assets), instance=inst, selection=dg.AssetSelection.assets("stats", "keep", "after"), resources=defs.resources)
    assert rest.success and _materialised(rest) == {"stats", "keep", "after"}
    [failed] = [e for e in rest.get_asset_check_evaluations() if not e.passed]
    assert failed.check_name == "drop_share_too_short" and failed.severity == dg.AssetCheckSeverity.WARN
    after = dataset.read_manifest(DatasetRef(str(tmp_path / "runs" / "small" / "after")))
    assert after["rows"] == 51 - 17


def test_a_step_waits_for_another_run_on_the_same_directory(tmp_path):
    """The sensor asks for one run per new file, so runs on one run directory start together:
    a step waits for the directory's lock (its log says so once) and runs when it is free;
    past ``lock_wait_s`` it fails with the holder's pid."""
    import os
    import threading

    from arcforge.runtime.runlock import RunLock
    from arcforge.runtime.runner import Runner

    cfg = small_config(tmp_path)
    holder = RunLock(Runner(load_plan(cfg)).run_ref, "another run")
    holder.acquire()
    try:
        impatient = arcforge_definitions(str(cfg), lock_wait_s=0)
        inst = dg.DagsterInstance.ephemeral()
        inst.add_dynamic_partitions("small__read__files", ["a.jsonl.gz"])
        failed = dg.materialize(list(impatient.assets), instance=inst, selection="read", partition_key="a.jsonl.gz",
                                resources=impatient.resources, raise_on_error=False)
        assert not failed.success
        [error] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
        assert f"another run holds this run directory (pid {os.getpid()}" in str(error.event_specific_data.error)
        patient = arcforge_definitions(str(cfg), lock_wait_s=120)
        threading.Timer(3.0, holder.release).start()
        done = dg.materialize(list(patient.assets), instance=inst, selection="read", partition_key="a.jsonl.gz",
                              resources=patient.resources)
    finally:
        holder.release()
    assert done.success and _metadata(done, "read")["status"] == "partial"
    logs = [e.message for e in inst.all_logs(done.run_id) if "waiting up to 120 s" in (e.message or "")]
    assert len(logs) == 1 and "another run holds this run directory" in logs[0]


def test_the_sensor_adds_a_partition_for_a_new_file(tmp_path):
    cfg = small_config(tmp_path)
    defs = arcforge_definitions(str(cfg))
    sensor = defs.resolve_sensor_def("read_new_files")
    inst = dg.DagsterInstance.ephemeral()
    first = sensor(dg.build_sensor_context(instance=inst))
    [add] = first.dynamic_partitions_requests
    assert sorted(add.partition_keys) == ["a.jsonl.gz", "b.jsonl.gz"]
    assert sorted(r.partition_key for r in first.run_requests) == ["a.jsonl.gz", "b.jsonl.gz"]
    inst.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    assert isinstance(sensor(dg.build_sensor_context(instance=inst)), dg.SkipReason)  # nothing new

    _jsonl(tmp_path / "in" / "c.jsonl.gz", "c", 5)
    third = sensor(dg.build_sensor_context(instance=inst))
    assert [list(r.partition_keys) for r in third.dynamic_partitions_requests] == [["c.jsonl.gz"]]
    assert [r.partition_key for r in third.run_requests] == ["c.jsonl.gz"]
    assert third.run_requests[0].job_name in (None, "ingest_read")


def test_jobs_schedule_and_a_bad_check_is_one_line(tmp_path):
    cfg = small_config(tmp_path)
    defs = arcforge_definitions(str(cfg))
    assert defs.resolve_schedule_def("small_daily").cron_schedule == "0 3 * * *"
    pipeline = defs.resolve_job_def("small_pipeline")
    assert {k.path[-1] for k in pipeline.asset_layer.executable_asset_keys} == {"stats", "keep", "after", "small_report"}
    assert defs.resolve_job_def("ingest_read").partitions_def.name == "small__read__files"
    bad = write_config(tmp_path / "bad.yaml", cfg.read_text().replace("max: 0.01}", "max: 0.01, reason: x}"))
    with pytest.raises(ConfigError) as err:
        arcforge_definitions(str(bad))
    assert str(err.value).startswith(f"{bad}: stages[keep].checks[1]") and "drop_share only" in str(err.value)
    assert "\n" not in str(err.value)


def test_names_with_dashes_and_dots_become_dagster_names(tmp_path):
    """Run and stage names may hold ``-`` and ``.``; Dagster's names may not (``code-demo``)."""
    text = small_config(tmp_path).read_text().replace("name: small", "name: small-run").replace("engine: spark", "engine: local") \
        .replace("engine: ray", "engine: local").replace("name: read", "name: read.v2").replace("input: read", "input: read.v2") \
        .replace("name: keep", "name: keep-long").replace("input: keep", "input: keep-long")
    cfg = write_config(tmp_path / "dashed.yaml", text)
    defs = arcforge_definitions(str(cfg))
    pipeline = defs.resolve_job_def("small_run_pipeline")
    assert {k.path[-1] for k in pipeline.asset_layer.executable_asset_keys} == {"stats", "keep_long", "after", "small_run_report"}
    assert defs.resolve_job_def("ingest_read_v2").partitions_def.name == "small_run__read_v2__files"
    assert defs.resolve_schedule_def("small_run_daily") and defs.resolve_sensor_def("read_v2_new_files")
    inst = dg.DagsterInstance.ephemeral()
    inst.add_dynamic_partitions("small_run__read_v2__files", ["a.jsonl.gz", "b.jsonl.gz"])
    for key in ("a.jsonl.gz", "b.jsonl.gz"):
        dg.materialize(list(defs.assets), instance=inst, selection="read_v2", partition_key=key, resources=defs.resources)
    rest = dg.materialize(list(defs.assets), instance=inst, selection=dg.AssetSelection.assets("stats", "keep_long"),
                          resources=defs.resources)
    assert _materialised(rest) == {"stats", "keep_long"}  # the asset keep_long runs the stage keep-long:
    assert dataset.read_manifest(DatasetRef(str(tmp_path / "runs" / "small-run" / "keep-long")))["rows"] == 34
    clash = write_config(tmp_path / "clash.yaml", text.replace("name: after", "name: keep_long"))
    with pytest.raises(ConfigError, match=r"stages 'keep-long' and 'keep_long' are both 'keep_long' as Dagster asset names"):
        arcforge_definitions(str(clash))


def test_the_demo_materialises_and_its_metadata_equals_the_manifests(demo_run, demo_corpus, monkeypatch):
    run, results = demo_run
    monkeypatch.setenv("ARCFORGE_RUNS", str(run.parent))
    monkeypatch.setenv("ARCFORGE_DEMO_CORPUS", str(demo_corpus))
    defs = arcforge_definitions(str(TESTS.parent / "configs" / "demo.yaml"))
    assets = list(defs.assets)
    inst = dg.DagsterInstance.ephemeral()
    partitioned = {a.key.path[-1]: a.partitions_def for a in assets if a.partitions_def is not None}
    assert set(partitioned) == {"extract", "wiki", "books", "docs", "multilingual"}
    for name, pdef in partitioned.items():
        stage_files = [f for f in dataset.read_manifest(DatasetRef(str(run / name)))["inputs"]]
        keys = list(file_keys(stage_files))
        inst.add_dynamic_partitions(pdef.name, keys)
        done = dg.materialize(assets, instance=inst, selection=name, partition_key=keys[0], resources=defs.resources)
        _check_manifest_metadata(_metadata(done, name), results[name].manifest)
    rest = dg.materialize(assets, instance=inst, selection=dg.AssetSelection.assets(*[a.key for a in assets if a.partitions_def is None]),
                          resources=defs.resources)
    assert rest.success
    for name, result in results.items():
        if name in partitioned:
            continue
        meta = _metadata(rest, name)
        assert meta["status"] == "skipped"  # committed by the demo run: Dagster re-runs nothing
        if result.manifest.get("kind") != "artifact":
            _check_manifest_metadata(meta, result.manifest)
    evals = rest.get_asset_check_evaluations()
    configured = sum(len(rs.cfg.checks) for rs in load_plan(TESTS.parent / "configs" / "demo.yaml").stages)
    assert configured == 9 and len(evals) == configured and all(e.passed for e in evals)
    assert Path(_metadata(rest, "demo_report")["report"]).is_file()
