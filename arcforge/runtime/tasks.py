"""The engine-neutral partition task: read one input, apply the stage, commit one part.

Every engine ships the same JSON task description to its workers and calls
``execute_task`` there, which is why engine adapters stay thin.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from arcforge.runtime import storage
from arcforge.runtime.chain import CHAIN, ChainParams, run_chain
from arcforge.runtime.distribution import DistributionCollector
from arcforge.runtime.dataset import DatasetRef, PartWriter, part_name, schema_from_b64, write_commit, write_part
from arcforge.runtime.documents import (
    DOC_SCHEMA,
    check_columns,
    conform,
    doc_id,
    docs_table,
    rejected_schema,
    text_bytes,
)
from arcforge.runtime.stage import (
    MapStage,
    Output,
    PartitionStage,
    SourceStage,
    Stage,
    StageParams,
    Stats,
    TaskContext,
    resolve_stage,
    split_rejected,
)
from arcforge.runtime.storage import S3Options


@dataclass
class PartitionTask:
    """Everything a worker needs for one partition; no credentials, JSON-serialisable."""

    stage_ref: str
    params: dict[str, Any]
    partition: int
    input_uri: str
    output_uri: str
    fingerprint: str
    schema_b64: str
    s3: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> URI of a committed artifact stage
    artifact_fps: dict[str, str] = field(default_factory=dict)  # name -> its fingerprint (setup cache key)
    split: dict[str, Any] = field(default_factory=dict)  # the piece of the input file (a source's Split.spec)
    steps: dict[str, Any] = field(default_factory=dict)  # ChainParams of map steps fused after the stage

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, data: str) -> PartitionTask:
        return cls(**json.loads(data))

    @property
    def output(self) -> DatasetRef:
        return DatasetRef(self.output_uri, S3Options(**self.s3))

    @property
    def schema(self) -> pa.Schema:
        return schema_from_b64(self.schema_b64)

    @property
    def stage_name(self) -> str:
        """The configured stage's name: the last component of its output directory."""
        return self.output_uri.rstrip("/").rsplit("/", 1)[-1]


# Worker-process cache of stage setup results (a loaded model), keyed by stage and params:
# Spark and Ray reuse Python workers, so a model loads once per worker, not per partition.
_SETUP_CACHE: dict[tuple[str, str], Any] = {}


def worker_state(task: PartitionTask, stage: Stage[Any], params: StageParams) -> Any:
    """The stage's setup result for this worker; a rebuilt artifact (new fingerprint) reloads."""
    setup = getattr(stage, "setup", None)
    if setup is None:
        return None
    return _cached_setup(task, task.stage_ref, params, setup)


def _cached_setup(task: PartitionTask, ref: str, params: StageParams, setup: Any) -> Any:
    key = (ref, params.model_dump_json(), json.dumps([task.artifacts, task.artifact_fps], sort_keys=True))
    if key not in _SETUP_CACHE:
        _SETUP_CACHE[key] = setup(params, task.artifacts)
    return _SETUP_CACHE[key]


def _fused_steps(task: PartitionTask, ctx: TaskContext, outputs: Iterator[Output]) -> Iterator[Output]:
    """Pass a stage's kept rows through the map steps fused after it (``steps:``), in the same task."""
    if not task.steps:
        yield from outputs
        return
    params = ChainParams.model_validate(task.steps)
    chain_ctx = replace(ctx, state=_cached_setup(task, "chain", params, CHAIN.setup))
    for out in outputs:
        ctx.first_error = ctx.first_error or chain_ctx.first_error
        if not out.kept.num_rows:
            yield out
            continue
        fused = run_chain(out.kept, params, chain_ctx)
        rejected = [r for r in (out.rejected, fused.rejected) if r is not None and r.num_rows]
        yield Output(kept=fused.kept, rejected=_concat_rejected(rejected))
    ctx.first_error = ctx.first_error or chain_ctx.first_error


def _concat_rejected(tables: list[pa.Table]) -> pa.Table | None:
    if not tables:
        return None
    if len(tables) == 1:
        return tables[0]
    names = list(dict.fromkeys(n for t in tables for n in t.column_names))
    schema = pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
    return pa.concat_tables([conform(t, pa.schema([schema.field(n) for n in names])) for t in tables])


MAP_BATCH_ROWS = 1024  # rows per batch handed to a map function, and per read of its input


def quarantine(row: pa.RecordBatch | pa.Table, exc: BaseException, ctx: TaskContext) -> Output:
    """One row the stage raised on, rejected as ``error:<Type>`` with the message; the
    first error's traceback is kept for the failure threshold's message and the log."""
    ctx.stats.update("quarantined")
    detail = f"{type(exc).__name__}: {exc}"[:2000]
    if ctx.first_error is None:
        ctx.first_error = {"error": detail, "traceback": traceback.format_exc()[-4000:]}
    return split_rejected(row, [f"error:{type(exc).__name__}"], [detail])


def _map_batches(stage: MapStage[Any], batches: Iterator[pa.RecordBatch], params: StageParams, ctx: TaskContext) -> Iterator[Output]:
    """Apply the batch function to every batch (a chain's too: it is a map stage)."""
    from arcforge.runtime.chain import apply_fn

    for batch in batches:
        ctx.stats.update("docs_in", batch.num_rows)
        ctx.stats.update("bytes_in", text_bytes(batch))
        yield from apply_fn(stage, batch, params, ctx)


def _read_source(task: PartitionTask, stage: SourceStage[Any], params: StageParams, ctx: TaskContext) -> Iterator[Output]:
    """A source's outputs; an input it cannot open or read becomes one quarantined row.

    Errors that may pass are re-raised so the task is retried (``execute_task_json``);
    anything else (no permission, a directory, a vanished file) is the input's fault,
    so the run goes on without it and says so in the manifest.
    """
    fs, path = storage.filesystem(task.input_uri)
    try:
        yield from stage.read(path, fs, params, ctx)
    except OSError as exc:
        if storage.is_transient(exc):
            raise
        cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1000]
        ctx.stats.update("input.unreadable")
        ctx.errors.append(f"unreadable: {cause}")
        row = {
            "id": doc_id(task.input_uri.rsplit("/", 1)[-1], "unreadable", str(task.partition)),
            "text": "",
            "source": getattr(params, "source", None) or "unknown",
            "url": task.input_uri.rsplit("/", 1)[-1],
            "reason": "unreadable_input",
            "detail": cause,
        }
        yield Output(kept=task.schema.empty_table(), rejected=docs_table([row], rejected_schema(DOC_SCHEMA)))


def _outputs(task: PartitionTask, stage: Stage[Any], params: StageParams, ctx: TaskContext) -> Iterator[Output]:
    fs, path = storage.filesystem(task.input_uri)
    if isinstance(stage, PartitionStage):
        with fs.open_input_file(path) as f:
            ctx.stats.update("docs_in", pq.read_metadata(f).num_rows)
        yield from stage.read(path, fs, params, ctx)
    elif isinstance(stage, SourceStage):
        for out in _read_source(task, stage, params, ctx):
            rejected = out.rejected.num_rows if out.rejected is not None else 0
            ctx.stats.update("docs_in", out.kept.num_rows + rejected)
            yield out
    elif isinstance(stage, MapStage):
        with fs.open_input_file(path) as f:
            batches = pq.ParquetFile(f).iter_batches(batch_size=MAP_BATCH_ROWS)
            yield from _map_batches(stage, batches, params, ctx)
    else:
        raise TypeError(f"{stage.name}: {stage.kind} stages do not run as partition tasks")


def commit_partition(
    task: PartitionTask,
    kept: pa.Table,
    rejected: pa.Table | None,
    stats: Stats,
    started: float,
    errors: list[str] | None = None,
    files: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write a part held in memory and its rejected rows, then the commit record.

    Global stages use it; partition tasks stream through :func:`execute_task` instead."""
    name = part_name(task.partition)
    out = task.output
    part = write_part(out, name, kept)
    rej = write_part(out.rejected, name, rejected) if rejected is not None and rejected.num_rows else None
    return _commit(task, part, rej, kept, rejected, stats, started, errors, files)


def _count_outputs(stats: Stats, kept: pa.Table, rejected: pa.Table | None) -> None:
    stats.update("docs_out", kept.num_rows)
    stats.update("bytes_out", text_bytes(kept))
    if rejected is not None and rejected.num_rows:
        stats.update("dropped", rejected.num_rows)
        for row in rejected.group_by("reason").aggregate([("reason", "count")]).to_pylist():
            stats.update(f"dropped.{row['reason']}", row["reason_count"])


def _commit(
    task: PartitionTask,
    part: dict[str, Any],
    rej: dict[str, Any] | None,
    kept: pa.Table | None,
    rejected: pa.Table | None,
    stats: Stats,
    started: float,
    errors: list[str] | None,
    files: list[dict[str, Any]] | None,
    first_error: dict[str, str] | None = None,
    described: DistributionCollector | None = None,
) -> dict[str, Any]:
    if kept is not None:
        _count_outputs(stats, kept, rejected)
        described = DistributionCollector(task.schema, task.stage_name)
        described.add_kept(kept)
        if rejected is not None and rejected.num_rows:
            described.add_rejected(rejected)
    stats.update("seconds", time.time() - started)
    record = {
        **part,
        "partition": task.partition,
        "fingerprint": task.fingerprint,
        "input": task.input_uri,
        "rejected": rej,
        "stats": stats.as_dict(),
        "errors": errors or [],
        "files": files or [],
    }
    if first_error is not None:
        record["first_error"] = first_error
    if described is not None:
        record["distribution"] = described.to_record()  # merged into the stage's _stats.json
    write_commit(task.output, record)
    return record


def execute_task(task: PartitionTask) -> dict[str, Any]:
    """Run one partition end to end in the current process and return its commit record.

    Rows stream from the input through the stage into the part's row groups, so a
    task holds one batch and one row group at a time, whatever the partition's size.
    """
    started = time.time()
    storage.configure(S3Options(**task.s3))
    stage = resolve_stage(task.stage_ref)
    params = stage.params.model_validate(task.params)
    ctx = TaskContext(
        state=worker_state(task, stage, params),
        partition=task.partition,
        artifacts=task.artifacts,
        output_uri=task.output_uri,
        s3=S3Options(**task.s3),
        split=task.split,
    )
    schema = task.schema
    rej_schema = rejected_schema(schema)
    name = part_name(task.partition)
    declared = [f.name for f in getattr(stage, "adds", ())]  # a map stage must return what it adds
    kept_writer = PartWriter(task.output, name, schema)
    rej_writer = PartWriter(task.output.rejected, name, rej_schema)
    described = DistributionCollector(schema, task.stage_name)
    try:
        for out in _fused_steps(task, ctx, _outputs(task, stage, params, ctx)):
            if out.kept.num_rows:  # an empty batch (every row rejected or quarantined) may lack the added columns
                check_columns(out.kept, schema, stage.name, declared)
            kept = conform(out.kept, schema)
            rejected = None
            if out.rejected is not None and out.rejected.num_rows:
                check_columns(out.rejected, rej_schema, stage.name)
                rejected = conform(out.rejected, rej_schema)
            _count_outputs(ctx.stats, kept, rejected)
            kept_writer.write(kept)
            described.add_kept(kept)
            if rejected is not None:
                rej_writer.write(rejected)
                described.add_rejected(rejected)
        part = kept_writer.close()
        rej = rej_writer.close(keep_empty=False)
    except BaseException:
        kept_writer.abort()
        rej_writer.abort()
        raise
    errors = [f"{task.input_uri}: {e}" for e in ctx.errors]
    return _commit(task, part, rej, None, None, ctx.stats, started, errors, ctx.files, ctx.first_error, described)


TASK_FAILED = "ARCFORGE_TASK_FAILED"


def failure_line(task: PartitionTask, exc: BaseException) -> str:
    """One JSON line that names the stage, partition, input and cause; the CLI finds it
    inside whatever the engine wraps around it (py4j, Ray's RayTaskError)."""
    cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
    info = {"stage_ref": task.stage_ref, "output": task.output_uri, "partition": task.partition, "input": task.input_uri, "cause": cause}
    return f"{TASK_FAILED} {json.dumps(info, sort_keys=True)}"


def run_task(task: PartitionTask) -> dict[str, Any]:
    """What every engine calls: ``execute_task`` with retries, and a findable failure line.

    An error that may pass (an S3 outage, a timeout) re-runs the whole task with
    backoff first: a task is a pure function that overwrites its own part.
    """
    try:
        return storage.retry_transient(execute_task, task, options=S3Options(**task.s3), what=f"partition {task.partition}")
    except Exception as exc:
        raise RuntimeError(f"{failure_line(task, exc)}\n{traceback.format_exc()}") from exc


def execute_task_json(task_json: str) -> str:
    """String in, string out: the shape Spark's and Ray's row-based APIs pass around."""
    return json.dumps(run_task(PartitionTask.from_json(task_json)))
