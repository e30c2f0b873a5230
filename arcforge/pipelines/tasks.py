"""The engine-neutral partition task: read one input, apply the stage, commit one part.

Every engine ships the same JSON task description to its workers and calls
``execute_task`` there, which is why engine adapters stay thin.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from arcforge.pipelines import storage
from arcforge.pipelines.dataset import DatasetRef, part_name, schema_from_b64, write_commit, write_part
from arcforge.pipelines.documents import conform, rejected_schema, text_bytes
from arcforge.pipelines.stage import (
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
from arcforge.pipelines.storage import S3Options


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


# Worker-process cache of stage setup results (a loaded model), keyed by stage and params:
# Spark and Ray reuse Python workers, so a model loads once per worker, not per partition.
_SETUP_CACHE: dict[tuple[str, str], Any] = {}


def worker_state(task: PartitionTask, stage: Stage[Any], params: StageParams) -> Any:
    """The stage's setup result for this worker; a rebuilt artifact (new fingerprint) reloads."""
    setup = getattr(stage, "setup", None)
    if setup is None:
        return None
    key = (task.stage_ref, params.model_dump_json(), json.dumps([task.artifacts, task.artifact_fps], sort_keys=True))
    if key not in _SETUP_CACHE:
        _SETUP_CACHE[key] = setup(params, task.artifacts)
    return _SETUP_CACHE[key]


def _map_batches(stage: MapStage[Any], table: pa.Table, params: StageParams, ctx: TaskContext) -> Iterator[Output]:
    """Apply the batch function; a batch that raises is retried row by row so one bad
    record is quarantined with its error instead of failing the partition."""
    for batch in table.to_batches(max_chunksize=1024):
        try:
            yield stage.fn(batch, params, ctx)
        except Exception:
            for i in range(batch.num_rows):
                row = batch.slice(i, 1)
                try:
                    yield stage.fn(row, params, ctx)
                except Exception as exc:  # noqa: BLE001 - quarantine, whatever the error
                    ctx.stats.update("quarantined")
                    detail = f"{type(exc).__name__}: {exc}"[:2000]
                    yield split_rejected(row, [f"error:{type(exc).__name__}"], [detail])


def _outputs(task: PartitionTask, stage: Stage[Any], params: StageParams, ctx: TaskContext) -> Iterator[Output]:
    fs, path = storage.filesystem(task.input_uri, S3Options(**task.s3))
    if isinstance(stage, PartitionStage):
        import pyarrow.parquet as pq

        with fs.open_input_file(path) as f:
            ctx.stats.update("docs_in", pq.read_metadata(f).num_rows)
        yield from stage.read(path, fs, params, ctx)
    elif isinstance(stage, SourceStage):
        yield from stage.read(path, fs, params, ctx)
    elif isinstance(stage, MapStage):
        table = storage.read_parquet(fs, path)
        ctx.stats.update("docs_in", table.num_rows)
        ctx.stats.update("bytes_in", text_bytes(table))
        yield from _map_batches(stage, table, params, ctx)
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
    """Write the part, its rejected rows, then the commit record (the partition's commit)."""
    name = part_name(task.partition)
    out = task.output
    part = write_part(out, name, kept)
    rej = write_part(out.rejected, name, rejected) if rejected is not None and rejected.num_rows else None
    stats.update("docs_out", kept.num_rows)
    stats.update("bytes_out", text_bytes(kept))
    if rejected is not None and rejected.num_rows:
        stats.update("dropped", rejected.num_rows)
        for row in rejected.group_by("reason").aggregate([("reason", "count")]).to_pylist():
            stats.update(f"dropped.{row['reason']}", row["reason_count"])
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
    write_commit(out, record)
    return record


def execute_task(task: PartitionTask) -> dict[str, Any]:
    """Run one partition end to end in the current process and return its commit record."""
    started = time.time()
    stage = resolve_stage(task.stage_ref)
    params = stage.params.model_validate(task.params)
    s3 = S3Options(**task.s3)
    ctx = TaskContext(
        state=worker_state(task, stage, params),
        partition=task.partition,
        artifacts=task.artifacts,
        output_uri=task.output_uri,
        s3=s3,
    )
    schema = task.schema
    kept_parts: list[pa.Table] = []
    rejected_parts: list[pa.Table] = []
    rej_schema = rejected_schema(schema)
    for out in _outputs(task, stage, params, ctx):
        kept_parts.append(conform(out.kept, schema))
        if out.rejected is not None and out.rejected.num_rows:
            rejected_parts.append(conform(out.rejected, rej_schema))
    if isinstance(stage, SourceStage) and not isinstance(stage, PartitionStage):
        ctx.stats.update("docs_in", sum(t.num_rows for t in kept_parts + rejected_parts))
    kept = pa.concat_tables(kept_parts) if kept_parts else schema.empty_table()
    rejected = pa.concat_tables(rejected_parts) if rejected_parts else None
    errors = [f"{task.input_uri}: {e}" for e in ctx.errors]
    return commit_partition(task, kept, rejected, ctx.stats, started, errors, ctx.files)


def execute_task_json(task_json: str) -> str:
    """String in, string out: the shape Spark's and Ray's row-based APIs pass around."""
    try:
        return json.dumps(execute_task(PartitionTask.from_json(task_json)))
    except Exception as exc:
        raise RuntimeError(f"partition task failed: {exc}\n{traceback.format_exc()}") from exc

