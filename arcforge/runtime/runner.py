"""Walk a validated plan: skip what is committed, run the rest, commit manifests.

Resume is computed, not remembered: the partition list is rebuilt from the
inputs, each partition gets a fingerprint of (stage, version, params, input
part), and only partitions without a matching commit record are run. Because
the fingerprints of a stage's parts feed its downstream fingerprints, a change
of params invalidates that stage and everything after it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from arcforge.runtime import dataset, distribution, storage
from arcforge.runtime.chain import CHAIN
from arcforge.runtime.config import ConfigError, Plan, ResolvedStage
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.engines import EngineSet
from arcforge.runtime.external import resolve_dataset_inputs
from arcforge.runtime.stage import ArtifactContext, ArtifactStage, GlobalStage, SourceStage
from arcforge.runtime.dataset import schema_from_b64, schema_to_b64
from arcforge.runtime.tasks import PartitionTask

RUN_FILE = "_run.json"


def task_files(task: PartitionTask) -> list[str]:
    """The input files a source partition reads: its file, or the small files grouped into it."""
    return list(task.split.get("files") or [task.input_uri])


class StageFailed(RuntimeError):
    """A stage whose own code failed on too many rows; ``str()`` is the one line for the user,
    ``traceback`` the first failing row's, for the log."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


@dataclass
class StageResult:
    name: str
    engine: str
    status: str  # "skipped" (already committed), "ran", "resumed", "partial" (only_files ran; no manifest yet)
    partitions: int
    ran: int
    seconds: float
    manifest: dict[str, Any]


@dataclass
class GlobalContext:
    """What a global stage's ``run`` gets: all partitions, which are pending, the engine."""

    stage: ResolvedStage
    tasks: list[PartitionTask]
    pending: list[PartitionTask]
    engine: Any
    inputs: list[DatasetRef]
    on_commit: Callable[[dict[str, Any]], None]
    extra: dict[str, Any] = field(default_factory=dict)


class Progress:
    """Minimal progress protocol; the CLI plugs a rich progress bar in."""

    def start_stage(self, name: str, total: int, done: int) -> None: ...
    def advance(self, record: dict[str, Any]) -> None: ...
    def end_stage(self, result: StageResult) -> None: ...


class Runner:
    def __init__(self, plan: Plan, *, progress: Progress | None = None, engines: EngineSet | None = None):
        self.plan = plan
        self.progress = progress or Progress()
        self.engines = engines or EngineSet(plan.config.engines)
        self._owns_engines = engines is None
        self.run_ref = DatasetRef(plan.run_uri, plan.s3)
        self.current: str | None = None  # the stage running now, for failure and interrupt messages
        storage.configure(plan.s3)  # every filesystem of this process now uses the run's settings

    def check_writable(self) -> None:
        """Create the run directory and write a probe file there, before any engine starts.

        A root under /proc, under a regular file, without permission or on a bucket
        that refuses writes is then one config error line, not a traceback mid-run."""
        fs, base = self.run_ref.fs()
        probe = storage.join(base, f".arcforge-probe-{os.getpid()}")
        try:
            fs.create_dir(base, recursive=True)
            storage.write_bytes_atomic(fs, probe, b"probe")
            fs.delete_file(probe)
        except (OSError, ValueError) as exc:
            cause = " ".join(str(exc).split())[:300]
            raise ConfigError(f"{self.plan.path}: storage.root: cannot write to {self.plan.run_uri} ({cause})") from None

    def stage_ref(self, name: str) -> DatasetRef:
        return self.run_ref.child(name)

    def select(self, only: str | None = None, start: str | None = None) -> list[ResolvedStage]:
        names = [s.name for s in self.plan.stages]
        for n in (only, start):
            if n is not None and n not in names:
                raise ValueError(f"no stage named {n!r}; stages are {', '.join(names)}")
        if only:
            return [s for s in self.plan.stages if s.name == only]
        if start:
            return self.plan.stages[names.index(start) :]
        return list(self.plan.stages)

    def run(self, only: str | None = None, start: str | None = None, force: bool = False) -> list[StageResult]:
        selected = self.select(only, start)
        self.write_run_file()
        try:
            return [self.run_stage(rs, force=force) for rs in selected]
        finally:
            if self._owns_engines:
                self.engines.stop()

    def write_run_file(self) -> None:
        """``_run.json``: the stages, their inputs and checks, and the config path (status, report, lineage)."""
        fs, base = self.run_ref.fs()
        storage.write_json_atomic(
            fs,
            storage.join(base, RUN_FILE),
            {
                "name": self.plan.config.name,
                "config": os.path.abspath(self.plan.path),  # status finds it from any directory
                "stages": [
                    {"name": s.name, "uses": s.cfg.uses, "engine": s.engine, "inputs": s.cfg.input_stages(),
                     "artifacts": dict(s.cfg.artifacts),
                     "checks": [c.model_dump(mode="json", exclude_none=True) for c in s.cfg.checks]}
                    for s in self.plan.stages
                ],
            },
        )

    # -- partitions and fingerprints -------------------------------------------------------

    def _partitions(self, rs: ResolvedStage) -> tuple[list[tuple[str, str, dict]], pa.Schema, list[DatasetRef]]:
        """(input uri, input fingerprint, split spec) per partition, the output schema, the input datasets."""
        if isinstance(rs.stage, SourceStage) and rs.stage.reads_files:
            splits = rs.stage.plan(rs.files, self.plan.s3, rs.params)
            schema = rs.schema if rs.schema is not None else rs.stage.output_schema(None)
            return [(sp.uri, sp.key(), sp.spec) for sp in splits], schema, []  # rs.schema includes fused steps
        parts: list[tuple[str, str, dict]] = []
        schemas, refs = [], []
        if rs.datasets:
            ext = resolve_dataset_inputs(rs.datasets, self.plan.s3)
            parts, schemas, refs = [(u, fp, {}) for u, fp in ext.parts], [ext.schema], ext.refs
        for dep in rs.cfg.input_stages():
            ref = self.stage_ref(dep)
            manifest = dataset.read_manifest(ref)
            if manifest is None:
                raise RuntimeError(f"stage {rs.name}: input stage {dep!r} is not committed; run it first")
            refs.append(ref)
            if manifest.get("kind") == "artifact":
                raise RuntimeError(f"stage {rs.name}: input {dep!r} is an artifact; name it under `artifacts:`")
            schemas.append(schema_from_b64(manifest["schema_ipc"]))
            parts += [(ref.part_uri(p["name"]), p["fingerprint"], {}) for p in manifest["parts"]]
        schema = pa.unify_schemas(schemas) if len(schemas) > 1 else schemas[0]
        missing = [c for c in getattr(rs.stage, "requires", ()) if c not in schema.names]
        if missing:
            raise RuntimeError(f"stage {rs.name}: its inputs lack the column(s) {missing} that {rs.cfg.uses} requires")
        out_schema = rs.stage.schema_for(rs.params, schema)
        if rs.steps is not None:
            out_schema = CHAIN.schema_for(rs.steps, out_schema)
        return parts, out_schema, refs

    def _artifacts(self, rs: ResolvedStage) -> tuple[dict[str, str], dict[str, str]]:
        """URIs and fingerprints of the committed stages a stage uses as artifacts."""
        uris, fps = {}, {}
        for name, dep in sorted(rs.cfg.artifacts.items()):
            ref = self.stage_ref(dep)
            manifest = dataset.read_manifest(ref)
            if manifest is None:
                raise RuntimeError(f"stage {rs.name}: artifact {name!r} (stage {dep!r}) is not committed; run it first")
            uris[name], fps[name] = ref.uri, manifest["fingerprint"]
        return uris, fps

    def build_tasks(self, rs: ResolvedStage) -> tuple[list[PartitionTask], str, pa.Schema, list[DatasetRef]]:
        parts, schema, refs = self._partitions(rs)
        params = rs.params.model_dump(mode="json")
        art_uris, art_fps = self._artifacts(rs)
        steps = rs.steps.model_dump(mode="json") if rs.steps is not None else {}
        identity = dataset.fingerprint(rs.cfg.uses, rs.stage.version, rs.stage.kind, params, art_fps, *([steps] if steps else []))
        if isinstance(rs.stage, GlobalStage):
            global_fp = dataset.fingerprint(identity, [fp for _, fp, _ in parts])
            fps = [dataset.fingerprint(global_fp, i) for i in range(len(parts))]
        else:
            fps = [dataset.fingerprint(identity, fp) for _, fp, _ in parts]
        out = self.stage_ref(rs.name)
        schema_b64 = schema_to_b64(schema)
        s3 = self.plan.s3.to_dict()
        tasks = [
            PartitionTask(rs.cfg.uses, params, i, uri, out.uri, fp, schema_b64, s3, art_uris, art_fps, spec, steps)
            for i, ((uri, _, spec), fp) in enumerate(zip(parts, fps))
        ]
        return tasks, dataset.fingerprint(identity, fps), schema, refs

    # -- one stage -------------------------------------------------------------------------

    def _artifact_plan(self, rs: ResolvedStage) -> tuple[list[DatasetRef], dict[str, str], str]:
        """Input datasets, artifact URIs and the fingerprint of an artifact stage."""
        refs, input_fps = [], []
        deps = [(self.stage_ref(dep), f"input stage {dep!r}") for dep in rs.cfg.input_stages()]
        deps += [(DatasetRef(uri.rstrip("/"), self.plan.s3), f"input dataset {uri}") for uri in rs.datasets]
        for ref, what in deps:
            manifest = dataset.read_manifest(ref)
            if manifest is None:
                raise RuntimeError(f"stage {rs.name}: {what} is not a committed arcforge dataset; run it first")
            refs.append(ref)
            input_fps.append(manifest["fingerprint"])
        params = rs.params.model_dump(mode="json")
        art_uris, art_fps = self._artifacts(rs)
        stage_fp = dataset.fingerprint(rs.cfg.uses, rs.stage.version, rs.stage.kind, params, art_fps, input_fps)
        return refs, art_uris, stage_fp

    def _check_errors(self, rs: ResolvedStage, out: DatasetRef, records: list[dict[str, Any]]) -> None:
        """Fail the stage when too many rows were quarantined because it raised on them.

        Its commit records are forgotten, so the re-run after a fix redoes the stage
        rather than skipping partitions whose output the bug decided."""
        stats = dataset.sum_stats(records)
        errors, rows = stats.get("quarantined", 0), stats.get("docs_in", 0)
        if not errors or errors <= rs.cfg.max_error_fraction * rows:
            return
        first = next((r["first_error"] for r in records if r.get("first_error")), {"error": "?", "traceback": ""})
        where = f"step {first['step']} ({first['step_uses']})" if first.get("step") else rs.cfg.uses
        dataset.invalidate(out)
        raise StageFailed(
            f"stage {rs.name} failed: {errors:,} of {rows:,} rows ({errors / max(rows, 1):.1%}) raised in "
            f"{where}, over its max_error_fraction {rs.cfg.max_error_fraction:g}; first error: "
            f"{' '.join(first['error'].split())[:300]}",
            first.get("traceback", ""),
        )

    def _write_stats(self, rs: ResolvedStage, out: DatasetRef, records: list[dict[str, Any]], schema: pa.Schema, fp: str) -> None:
        """Merge the partitions' distribution states into ``_stats.json`` (before the manifest,
        so a committed stage always has the stats of its own fingerprint)."""
        ordered = sorted(records, key=lambda r: r["partition"])
        stats = distribution.merge_records([r.pop("distribution", None) for r in ordered], schema, rs.name, fingerprint=fp)
        distribution.write_stats(out, stats)

    def dry_run(self) -> list[dict[str, Any]]:
        """What a run would do, stage by stage, without starting an engine or writing data.

        A stage whose inputs are not committed yet cannot be planned further: its
        partitions depend on what the stages before it will write."""
        rows = []
        for rs in self.plan.stages:
            row: dict[str, Any] = {"stage": rs.name, "uses": rs.cfg.uses, "engine": rs.engine}
            committed = dataset.read_manifest(self.stage_ref(rs.name))
            try:
                if isinstance(rs.stage, ArtifactStage):
                    _, _, fp = self._artifact_plan(rs)
                    total, done = 1, int(committed is not None and committed.get("fingerprint") == fp)
                else:
                    tasks, fp, _, _ = self.build_tasks(rs)
                    commits = dataset.read_commits(self.stage_ref(rs.name))
                    total = len(tasks)
                    done = sum(commits.get(t.partition, {}).get("fingerprint") == t.fingerprint for t in tasks)
            except RuntimeError:
                row.update(partitions=None, committed=0, action="runs after its inputs")
                rows.append(row)
                continue
            if committed is not None and committed.get("fingerprint") == fp:
                action = "committed, skipped"
            elif done:
                action = f"resumes: {total - done} of {total} partitions to run"
            else:
                action = f"runs {total} partition{'s' if total != 1 else ''}"
            row.update(partitions=total, committed=done, action=action)
            rows.append(row)
        return rows

    def run_artifact_stage(self, rs: ResolvedStage, force: bool) -> StageResult:
        """Artifact stages are atomic: redone as a whole when params or inputs change."""
        started = time.time()
        out = self.stage_ref(rs.name)
        refs, art_uris, stage_fp = self._artifact_plan(rs)
        params = rs.params.model_dump(mode="json")
        manifest = None if force else dataset.read_manifest(out)
        if manifest is not None and manifest.get("fingerprint") == stage_fp:
            result = StageResult(rs.name, rs.engine, "skipped", 1, 0, 0.0, manifest)
            self.progress.end_stage(result)
            return result
        self.progress.start_stage(rs.name, 1, 0)
        ctx = ArtifactContext(refs, out, art_uris, self.engines.get(rs.engine))
        built = rs.stage.build(rs.params, ctx)
        ctx.stats.update("seconds", time.time() - started)
        manifest = dataset.write_artifact_manifest(
            out, stage=rs.name, stage_fingerprint=stage_fp, params=params, inputs=[r.uri for r in refs],
            files=built.get("files", []), meta=built.get("meta", {}), stats=ctx.stats.as_dict(), version=rs.stage.version,
        )
        self.progress.advance({})
        result = StageResult(rs.name, rs.engine, "ran", 1, 1, time.time() - started, manifest)
        self.progress.end_stage(result)
        return result

    def run_stage(self, rs: ResolvedStage, force: bool = False, only_files: Collection[str] | None = None) -> StageResult:
        """Run a stage's pending partitions and commit its manifest once all are committed.

        ``only_files`` (a source stage reading files) runs just the partitions reading those
        input files: Dagster's per-file partitions. The manifest is written when that leaves
        no partition pending; until then the result's status is ``partial``."""
        self.current = rs.name
        if isinstance(rs.stage, ArtifactStage):
            return self.run_artifact_stage(rs, force)
        started = time.time()
        out = self.stage_ref(rs.name)
        tasks, stage_fp, schema, refs = self.build_tasks(rs)
        if force:
            dataset.invalidate(out)
        manifest = dataset.read_manifest(out)
        if manifest is not None and manifest.get("fingerprint") == stage_fp:
            result = StageResult(rs.name, rs.engine, "skipped", len(tasks), 0, 0.0, manifest)
            self.progress.end_stage(result)
            return result
        commits = dataset.read_commits(out)
        done = {t.partition: commits[t.partition] for t in tasks if commits.get(t.partition, {}).get("fingerprint") == t.fingerprint}
        pending = [t for t in tasks if t.partition not in done]
        waiting: list[PartitionTask] = []
        if only_files is not None:
            if not (isinstance(rs.stage, SourceStage) and rs.stage.reads_files):
                raise ValueError(f"stage {rs.name}: only a source stage that reads files runs per input file")
            chosen = set(only_files)
            waiting = [t for t in pending if not chosen.intersection(task_files(t))]
            pending = [t for t in pending if chosen.intersection(task_files(t))]
        dataset.remove_stale(out, {t.partition for t in tasks})
        self.progress.start_stage(rs.name, len(tasks), len(done))
        engine = self.engines.get(rs.engine)
        if isinstance(rs.stage, GlobalStage):
            ctx = GlobalContext(rs, tasks, pending, engine, refs, self.progress.advance)
            new = rs.stage.run(ctx)
        else:
            new = engine.run_tasks(rs.stage, pending, self.progress.advance)
        records = list(done.values()) + new
        self._check_errors(rs, out, records)
        if waiting:  # other input files still to run: no manifest yet
            result = StageResult(rs.name, rs.engine, "partial", len(tasks), len(pending), time.time() - started, {})
            self.progress.end_stage(result)
            return result
        self._write_stats(rs, out, records, schema, stage_fp)
        manifest = dataset.write_manifests(
            out,
            stage=rs.name,
            stage_fingerprint=stage_fp,
            records=records,
            schema=schema,
            params=rs.params.model_dump(mode="json"),
            inputs=[r.uri for r in refs] or rs.datasets or rs.files,
            version=rs.stage.version,
        )
        status = "resumed" if done and pending else "ran"
        result = StageResult(rs.name, rs.engine, status, len(tasks), len(pending), time.time() - started, manifest)
        self.progress.end_stage(result)
        return result
