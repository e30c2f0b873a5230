"""A run config as a Dagster code location: one asset per stage, checks, partitions, sensors.

There is no second description of the pipeline: ``arcforge_definitions(CONFIG)`` reads the
same run config ``arcforge run`` reads, and materialising an asset runs that stage through
the same ``Runner``, so committed partitions are skipped and a Dagster retry or a
re-materialisation never duplicates data. What Dagster adds:

* **Assets and lineage.** One asset per stage, with dependencies from its ``input`` and
  ``artifacts``; its materialisation metadata is the stage manifest's counters (documents
  in and out, drops by reason, seconds) and the path of the run's report.
* **Partitions per input file.** A source stage that reads files gets dynamic partitions,
  one per file (the key is the path below the files' common folder). Materialising a
  partition runs that file's partitions of the stage; the stage's manifest is committed
  when no file is left. A sensor per source adds a partition, and requests its run, when
  a new file matches the stage's globs.
* **Checks.** A stage's ``checks:`` become asset checks, evaluated from its manifest by
  ``arcforge.report.checks``; a failed ``blocking`` check stops downstream assets.
* **Jobs and a schedule.** ``ingest_<source>`` per partitioned source (what its sensor
  runs), and ``<run>_pipeline``: every other stage, then the report, daily at 03:00.
* **Resources.** ``engines`` holds Spark and Ray, configured from the run config.

The default executor runs a Dagster run's steps in one process, so one embedded Spark
session and one local Ray serve all its stages, as in ``arcforge run``.
"""


import os
import posixpath
import re
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext, SensorEvaluationContext

from arcforge.orchestrate.resources import EnginesResource, engine_resources
from arcforge.report.checks import evaluate
from arcforge.runtime.config import ConfigError, Plan, ResolvedStage, load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runlock import RunLock
from arcforge.runtime.runner import Runner, StageResult
from arcforge.runtime.stage import SourceStage

DAILY = "0 3 * * *"
LOCK_WAIT_S = 6 * 3600.0  # a step waits this long for another run on the same run directory, then fails


def dagster_name(name: str) -> str:
    """A run's or stage's name as Dagster accepts it (``^[A-Za-z0-9_]+$``): run and stage
    names may also hold ``-`` and ``.``, which become ``_`` (``code-demo`` -> ``code_demo``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _check_names(plan: Plan) -> None:
    """Two stages whose Dagster names collide (``a-b`` and ``a_b``) are a config error."""
    seen: dict[str, str] = {}
    for rs in plan.stages:
        other = seen.setdefault(dagster_name(rs.name), rs.name)
        if other != rs.name:
            raise ConfigError(f"{plan.path}: stages {other!r} and {rs.name!r} are both {dagster_name(rs.name)!r} "
                              "as Dagster asset names (which allow only letters, digits and _): rename one")


def partitioned(rs: ResolvedStage) -> bool:
    """Source stages reading files are partitioned by file."""
    return isinstance(rs.stage, SourceStage) and rs.stage.reads_files and bool(rs.files)


def file_keys(files: list[str]) -> dict[str, str]:
    """Partition key -> file: each file's path below the files' common folder."""
    if not files:
        return {}
    common = posixpath.dirname(files[0]) if len(files) == 1 else posixpath.commonpath(files)
    if common in files:  # commonpath of identical paths is the file itself
        common = posixpath.dirname(common)
    return {posixpath.relpath(f, common) if common else f: f for f in files}


def stage_metadata(result: StageResult, run_uri: str) -> dict[str, Any]:
    """The materialisation's metadata: the manifest's counters, by the manifest's own names."""
    stats = result.manifest.get("stats", {})
    meta: dict[str, Any] = {
        "status": result.status,
        "engine": result.engine,
        "partitions": result.partitions,
        "partitions_run": result.ran,
        "report": dg.MetadataValue.path(posixpath.join(run_uri, "report.html")),
    }
    if result.manifest:
        meta["fingerprint"] = result.manifest.get("fingerprint", "")
        meta["rows"] = int(result.manifest.get("rows", stats.get("docs_out", 0)))
    for key in ("docs_in", "docs_out", "bytes_in", "bytes_out", "quarantined", "dropped"):
        if key in stats:
            meta[key] = int(stats[key])
    if "seconds" in stats:
        meta["seconds"] = float(stats["seconds"])
    drops = {k.removeprefix("dropped."): int(v) for k, v in stats.items() if k.startswith("dropped.")}
    if drops:
        meta["dropped_by_reason"] = dg.MetadataValue.json(drops)
    return meta


def check_results(rs: ResolvedStage, ref: DatasetRef, manifest: dict[str, Any]) -> list[dg.AssetCheckResult]:
    out = []
    for check in rs.cfg.checks:
        o = evaluate(check, rs.name, ref, manifest)
        meta = {"value": o.value if o.value is not None else dg.MetadataValue.null(),
                "expected": o.expected, "description": o.description}
        out.append(dg.AssetCheckResult(
            check_name=o.name, passed=bool(o.passed), metadata=meta,
            severity=dg.AssetCheckSeverity.ERROR if check.blocking else dg.AssetCheckSeverity.WARN,
        ))
    return out


def _stage_asset(config: str, plan: Plan, rs: ResolvedStage, pdefs: dict[str, dg.DynamicPartitionsDefinition],
                 lock_wait_s: float) -> dg.AssetsDefinition:
    deps = [*rs.cfg.input_stages(), *rs.cfg.artifacts.values()]
    name, key = rs.name, dagster_name(rs.name)
    specs = [dg.AssetCheckSpec(c.check_name, asset=key, blocking=c.blocking, description=c.band()) for c in rs.cfg.checks]

    @dg.asset(
        name=key,
        deps=[dg.AssetKey(dagster_name(d)) for d in dict.fromkeys(deps)],
        partitions_def=pdefs.get(name),
        check_specs=specs or None,
        group_name=dagster_name(plan.config.name),
        kinds={rs.engine},
        description=f"{rs.cfg.uses} on {rs.engine}",
        metadata={"stage": name, "uses": rs.cfg.uses, "engine": rs.engine, "config": os.path.abspath(config)},
    )
    def _materialise(context: AssetExecutionContext, engines: EnginesResource):  # noqa: ANN202
        current = load_plan(config)  # re-read: the files under the globs may have changed
        stage = next(s for s in current.stages if s.name == name)
        only = None
        if context.has_partition_key:
            keys = file_keys(stage.files)
            missing = [k for k in context.partition_keys if k not in keys]
            if missing:
                raise dg.Failure(f"stage {name}: no input file for partition(s) {missing}; files are {sorted(keys)[:5]}")
            only = [keys[k] for k in context.partition_keys]
        runner = Runner(current, engines=engines.engine_set())
        runner.check_writable()
        lock = RunLock(runner.run_ref, current.path)
        lock.acquire(wait_s=lock_wait_s, poll_s=5.0, on_wait=context.log.info)  # runs started together queue here
        try:
            runner.write_run_file()
            result = runner.run_stage(stage, only_files=only)
        finally:
            lock.release()
        context.log.info(f"{name}: {result.status}, {result.ran} of {result.partitions} partitions run")
        checks = check_results(stage, runner.stage_ref(name), result.manifest) if result.manifest else []
        if not result.manifest and specs:  # a partial source: its checks wait for the last file
            context.log.info(f"{name}: checks wait until every input file is committed")
        return dg.MaterializeResult(metadata=stage_metadata(result, current.run_uri), check_results=checks)

    return _materialise


def _report_asset(plan: Plan, leaves: list[str]) -> dg.AssetsDefinition:
    run_uri = plan.run_uri

    run = dagster_name(plan.config.name)

    @dg.asset(name=f"{run}_report", deps=[dg.AssetKey(dagster_name(n)) for n in leaves], group_name=run,
              kinds={"html"}, description="the run's HTML data-quality report and report.json (arcforge report)")
    def _report(context: AssetExecutionContext) -> dg.MaterializeResult:
        from arcforge.report.cli import write_report

        html_path, json_path = write_report(run_uri)
        return dg.MaterializeResult(metadata={"report": dg.MetadataValue.path(html_path), "json": dg.MetadataValue.path(json_path)})

    return _report


def _source_sensor(config: str, name: str, pdef: dg.DynamicPartitionsDefinition, job: Any) -> dg.SensorDefinition:
    @dg.sensor(name=f"{dagster_name(name)}_new_files", job=job, minimum_interval_seconds=60,
               description=f"adds a partition of {name} for each new file under its input globs, and runs it")
    def _sensor(context: SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        stage = next(s for s in load_plan(config).stages if s.name == name)
        known = set(context.instance.get_dynamic_partitions(pdef.name))
        new = [k for k in file_keys(stage.files) if k not in known]
        if not new:
            return dg.SkipReason(f"no new files for {name}")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=k, run_key=f"{name}:{k}") for k in new],
            dynamic_partitions_requests=[pdef.build_add_request(new)],
        )

    return _sensor


def arcforge_definitions(config: str, *, cron: str = DAILY, lock_wait_s: float = LOCK_WAIT_S) -> dg.Definitions:
    """The code location of one run config (a config error is one line, before anything runs).
    ``lock_wait_s``: how long a step waits for the run directory's lock held by another run
    (the sensor's runs for files that arrived together, a schedule overlapping them)."""
    plan = load_plan(config)
    _check_names(plan)
    run = dagster_name(plan.config.name)
    pdefs = {rs.name: dg.DynamicPartitionsDefinition(name=f"{run}__{dagster_name(rs.name)}__files")
             for rs in plan.stages if partitioned(rs)}
    assets = [_stage_asset(config, plan, rs, pdefs, lock_wait_s) for rs in plan.stages]
    used = {d for rs in plan.stages for d in [*rs.cfg.input_stages(), *rs.cfg.artifacts.values()]}
    leaves = [rs.name for rs in plan.stages if rs.name not in used]
    assets.append(_report_asset(plan, leaves))
    rest = [dagster_name(rs.name) for rs in plan.stages if rs.name not in pdefs] + [f"{run}_report"]
    pipeline = dg.define_asset_job(f"{run}_pipeline", selection=dg.AssetSelection.assets(*rest),
                                   description="every stage after the partitioned sources, then the report")
    jobs, sensors = [pipeline], []
    for name, pdef in pdefs.items():
        job = dg.define_asset_job(f"ingest_{dagster_name(name)}", selection=dg.AssetSelection.assets(dagster_name(name)))
        jobs.append(job)
        sensors.append(_source_sensor(config, name, pdef, job))
    schedule = dg.ScheduleDefinition(name=f"{run}_daily", job=pipeline, cron_schedule=cron)
    return dg.Definitions(assets=assets, jobs=jobs, sensors=sensors, schedules=[schedule],
                          resources=engine_resources(plan.config.engines), executor=dg.in_process_executor)
