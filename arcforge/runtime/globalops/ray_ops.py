"""Global operations on Ray: Ray Data for the per-task maps, a hash-partitioned shuffle on
Ray tasks for everything that brings rows together.

* ``map_tasks`` and ``Frame.map``: ``from_items(descriptors)`` (one block per task) and
  ``map_batches``, with the stage's CPUs and GPUs.
* The shuffle (``group_reduce``, ``aggregate``, ``join``, ``finish``): the frame's blocks
  stay in the object store (``to_arrow_refs``; the driver holds references, never rows);
  a split task per group of blocks cuts its rows into ``n`` shards by a hash of the keys
  (``num_returns=n``), and a reduce task per partition concatenates its shards and runs
  the reduction there. The result is a Dataset again (``from_arrow_refs``).
* ``aggregate`` pre-aggregates each group of blocks before the shuffle (a combiner).
* ``finish``: shard ``i`` holds the rows of the ``i``-th pending task; one Ray task per
  pending task runs the finishing function and its record is reported on the driver as
  it completes (``ray.wait``).
* ``broadcast``: ``ray.put``; workers ``ray.get`` it once per process.

Why not Ray Data's own ``groupby``/``repartition(keys=...)``/``Dataset.join`` (all exist in
2.60): its map operators pass an empty input block through unchanged, with its old schema,
and the hash shuffle's reducer then fails to concatenate it with the other shards
(``ArrowInvalid: Schema at index 1 was different``), e.g. when a partition has no
duplicates; and every shuffle starts its own aggregator actors (seconds each on a small
machine). Here every block is conformed to the frame's schema on the worker, empty or not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.runtime.globalops import Broadcast, Frame, GlobalOps, OnCommit
from arcforge.runtime.globalops.common import (
    aggregate_schema,
    as_schema,
    bucket_of,
    canonical_sort,
    check_out,
    concat,
    finish_task,
    join_schema,
    local_join,
    map_task,
    reduce_groups,
    split_rows,
)
from arcforge.runtime.stage import Resources
from arcforge.runtime.tasks import PartitionTask

_BROADCAST_CACHE: dict[str, Any] = {}
SPLIT_BYTES = 128 << 20  # blocks handed to one split task
PARTITION_BYTES = 256 << 20  # rows per reduce partition, when the caller does not say


class RayBroadcast(Broadcast):
    def __init__(self, ref: Any) -> None:  # an ObjectRef; the driver's handle keeps it alive
        self._ref = ref

    @property
    def value(self) -> Any:
        key = self._ref.hex()
        if key not in _BROADCAST_CACHE:
            import ray

            _BROADCAST_CACHE[key] = ray.get(self._ref)
        return _BROADCAST_CACHE[key]


def _remote_args(resources: Resources | None) -> dict[str, Any]:
    if resources is None:
        return {}
    res = {"num_cpus": resources.cpus, "num_gpus": resources.gpus or None}
    return {k: v for k, v in res.items() if v}


# ---------------------------------------------------------------------------- tasks of the shuffle

_REMOTES: dict[str, Any] = {}


def _remote(fn: Callable[..., Any]) -> Any:
    import ray

    if fn.__name__ not in _REMOTES:
        _REMOTES[fn.__name__] = ray.remote(fn)
    return _REMOTES[fn.__name__]


def _nbytes(block: pa.Table) -> int:
    return int(block.nbytes)


def _split(schema: pa.Schema, route: Callable[[pa.Table], np.ndarray], n: int, pre: Any, *blocks: pa.Table) -> Any:
    """Rows of some blocks (pre-aggregated by ``pre``) cut into ``n`` shards by ``route``."""
    t = concat([as_schema(b, schema) for b in blocks], schema)
    if pre is not None:
        t = pre(t)
    shards = split_rows(t, route(t), n)
    return shards[0] if n == 1 else tuple(shards)


def _reduce(fn: Callable[..., pa.Table], args: tuple[Any, ...], schema: pa.Schema, *shards: pa.Table) -> pa.Table:
    return fn(concat(list(shards), schema), *args)


def _reduce2(fn: Callable[..., pa.Table], args: tuple[Any, ...], ls: pa.Schema, nl: int, rs: pa.Schema, *shards: pa.Table) -> pa.Table:
    return fn(concat(list(shards[:nl]), ls), concat(list(shards[nl:]), rs), *args)


def _finish_one(task_json: str, key: str, schema: pa.Schema, fn: Callable[..., Any], args: tuple[Any, ...], *shards: pa.Table) -> str:
    return finish_task(task_json, concat(list(shards), schema), key, fn, args)


class _HashRoute:
    def __init__(self, keys: Sequence[str], n: int):
        self.keys, self.n = list(keys), n

    def __call__(self, t: pa.Table) -> np.ndarray:
        return bucket_of(t, self.keys, self.n)


class _TaskRoute:
    """Shard ``i`` gets the rows whose key is the ``i``-th task's partition; the others go to
    the last shard, which nobody reads (their partitions are committed already)."""

    def __init__(self, key: str, partitions: list[int]):
        self.key, self.partitions = key, partitions

    def __call__(self, t: pa.Table) -> np.ndarray:
        values = pa.array(self.partitions, t.schema.field(self.key).type)
        idx = pc.index_in(t.column(self.key), value_set=values)
        return pc.fill_null(idx, len(self.partitions)).to_numpy(zero_copy_only=False).astype(np.int64)


# ---------------------------------------------------------------------------- partial aggregates (the combiner)


def _partials(aggs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for c, f in aggs:
        for p in ((c, "sum"), (c, "count")) if f == "mean" else ((c, f),):
            if p not in out:
                out.append(p)
    return out


class _PreAggregate:
    def __init__(self, keys: Sequence[str], aggs: Sequence[tuple[str, str]]):
        self.keys, self.parts = list(keys), _partials(aggs)

    def __call__(self, t: pa.Table) -> pa.Table:
        return t.group_by(self.keys, use_threads=False).aggregate(self.parts)


def _final_aggregate(t: pa.Table, keys: list[str], aggs: list[tuple[str, str]], schema: pa.Schema) -> pa.Table:
    if t.num_rows == 0:
        return schema.empty_table()
    merge = {"min": "min", "max": "max", "sum": "sum", "count": "sum"}
    parts = _partials(aggs)
    res = t.group_by(keys, use_threads=False).aggregate([(f"{c}_{f}", merge[f]) for c, f in parts])
    cols = {k: res.column(k) for k in keys}
    for c, f in aggs:
        if f == "mean":
            s = res.column(f"{c}_sum_sum").to_numpy(zero_copy_only=False).astype(np.float64)
            n = res.column(f"{c}_count_sum").to_numpy(zero_copy_only=False)
            cols[f"{c}_mean"] = pa.array(np.where(n > 0, s / np.maximum(n, 1), np.nan), mask=n == 0)
        else:
            cols[f"{c}_{f}"] = res.column(f"{c}_{f}_{merge[f]}")
    return as_schema(pa.table(cols), schema)


def _reduce_join(left: pa.Table, right: pa.Table, on: list[str], how: str, schema: pa.Schema) -> pa.Table:
    return local_join(left, right, on, how, schema)


# ---------------------------------------------------------------------------- frames


def _cluster_cpus() -> int:
    """The CPUs of the Ray cluster: how many partitions a shuffle or ``compact`` aims for."""
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


class RayFrame(Frame):
    def __init__(self, ops: RayOps, ds: Any, schema: pa.Schema):
        self.ops, self.ds, self.schema = ops, ds, schema

    def _frame(self, ds: Any, schema: pa.Schema) -> RayFrame:
        return RayFrame(self.ops, ds, schema)

    def _blocks(self) -> tuple[list[list[Any]], int, int]:
        """Run the frame: its blocks (references, grouped for the split tasks), their bytes and number."""
        import ray

        refs = self.ds.to_arrow_refs()
        sizes = ray.get([_remote(_nbytes).remote(r) for r in refs])
        groups: list[list[Any]] = []
        cur: list[Any] = []
        cur_bytes = 0
        for ref, size in zip(refs, sizes):
            if cur and cur_bytes + size > SPLIT_BYTES:
                groups.append(cur)
                cur, cur_bytes = [], 0
            cur.append(ref)
            cur_bytes += size
        if cur:
            groups.append(cur)
        return groups, int(sum(sizes)), len(refs)

    def _shards(self, groups: list[list[Any]], route: Any, n: int, pre: Any = None) -> list[list[Any]]:
        """Run the split tasks; ``shards[i]`` are the references of partition ``i``."""
        split = _remote(_split).options(num_returns=n)
        out = [split.remote(self.schema, route, n, pre, *g) for g in groups]
        return [[o if n == 1 else o[i] for o in out] for i in range(n)]

    @staticmethod
    def _n(num_partitions: int | None, nbytes: int, nblocks: int) -> int:
        """Partitions of a shuffle: as asked, else one per CPU (no more than there are input
        blocks), more when a partition would exceed ``PARTITION_BYTES``."""
        if num_partitions:
            return num_partitions
        return max(1, min(_cluster_cpus(), nblocks), math.ceil(nbytes / PARTITION_BYTES))

    def _reduced(self, refs: list[Any], schema: pa.Schema) -> RayFrame:
        import ray

        return self._frame(ray.data.from_arrow_refs(refs) if refs else ray.data.from_arrow(schema.empty_table()), schema)

    def map(self, fn: Callable[..., pa.Table], schema: pa.Schema, *, args: tuple[Any, ...] = ()) -> RayFrame:
        in_schema, name = self.schema, getattr(fn, "__name__", "map function")

        def run(t: pa.Table) -> pa.Table:
            return check_out(fn(as_schema(t, in_schema), *args), schema, name)

        return self._frame(self.ds.map_batches(run, batch_format="pyarrow"), schema)

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
    ) -> RayFrame:
        groups, nbytes, nblocks = self._blocks()
        n = self._n(num_partitions, nbytes, nblocks)
        reduce = _remote(_reduce)
        fn_args = (list(keys), list(order_by), fn, schema, batched, args)
        refs = [reduce.remote(reduce_groups, fn_args, self.schema, *s) for s in self._shards(groups, _HashRoute(keys, n), n)]
        return self._reduced(refs, schema)

    def aggregate(self, keys: Sequence[str], aggs: Sequence[tuple[str, str]], *, num_partitions: int | None = None) -> RayFrame:
        schema = aggregate_schema(self.schema, keys, aggs)
        groups, nbytes, nblocks = self._blocks()
        n = self._n(num_partitions, nbytes, nblocks)
        pre = _PreAggregate(keys, aggs)
        part_schema = pre(self.schema.empty_table()).schema
        reduce = _remote(_reduce)
        shards = self._shards(groups, _HashRoute(keys, n), n, pre)
        refs = [reduce.remote(_final_aggregate, (list(keys), list(aggs), schema), part_schema, *s) for s in shards]
        return self._reduced(refs, schema)

    def join(self, other: Frame, on: Sequence[str], how: str = "inner", *, num_partitions: int | None = None) -> RayFrame:
        if not isinstance(other, RayFrame):
            raise TypeError("join: both frames must come from the same engine")
        schema = join_schema(self.schema, other.schema, on, how)
        lgroups, lbytes, lblocks = self._blocks()
        rgroups, rbytes, rblocks = other._blocks()
        n = self._n(num_partitions, lbytes + rbytes, max(lblocks, rblocks))
        left, right = self._shards(lgroups, _HashRoute(on, n), n), other._shards(rgroups, _HashRoute(on, n), n)
        reduce = _remote(_reduce2)
        refs = [
            reduce.remote(_reduce_join, (list(on), how, schema), self.schema, len(ls), other.schema, *ls, *rs)
            for ls, rs in zip(left, right)
        ]
        return self._reduced(refs, schema)

    def count(self) -> int:
        return int(self.ds.count())

    def collect(self) -> pa.Table:
        import ray

        tables = [as_schema(t, self.schema) for t in ray.get(self.ds.to_arrow_refs())]
        return canonical_sort(concat(tables, self.schema))

    def cache(self) -> RayFrame:
        return self._frame(self.ds.materialize(), self.schema)

    def compact(self) -> RayFrame:
        return self._frame(self.ds.repartition(max(1, _cluster_cpus())), self.schema)


class RayOps(GlobalOps):
    engine = "ray"

    def __init__(self, engine: Any) -> None:
        engine.start()
        self.ray_engine = engine

    def map_tasks(
        self,
        tasks: Sequence[PartitionTask],
        fn: Callable[..., pa.Table],
        schema: pa.Schema,
        *,
        read: bool | Sequence[str] = False,
        args: tuple[Any, ...] = (),
        resources: Resources | None = None,
    ) -> RayFrame:
        import ray

        if not tasks:
            return self.from_arrow(schema.empty_table())

        def run(batch: pa.Table) -> pa.Table:
            return concat([map_task(tj, fn, schema, read, args) for tj in batch.column("task").to_pylist()], schema)

        items = [{"task": t.to_json()} for t in tasks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(run, batch_size=1, batch_format="pyarrow", **_remote_args(resources))
        return RayFrame(self, ds, schema)

    def from_arrow(self, table: pa.Table, num_partitions: int = 1) -> RayFrame:
        import ray

        step = max(1, -(-table.num_rows // max(1, num_partitions)))
        pieces = [table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)]
        return RayFrame(self, ray.data.from_arrow(pieces), table.schema)

    def broadcast(self, value: Any) -> Broadcast:
        import ray

        return RayBroadcast(ray.put(value))

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
        import ray

        tasks = list(tasks)
        if not tasks:
            return []
        if rows is not None and not isinstance(rows, RayFrame):
            raise TypeError("finish: rows must come from the same engine")
        row_schema = rows.schema if rows is not None else pa.schema([])
        if rows is not None:
            groups, _, _ = rows._blocks()
            route = _TaskRoute(key, [t.partition for t in tasks])
            shards = rows._shards(groups, route, len(tasks) + 1)[: len(tasks)]
        else:
            shards = [[] for _ in tasks]
        one = _remote(_finish_one).options(**_remote_args(resources))
        pending = {one.remote(t.to_json(), key, row_schema, fn, args, *s): t for t, s in zip(tasks, shards)}
        records = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(ready[0])
            rec = json.loads(ray.get(ready[0]))
            if on_commit is not None:
                on_commit(rec)
            records.append(rec)
        return records
