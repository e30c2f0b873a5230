"""The reference semantics, in this process, with frames spilled to Parquet files.

A frame is a list of Parquet files under a temporary directory. An operation that
needs groups together (group_reduce, aggregate, join, finish) reads the frame once and,
when it is larger than ``memory_bytes``, first hash-partitions it into as many bucket
files as keep one bucket under that size; each bucket is then processed in memory.
Memory follows the bucket (and one input part for ``map_tasks``), not the frame.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from arcforge.runtime.globalops import Broadcast, Frame, GlobalOps, OnCommit
from arcforge.runtime.globalops.common import (
    aggregate_schema,
    bucket_of,
    check_out,
    concat,
    canonical_sort,
    conform_types,
    finish_task,
    join_schema,
    local_join,
    map_task,
    reduce_groups,
    split_rows,
)
from arcforge.runtime.stage import Resources
from arcforge.runtime.tasks import PartitionTask

FILE_BYTES = 64 << 20  # Arrow bytes per spill file


class LocalFrame(Frame):
    def __init__(self, ops: LocalOps, schema: pa.Schema, files: list[tuple[str, int]]):
        self.ops, self.schema, self.files = ops, schema, files  # (path, Arrow bytes)

    @property
    def nbytes(self) -> int:
        return sum(b for _, b in self.files)

    def tables(self) -> Iterator[pa.Table]:
        for path, _ in self.files:
            yield conform_types(pq.read_table(path), self.schema)

    def buckets(self, keys: Sequence[str], n: int) -> Iterator[pa.Table]:
        """The frame cut into ``n`` tables by a hash of ``keys``; equal keys share a table."""
        if n <= 1:
            yield concat(list(self.tables()), self.schema)
            return
        writers = [self.ops.writer(self.schema) for _ in range(n)]
        for t in self.tables():
            for w, piece in zip(writers, split_rows(t, bucket_of(t, keys, n), n)):
                w.write(piece)
        for w in writers:
            yield concat(list(w.close().tables()), self.schema)

    def n_buckets(self, extra: int = 0) -> int:
        return max(1, math.ceil((self.nbytes + extra) / self.ops.memory_bytes))

    def map(self, fn: Callable[..., pa.Table], schema: pa.Schema, *, args: tuple[Any, ...] = ()) -> LocalFrame:
        out = self.ops.writer(schema)
        name = getattr(fn, "__name__", "map function")
        for t in self.tables():
            out.write(check_out(fn(t, *args), schema, name))
        return out.close()

    def group_reduce(
        self,
        keys: Sequence[str],
        fn: Callable[..., pa.Table],
        schema: pa.Schema,
        *,
        order_by: Sequence[str] = (),
        batched: bool = False,
        args: tuple[Any, ...] = (),
        num_partitions: int | None = None,
    ) -> LocalFrame:
        out = self.ops.writer(schema)
        for bucket in self.buckets(keys, self.n_buckets()):
            out.write(reduce_groups(bucket, keys, order_by, fn, schema, batched, args))
        return out.close()

    def aggregate(self, keys: Sequence[str], aggs: Sequence[tuple[str, str]], *, num_partitions: int | None = None) -> LocalFrame:
        schema = aggregate_schema(self.schema, keys, aggs)
        out = self.ops.writer(schema)
        for bucket in self.buckets(keys, self.n_buckets()):
            if bucket.num_rows:
                res = bucket.group_by(list(keys), use_threads=False).aggregate(list(aggs))
                out.write(conform_types(res, schema))
        return out.close()

    def join(self, other: Frame, on: Sequence[str], how: str = "inner", *, num_partitions: int | None = None) -> LocalFrame:
        if not isinstance(other, LocalFrame):
            raise TypeError("join: both frames must come from the same engine")
        schema = join_schema(self.schema, other.schema, on, how)
        n = self.n_buckets(other.nbytes)
        out = self.ops.writer(schema)
        for left, right in zip(self.buckets(on, n), other.buckets(on, n)):
            out.write(local_join(left, right, on, how, schema))
        return out.close()

    def count(self) -> int:
        return sum(pq.read_metadata(p).num_rows for p, _ in self.files)

    def collect(self) -> pa.Table:
        return canonical_sort(concat(list(self.tables()), self.schema))


class _Writer:
    """Spill tables of one schema to Parquet files of about ``FILE_BYTES`` each."""

    def __init__(self, ops: LocalOps, schema: pa.Schema):
        self.ops, self.schema = ops, schema
        self.files: list[tuple[str, int]] = []
        self._buf: list[pa.Table] = []
        self._bytes = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._buf.append(table)
            self._bytes += table.nbytes
            if self._bytes >= FILE_BYTES:
                self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        path = os.path.join(self.ops.tmp, f"{uuid.uuid4().hex}.parquet")
        pq.write_table(pa.concat_tables(self._buf), path, compression="lz4")
        self.files.append((path, self._bytes))
        self._buf, self._bytes = [], 0

    def close(self) -> LocalFrame:
        self._flush()
        return LocalFrame(self.ops, self.schema, self.files)


class LocalOps(GlobalOps):
    engine = "local"

    def __init__(self, memory_bytes: int = 512 << 20, tmp_root: str | None = None):
        self.memory_bytes = memory_bytes
        self._root = tmp_root
        self._tmp: str | None = None

    @property
    def tmp(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="arcforge-globalops-", dir=self._root)
        return self._tmp

    def writer(self, schema: pa.Schema) -> _Writer:
        return _Writer(self, schema)

    def map_tasks(
        self,
        tasks: Sequence[PartitionTask],
        fn: Callable[..., pa.Table],
        schema: pa.Schema,
        *,
        read: bool | Sequence[str] = False,
        args: tuple[Any, ...] = (),
        resources: Resources | None = None,
    ) -> LocalFrame:
        out = self.writer(schema)
        for task in tasks:
            out.write(map_task(task.to_json(), fn, schema, read, args))
        return out.close()

    def from_arrow(self, table: pa.Table, num_partitions: int = 1) -> LocalFrame:
        out = self.writer(table.schema)
        out.write(table)
        return out.close()

    def broadcast(self, value: Any) -> Broadcast:
        return Broadcast(value)

    def finish(
        self,
        tasks: Sequence[PartitionTask],
        fn: Callable[..., dict[str, Any]],
        *,
        rows: Frame | None = None,
        key: str = "partition",
        args: tuple[Any, ...] = (),
        on_commit: OnCommit | None = None,
        resources: Resources | None = None,
    ) -> list[dict[str, Any]]:
        if rows is not None and not isinstance(rows, LocalFrame):
            raise TypeError("finish: rows must come from the same engine")
        records = []
        if rows is None:
            groups: list[tuple[pa.Table | None, list[PartitionTask]]] = [(None, list(tasks))]
        else:
            n = rows.n_buckets()
            keys = pa.table({key: pa.array([t.partition for t in tasks], rows.schema.field(key).type)})
            task_bucket = bucket_of(keys, [key], n)
            groups = ((b, [t for t, tb in zip(tasks, task_bucket) if tb == i]) for i, b in enumerate(rows.buckets([key], n)))
        for table, bucket_tasks in groups:
            if table is not None and bucket_tasks:
                table = table.filter(pc.is_valid(table.column(key))).sort_by([(key, "ascending")])
                col = table.column(key).to_numpy(zero_copy_only=False)
            for task in bucket_tasks:
                if table is None:
                    part = (rows.schema if rows is not None else pa.schema([])).empty_table()
                else:
                    lo, hi = np.searchsorted(col, task.partition, "left"), np.searchsorted(col, task.partition, "right")
                    part = table.slice(int(lo), int(hi - lo))
                rec = json.loads(finish_task(task.to_json(), part, key, fn, args))
                if on_commit is not None:
                    on_commit(rec)
                records.append(rec)
        return records

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
