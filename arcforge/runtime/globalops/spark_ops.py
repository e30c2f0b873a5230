"""Global operations on Spark: DataFrames whose rows are produced and consumed by Python
over Arrow (``mapInArrow``), shuffled and joined by Spark.

* ``map_tasks``: the descriptor frame (one Spark partition per task) ``mapInArrow``.
* ``group_reduce``: ``repartition(n, *keys).sortWithinPartitions(*keys)`` then a
  ``mapInArrow`` that re-cuts the sorted stream into whole groups (a group is held
  only until it ends), so the Python function is called per chunk, not per row.
* ``aggregate``: ``groupBy(keys).agg(...)``; ``join``: ``DataFrame.join`` (USING).
* ``finish``: the task descriptors and the rows (packed per key into Arrow IPC blobs)
  are unioned, ``repartition``-ed so that each task lands alone in its own Spark
  partition (a slot value whose Spark hash lands there), sorted by key, and a
  ``mapInArrow`` runs the finishing function per task. Commit records come back
  through ``collect``; an accumulator reports each as its Spark task ends.
* ``broadcast``: ``SparkContext.broadcast``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.accumulators import AccumulatorParam

from arcforge.runtime.globalops import Broadcast, Frame, GlobalOps, OnCommit
from arcforge.runtime.globalops.common import (
    aggregate_schema,
    canonical_sort,
    check_out,
    concat,
    conform_types,
    finish_task,
    group_starts,
    join_schema,
    map_task,
    reduce_groups,
    whole_groups,
)
from arcforge.runtime.stage import Resources
from arcforge.runtime.tasks import PartitionTask

RECORDS = "partition int, record string"

# ---------------------------------------------------------------------------- the finishing step's rows, packed

PACKED_SCHEMA = pa.schema(
    [("__slot", pa.int64()), ("__key", pa.int64()), ("__task", pa.string()), ("__blob", pa.binary())]
)


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def pack_rows(table: pa.Table, key: str, slots: dict[int, int], schema: pa.Schema) -> pa.Table:
    """The rows of a chunk as one IPC blob per key, tagged with the key's slot; rows of
    keys without a pending task are dropped (their partition is committed already)."""
    table = conform_types(table, schema)
    if table.num_rows == 0:
        return PACKED_SCHEMA.empty_table()
    table = table.sort_by([(key, "ascending", "at_start")])
    keys, slot_col, blobs = [], [], []
    starts = group_starts(table, [key])
    ends = np.append(starts[1:], table.num_rows)
    for s, e in zip(starts, ends):
        k = table.column(key)[int(s)].as_py()
        if k is None or int(k) not in slots:
            continue
        keys.append(int(k))
        slot_col.append(slots[int(k)])
        blobs.append(to_ipc(table.slice(int(s), int(e - s))))
    return pa.table(
        {"__slot": pa.array(slot_col, pa.int64()), "__key": pa.array(keys, pa.int64()),
         "__task": pa.nulls(len(keys), pa.string()), "__blob": pa.array(blobs, pa.binary())},
        schema=PACKED_SCHEMA,
    )


def descriptors(tasks: Sequence[PartitionTask], slots: Sequence[int]) -> pa.Table:
    return pa.table(
        {"__slot": pa.array(list(slots), pa.int64()), "__key": pa.array([t.partition for t in tasks], pa.int64()),
         "__task": pa.array([t.to_json() for t in tasks], pa.string()), "__blob": pa.nulls(len(tasks), pa.binary())},
        schema=PACKED_SCHEMA,
    )


def finish_packed(
    tables: Iterable[pa.Table], key: str, row_schema: pa.Schema, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]
) -> Iterator[tuple[int, str]]:
    """Given packed rows sorted (or grouped) by ``__key``, run the finishing function once per
    task: (partition, record JSON). Memory holds one task's rows at a time."""
    for group in whole_groups(tables, ["__key"]):
        starts = group_starts(group, ["__key"])
        ends = np.append(starts[1:], group.num_rows)
        for s, e in zip(starts, ends):
            piece = group.slice(int(s), int(e - s))
            task_json = next((t for t in piece.column("__task").to_pylist() if t is not None), None)
            if task_json is None:
                continue
            blobs = [from_ipc(b) for b in piece.column("__blob").to_pylist() if b is not None]
            rows = concat([conform_types(b, row_schema) for b in blobs], row_schema)
            yield int(piece.column("__key")[0].as_py()), finish_task(task_json, rows, key, fn, args)


def spark_schema(schema: pa.Schema) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema([f.with_nullable(True) for f in schema]))


def _batches(table: pa.Table) -> Iterator[pa.RecordBatch]:
    yield from table.to_batches()


MAP_CHUNK_BYTES = 4 << 20


def _chunks(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.Table]:
    """Spark's Arrow batches (``maxRecordsPerBatch`` rows each: 1,024, sized for documents)
    gathered into tables of at least ``MAP_CHUNK_BYTES``, so that a map function over narrow
    rows (a quantile pass: 20 bytes a row) is called once per few hundred thousand rows, not
    per 1,024; a batch of documents is already that large and goes alone. ``Frame.map``
    promises arbitrary chunks, so this changes no result."""
    held: list[pa.Table] = []
    size = 0
    for b in batches:
        held.append(conform_types(b, schema))
        size += b.nbytes
        if size >= MAP_CHUNK_BYTES:
            yield concat(held, schema).combine_chunks()
            held, size = [], 0
    if held:
        yield concat(held, schema).combine_chunks()


class SparkBroadcast(Broadcast):
    def __init__(self, bc: Any) -> None:  # a pyspark Broadcast: pickles by id, loaded once per worker
        self._bc = bc

    @property
    def value(self) -> Any:
        return self._bc.value


class SparkFrame(Frame):
    def __init__(self, ops: SparkOps, df: Any, schema: pa.Schema):
        self.ops, self.df, self.schema = ops, df, schema

    def _frame(self, df: Any, schema: pa.Schema) -> SparkFrame:
        return SparkFrame(self.ops, df, schema)

    def map(self, fn: Callable[..., pa.Table], schema: pa.Schema, *, args: tuple[Any, ...] = ()) -> SparkFrame:
        in_schema, name = self.schema, getattr(fn, "__name__", "map function")

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for chunk in _chunks(batches, in_schema):
                yield from _batches(check_out(fn(chunk, *args), schema, name))

        return self._frame(self.df.mapInArrow(run, spark_schema(schema)), schema)

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
    ) -> SparkFrame:
        keys, order_by, in_schema = list(keys), list(order_by), self.schema
        n = num_partitions or self.ops.shuffle_partitions()

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for whole in whole_groups((conform_types(b, in_schema) for b in batches), keys):
                yield from _batches(reduce_groups(whole, keys, order_by, fn, schema, batched, args))

        df = self.df.repartition(n, *keys).sortWithinPartitions(*keys)
        return self._frame(df.mapInArrow(run, spark_schema(schema)), schema)

    def aggregate(self, keys: Sequence[str], aggs: Sequence[tuple[str, str]], *, num_partitions: int | None = None) -> SparkFrame:
        from pyspark.sql import functions as F

        schema = aggregate_schema(self.schema, keys, aggs)
        fns = {"min": F.min, "max": F.max, "sum": F.sum, "count": F.count, "mean": F.avg}
        df = self.df
        if num_partitions:
            df = df.repartition(num_partitions, *keys)
        df = df.groupBy(*keys).agg(*[fns[f](c).alias(f"{c}_{f}") for c, f in aggs])
        return self._frame(df, schema)

    def join(self, other: Frame, on: Sequence[str], how: str = "inner", *, num_partitions: int | None = None) -> SparkFrame:
        if not isinstance(other, SparkFrame):
            raise TypeError("join: both frames must come from the same engine")
        schema = join_schema(self.schema, other.schema, on, how)
        left, right = self.df, other.df
        if num_partitions:
            left, right = left.repartition(num_partitions, *on), right.repartition(num_partitions, *on)
        return self._frame(left.join(right, on=list(on), how=how).select(*schema.names), schema)

    def count(self) -> int:
        return int(self.df.count())

    def collect(self) -> pa.Table:
        return canonical_sort(conform_types(self.df.toArrow(), self.schema))

    def cache(self) -> SparkFrame:
        from pyspark import StorageLevel

        frame = self._frame(self.df.persist(StorageLevel.MEMORY_AND_DISK), self.schema)
        self.ops._cached.append(frame.df)
        return frame

    def release(self) -> None:
        self.df.unpersist()

    def compact(self) -> SparkFrame:
        return self._frame(self.df.coalesce(max(1, self.ops.session.sparkContext.defaultParallelism)), self.schema)


class SparkOps(GlobalOps):
    engine = "spark"

    def __init__(self, engine: Any) -> None:
        self.spark_engine = engine
        self.session = engine.session
        self._cached: list[Any] = []

    def shuffle_partitions(self) -> int:
        return int(self.session.conf.get("spark.sql.shuffle.partitions"))

    def _profile(self, resources: Resources | None) -> dict[str, Any]:
        profile = self.spark_engine._profile(resources) if resources is not None else None
        return {"profile": profile} if profile is not None else {}

    def map_tasks(
        self,
        tasks: Sequence[PartitionTask],
        fn: Callable[..., pa.Table],
        schema: pa.Schema,
        *,
        read: bool | Sequence[str] = False,
        args: tuple[Any, ...] = (),
        resources: Resources | None = None,
    ) -> SparkFrame:
        if not tasks:
            return self.from_arrow(schema.empty_table())

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for b in batches:
                for task_json in b.column("task").to_pylist():
                    yield from _batches(map_task(task_json, fn, schema, read, args))

        df = self.spark_engine.descriptor_frame(list(tasks)).mapInArrow(run, spark_schema(schema), **self._profile(resources))
        return SparkFrame(self, df, schema)

    def from_arrow(self, table: pa.Table, num_partitions: int = 1) -> SparkFrame:
        df = self.session.createDataFrame(table, schema=spark_schema(table.schema))
        return SparkFrame(self, df.repartition(max(1, num_partitions)), table.schema)

    def broadcast(self, value: Any) -> Broadcast:
        return SparkBroadcast(self.session.sparkContext.broadcast(value))

    def slots(self, n: int) -> list[int]:
        """A value per slot ``i < n`` that Spark's hash partitioning sends to partition ``i``
        (``pmod(hash(v), n)``, the expression ``repartition(n, col)`` uses), so that each
        finishing task runs alone in one Spark partition, whatever AQE would coalesce."""
        cands = self.session.range(0, 32 * n).selectExpr("id", f"pmod(hash(id), {n}) AS p").toArrow()
        first: dict[int, int] = {}
        for v, p in zip(cands.column("id").to_pylist(), cands.column("p").to_pylist()):
            first.setdefault(p, v)
        spare = (v for v in range(32 * n, 64 * n) if v not in first.values())
        return [first[i] if i in first else next(spare) for i in range(n)]  # a missing slot only costs balance

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
        tasks = list(tasks)
        if not tasks:
            return []
        if rows is not None and not isinstance(rows, SparkFrame):
            raise TypeError("finish: rows must come from the same engine")
        n = len(tasks)
        slots = self.slots(n)
        work = self.session.createDataFrame(descriptors(tasks, slots), schema=spark_schema(PACKED_SCHEMA))
        row_schema = rows.schema if rows is not None else pa.schema([])
        if rows is not None:
            slot_of = {t.partition: s for t, s in zip(tasks, slots)}

            def pack(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                for b in batches:
                    yield from _batches(pack_rows(pa.Table.from_batches([b]), key, slot_of, row_schema))

            work = work.unionByName(rows.df.mapInArrow(pack, spark_schema(PACKED_SCHEMA)))
        work = work.repartition(n, "__slot").sortWithinPartitions("__key")
        sc = self.session.sparkContext
        acc = sc.accumulator([], _RecordList())

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            tables = (conform_types(b, PACKED_SCHEMA) for b in batches)
            for part, record in finish_packed(tables, key, row_schema, fn, args):
                acc.add([record])
                yield pa.RecordBatch.from_pydict({"partition": pa.array([part], pa.int32()), "record": pa.array([record])})

        result = work.mapInArrow(run, RECORDS, **self._profile(resources))
        return _collect_records(sc, result, acc, on_commit)

    def close(self) -> None:
        for df in self._cached:
            df.unpersist()
        self._cached.clear()


class _RecordList(AccumulatorParam):
    """Commit records (JSON) of finished Spark tasks, sent to the driver as each task ends."""

    def zero(self, value: list[str]) -> list[str]:
        return []

    def addInPlace(self, a: list[str], b: list[str]) -> list[str]:  # noqa: N802 - pyspark's name
        a.extend(b)
        return a


def _collect_records(sc: Any, result: Any, acc: Any, on_commit: OnCommit | None) -> list[dict[str, Any]]:
    """Collect the records while a thread reports each one as its Spark task's accumulator
    update arrives; what has not arrived when the job ends is reported then."""
    reported: set[int] = set()
    lock = threading.Lock()

    def report(records: list[dict[str, Any]]) -> None:
        with lock:
            for rec in records:
                if rec["partition"] not in reported:
                    reported.add(rec["partition"])
                    if on_commit is not None:
                        on_commit(rec)

    done = threading.Event()

    def poll() -> None:
        seen = 0
        while not done.wait(0.3):
            values = list(acc.value)
            if len(values) > seen:
                report([json.loads(v) for v in values[seen:]])
                seen = len(values)

    group = f"arcforge-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, "arcforge global stage", interruptOnCancel=True)
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        rows = result.collect()
    finally:
        done.set()
        thread.join()
        sc.setLocalProperty("spark.jobGroup.id", None)
    records = [json.loads(r["record"]) for r in rows]
    report(records)
    return records
