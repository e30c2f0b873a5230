"""Walk a validated plan: skip what is committed, run the rest, commit manifests.

Resume is computed, not remembered: the partition list is rebuilt from the
inputs, each partition gets a fingerprint of (stage, version, params, input
part), and only partitions without a matching commit record are run. Because
the fingerprints of a stage's parts feed its downstream fingerprints, a change
of params invalidates that stage and everything after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from arcforge.pipelines import dataset, storage
from arcforge.pipelines.config import Plan, ResolvedStage
from arcforge.pipelines.dataset import DatasetRef
from arcforge.pipelines.engines import EngineSet
from arcforge.pipelines.stage import ArtifactContext, ArtifactStage, GlobalStage, SourceStage
from arcforge.pipelines.dataset import schema_from_b64, schema_to_b64
from arcforge.pipelines.tasks import PartitionTask

RUN_FILE = "_run.json"


@dataclass
class StageResult:
    name: str
    engine: str
    status: str  # "skipped" (already committed), "ran", "resumed"
    partitions: int
    ran: int
    seconds: float
    manifest: dict[str, Any]


@dataclass
class GlobalContext:
    """What a global stage's ``run_<engine>`` gets: all partitions, which are pending, the engine."""

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
        self._write_run_file()
        try:
            return [self.run_stage(rs, force=force) for rs in selected]
        finally:
            if self._owns_engines:
                self.engines.stop()

    def _write_run_file(self) -> None:
        fs, base = self.run_ref.fs()
        storage.write_json_atomic(
            fs,
            storage.join(base, RUN_FILE),
            {
                "name": self.plan.config.name,
                "config": self.plan.path,
                "stages": [
                    {"name": s.name, "uses": s.cfg.uses, "engine": s.engine, "inputs": s.cfg.input_stages()}
                    for s in self.plan.stages
                ],
            },
        )

    # -- partitions and fingerprints -------------------------------------------------------

    def _partitions(self, rs: ResolvedStage) -> tuple[list[tuple[str, str]], pa.Schema, list[DatasetRef]]:
        """(input uri, input fingerprint) per partition, the output schema, the input datasets."""
        if isinstance(rs.stage, SourceStage) and rs.stage.reads_files:
            parts = []
            for uri in rs.files:
                fs, path = storage.filesystem(uri, self.plan.s3)
                parts.append((uri, f"{uri}:{fs.get_file_info(path).size}"))
            return parts, rs.stage.output_schema(None), []
        parts, schemas, refs = [], [], []
        for dep in rs.cfg.input_stages():
            ref = self.stage_ref(dep)
            manifest = dataset.read_manifest(ref)
            if manifest is None:
                raise RuntimeError(f"stage {rs.name}: input stage {dep!r} is not committed; run it first")
            refs.append(ref)
            if manifest.get("kind") == "artifact":
                raise RuntimeError(f"stage {rs.name}: input {dep!r} is an artifact; name it under `artifacts:`")
            schemas.append(schema_from_b64(manifest["schema_ipc"]))
            parts += [(ref.part_uri(p["name"]), p["fingerprint"]) for p in manifest["parts"]]
        schema = pa.unify_schemas(schemas) if len(schemas) > 1 else schemas[0]
        missing = [c for c in getattr(rs.stage, "requires", ()) if c not in schema.names]
        if missing:
            raise RuntimeError(f"stage {rs.name}: its inputs lack the column(s) {missing} that {rs.cfg.uses} requires")
        return parts, rs.stage.output_schema(schema), refs

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
        identity = dataset.fingerprint(rs.cfg.uses, rs.stage.version, rs.stage.kind, params, art_fps)
        if isinstance(rs.stage, GlobalStage):
            global_fp = dataset.fingerprint(identity, [fp for _, fp in parts])
            fps = [dataset.fingerprint(global_fp, i) for i in range(len(parts))]
        else:
            fps = [dataset.fingerprint(identity, fp) for _, fp in parts]
        out = self.stage_ref(rs.name)
        schema_b64 = schema_to_b64(schema)
        s3 = {"endpoint_url": self.plan.s3.endpoint_url, "region": self.plan.s3.region}
        tasks = [
            PartitionTask(rs.cfg.uses, params, i, uri, out.uri, fp, schema_b64, s3, art_uris, art_fps)
            for i, ((uri, _), fp) in enumerate(zip(parts, fps))
        ]
        return tasks, dataset.fingerprint(identity, fps), schema, refs

    # -- one stage -------------------------------------------------------------------------

    def run_artifact_stage(self, rs: ResolvedStage, force: bool) -> StageResult:
        """Artifact stages are atomic: redone as a whole when params or inputs change."""
        started = time.time()
        out = self.stage_ref(rs.name)
        refs, input_fps = [], []
        for dep in rs.cfg.input_stages():
            manifest = dataset.read_manifest(self.stage_ref(dep))
            if manifest is None:
                raise RuntimeError(f"stage {rs.name}: input stage {dep!r} is not committed; run it first")
            refs.append(self.stage_ref(dep))
            input_fps.append(manifest["fingerprint"])
        params = rs.params.model_dump(mode="json")
        art_uris, art_fps = self._artifacts(rs)
        stage_fp = dataset.fingerprint(rs.cfg.uses, rs.stage.version, rs.stage.kind, params, art_fps, input_fps)
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
            files=built.get("files", []), meta=built.get("meta", {}), stats=ctx.stats.as_dict(),
        )
        self.progress.advance({})
        result = StageResult(rs.name, rs.engine, "ran", 1, 1, time.time() - started, manifest)
        self.progress.end_stage(result)
        return result

    def run_stage(self, rs: ResolvedStage, force: bool = False) -> StageResult:
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
        dataset.remove_stale(out, {t.partition for t in tasks})
        self.progress.start_stage(rs.name, len(tasks), len(done))
        engine = self.engines.get(rs.engine)
        if isinstance(rs.stage, GlobalStage):
            ctx = GlobalContext(rs, tasks, pending, engine, refs, self.progress.advance)
            new = getattr(rs.stage, f"run_{rs.engine}")(ctx)
        else:
            new = engine.run_tasks(rs.stage, pending, self.progress.advance)
        records = list(done.values()) + new
        manifest = dataset.write_manifests(
            out,
            stage=rs.name,
            stage_fingerprint=stage_fp,
            records=records,
            schema=schema,
            params=rs.params.model_dump(mode="json"),
            inputs=[r.uri for r in refs] or rs.files,
        )
        status = "resumed" if done and pending else "ran"
        result = StageResult(rs.name, rs.engine, status, len(tasks), len(pending), time.time() - started, manifest)
        self.progress.end_stage(result)
        return result
