"""What a global stage keeps on storage so that a killed run resumes where it stopped.

A global stage (``dedup.minhash``, ``dedup.semantic``) commits nothing until its last step
writes the parts, so without these a kill during its long middle (signatures, embeddings,
the rounds of the connected components) meant doing it all again. NeMo Curator's fuzzy
dedup writes each step's output to disk (minhashes, buckets, edges, components) for the
same reason; here a stage marks its own steps, written once against the frame primitives so
they hold on every engine:

* :class:`WorkDir`: the stage's scratch directory, bound to the stage's fingerprint (the
  input's and the params'): opened by a run of the same fingerprint it keeps what an
  interrupted run left, opened by any other it is cleared first. Removed after success.
* :func:`memo_map_tasks`: ``ops.map_tasks`` whose result per task is written (one Parquet
  file, atomically) where a later run reads it instead of calling ``fn`` again: the
  per-partition passes over the text (MinHash signatures, embeddings) resume partition by
  partition.
* :func:`persist` / :func:`load` / :func:`done`: a frame written as Parquet parts and read
  back, then a ``_done.json`` marker carrying small driver-side facts (counters): a step is
  finished exactly when its marker exists. Reading the files back also starts the frame's
  lineage there (Spark's plans otherwise grow with every step built on a cached frame).

Every step is a pure function of the stage's input, so what is read back equals what would be
computed; a partly written step (no marker, or a task's file not yet renamed into place) is
computed again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from arcforge.runtime import storage
from arcforge.runtime.dataset import schema_to_b64
from arcforge.runtime.globalops import Frame, GlobalOps
from arcforge.runtime.globalops.common import check_out, read_task_input
from arcforge.runtime.storage import S3Options
from arcforge.runtime.tasks import PartitionTask

KEY_FILE = "_key.json"
DONE_FILE = "_done.json"


class WorkDir:
    """A global stage's scratch directory (``uri``), valid for one stage fingerprint."""

    def __init__(self, uri: str, s3: dict[str, Any]) -> None:
        self.uri, self.s3 = uri, s3

    @classmethod
    def of(cls, task: PartitionTask, name: str) -> WorkDir:
        """The directory ``name`` inside the stage's output (``task`` is any of its tasks)."""
        return cls(storage.join(task.output_uri, name), task.s3)

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return storage.filesystem(self.uri, S3Options(**self.s3))

    def open(self, key: str) -> bool:
        """Bind the directory to ``key``; True when it already held work for ``key`` (a
        resumed run), False when it was empty or held another fingerprint's work (cleared)."""
        fs, path = self._fs()
        marker = storage.join(path, KEY_FILE)
        if storage.exists(fs, marker) and storage.read_json(fs, marker).get("key") == key:
            return True
        self.remove()
        storage.write_json_atomic(fs, marker, {"key": key})
        return False

    def remove(self) -> None:
        fs, path = self._fs()
        try:
            fs.delete_dir(path)
        except (FileNotFoundError, OSError):
            pass

    def join(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)


# ---------------------------------------------------------------------------- per-task results


def _task_file(directory: str, partition: int) -> str:
    return storage.join(directory, f"part-{partition:05d}.parquet")


def _memo_task(task: PartitionTask, fn: Callable[..., pa.Table], read: bool | Sequence[str], args: tuple[Any, ...],
               directory: str, schema: pa.Schema) -> pa.Table:
    fs, path = storage.filesystem(_task_file(directory, task.partition), S3Options(**task.s3))
    if storage.exists(fs, path):
        return storage.read_parquet(fs, path).cast(schema)
    table = fn(task, read_task_input(task, read), *args) if read else fn(task, *args)
    table = check_out(table, schema, getattr(fn, "__name__", "map function"))
    storage.write_bytes_atomic(fs, path, storage.parquet_bytes(table))
    return table


def memo_map_tasks(
    ops: GlobalOps,
    tasks: Sequence[PartitionTask],
    fn: Callable[..., pa.Table],
    schema: pa.Schema,
    directory: str,
    *,
    read: bool | Sequence[str] = False,
    args: tuple[Any, ...] = (),
    resources: Any = None,
) -> tuple[Frame, int]:
    """``ops.map_tasks(tasks, fn, schema, read=read, args=args)``, each task's table kept in
    ``directory`` (``part-<partition>.parquet``) and read from there when a file is already
    present. Returns the frame and how many tasks' tables were present when it started."""
    fs, base = storage.filesystem(directory, S3Options(**tasks[0].s3)) if tasks else (None, "")
    present = 0
    if fs is not None and storage.exists(fs, base):
        names = {info.base_name for info in fs.get_file_info(pafs.FileSelector(base)) if info.type == pafs.FileType.File}
        present = sum(f"part-{t.partition:05d}.parquet" in names for t in tasks)
    frame = ops.map_tasks(tasks, _memo_task, schema, args=(fn, read, args, directory, schema), resources=resources)
    return frame, present


# ---------------------------------------------------------------------------- whole frames


def _keyed(table: pa.Table, key: str, parts: int) -> pa.Table:
    part = np.mod(table.column(key).to_numpy(zero_copy_only=False), parts).astype(np.int32)
    return table.append_column("_part", pa.array(part, pa.int32()))


def _spill(task: PartitionTask, rows: pa.Table) -> dict[str, Any]:
    fs, path = storage.filesystem(task.input_uri, S3Options(**task.s3))
    storage.write_bytes_atomic(fs, path, storage.parquet_bytes(rows.drop_columns(["_part"]).cast(task.schema)))
    return {"partition": task.partition, "rows": rows.num_rows}


def _read_back(task: PartitionTask, table: pa.Table) -> pa.Table:
    return table


def _part_tasks(directory: str, schema: pa.Schema, parts: int, s3: dict[str, Any]) -> list[PartitionTask]:
    name = directory.rstrip("/").rsplit("/", 1)[-1]
    return [PartitionTask("arcforge.persist", {}, i, _task_file(directory, i), directory, f"{name}-{i}",
                          schema_to_b64(schema), s3=s3) for i in range(parts)]


def persist(ops: GlobalOps, frame: Frame, directory: str, *, key: str, parts: int, s3: dict[str, Any],
            facts: dict[str, Any] | None = None) -> Frame:
    """Write ``frame`` to ``directory`` as ``parts`` Parquet files (rows routed by the integer
    column ``key`` modulo ``parts``), then its marker with ``facts``, and read it back."""
    tasks = _part_tasks(directory, frame.schema, parts, s3)
    keyed = pa.schema([*frame.schema, pa.field("_part", pa.int32())])
    ops.finish(tasks, _spill, rows=frame.map(_keyed, keyed, args=(key, parts)), key="_part")
    fs, path = storage.filesystem(directory, S3Options(**s3))
    storage.write_json_atomic(fs, storage.join(path, DONE_FILE), {"parts": parts, "facts": facts or {}})
    return load(ops, directory, frame.schema, s3)


def done(directory: str, s3: dict[str, Any]) -> dict[str, Any] | None:
    """The marker of a finished :func:`persist` (``{"parts": n, "facts": {...}}``), else None."""
    fs, path = storage.filesystem(directory, S3Options(**s3))
    marker = storage.join(path, DONE_FILE)
    return storage.read_json(fs, marker) if storage.exists(fs, marker) else None


def load(ops: GlobalOps, directory: str, schema: pa.Schema, s3: dict[str, Any]) -> Frame:
    """The frame a finished :func:`persist` wrote (cached: its files are read once)."""
    marker = done(directory, s3)
    if marker is None:
        raise FileNotFoundError(f"{directory}: no {DONE_FILE}: the step was not finished")
    tasks = _part_tasks(directory, schema, int(marker["parts"]), s3)
    return ops.map_tasks(tasks, _read_back, schema, read=True).cache()


__all__ = ["WorkDir", "done", "load", "memo_map_tasks", "persist"]
