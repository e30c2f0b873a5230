"""What every engine's global operations share: the worker-side wrappers around user
functions, group splitting, the canonical row order, the aggregate and join schemas.

The engines differ only in how rows move (a Spark shuffle, a Ray Data hash shuffle,
Parquet spill files in one process); what happens to the rows once they are on a
worker is this module's code on every engine, which is why the results agree.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.runtime import storage
from arcforge.runtime.storage import S3Options
from arcforge.runtime.tasks import PartitionTask, failure_line

AGGREGATES = ("min", "max", "sum", "count", "mean")


# ---------------------------------------------------------------------------- schemas and tables


def check_out(table: pa.Table | pa.RecordBatch, schema: pa.Schema, what: str) -> pa.Table:
    """A user function's output as the declared schema: same column names, cast types.

    A missing or extra column is an error that names the function, rather than a
    column of nulls or a dropped column on one engine and not another."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise TypeError(f"{what} returned {type(table).__name__}, not a pyarrow Table")
    names = table.column_names
    if set(names) != set(schema.names) or len(names) != len(schema.names):
        raise ValueError(f"{what} returned columns {names}, but declared {schema.names}")
    return conform_types(table, schema)


def conform_types(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """Select ``schema``'s columns in its order, cast to its types (an engine may hand back
    ``large_string`` for ``string``, ``int64`` for ``int32``)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    cols = []
    for f in schema:
        col = table.column(f.name)
        cols.append(col if col.type == f.type else col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def concat(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def sortable(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
        or pa.types.is_large_binary(t) or pa.types.is_temporal(t) or pa.types.is_decimal(t)
    )


def canonical_sort(table: pa.Table, first: Sequence[str] = ()) -> pa.Table:
    """Rows in the canonical order: by ``first``, then every other sortable column in schema
    order, ascending, nulls first. Rows that tie on every sortable column are equal as far
    as any deterministic consumer can tell, unless they differ in a list or struct column."""
    if table.num_rows < 2:
        return table
    cols = list(dict.fromkeys([*first, *(f.name for f in table.schema if sortable(f.type))]))
    if not cols:
        return table
    return table.sort_by([(c, "ascending", "at_start") for c in cols])


def bucket_of(table: pa.Table, keys: Sequence[str], n: int) -> np.ndarray:
    """Bucket of each row by a hash of its keys (deterministic: polars' seeded row hash)."""
    import polars as pl

    if n == 1:
        return np.zeros(table.num_rows, dtype=np.int64)
    sel = table.select(list(keys))
    sel = sel.cast(pa.schema([f.with_type(pa.large_string() if pa.types.is_string(f.type) else f.type) for f in sel.schema]))
    return (pl.from_arrow(sel, rechunk=False).hash_rows(seed=0) % n).cast(pl.Int64).to_numpy()


def split_rows(table: pa.Table, part: np.ndarray, n: int) -> list[pa.Table]:
    """The rows of ``table`` cut into ``n`` tables by ``part`` (each row's table index)."""
    if n == 1:
        return [table]
    order = np.argsort(part, kind="stable")
    counts = np.bincount(part, minlength=n)
    table = table.take(pa.array(order))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return [table.slice(int(offsets[i]), int(counts[i])) for i in range(n)]


def as_schema(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """``conform_types``, except that an empty block of any shape (an engine may pass an
    empty block through a map untouched, with its old schema) becomes ``schema``'s."""
    if table.num_rows == 0:
        return schema.empty_table()
    return conform_types(table, schema)


def group_starts(table: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """Row index where each group starts, for a table sorted (or at least grouped) by ``keys``.

    Nulls form their own group; ``group_starts(t, k)[0] == 0`` for a non-empty table."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    differ = np.zeros(n - 1, dtype=bool)
    for k in keys:
        col = table.column(k).combine_chunks() if isinstance(table.column(k), pa.ChunkedArray) else table.column(k)
        a, b = col.slice(1), col.slice(0, n - 1)
        ne = pc.fill_null(pc.not_equal(a, b), False).to_numpy(zero_copy_only=False)
        na = pc.is_null(a).to_numpy(zero_copy_only=False)
        nb = pc.is_null(b).to_numpy(zero_copy_only=False)
        differ |= ne | (na != nb)
    return np.concatenate([[0], np.nonzero(differ)[0] + 1]).astype(np.int64)


def group_index(table: pa.Table, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(starts, first): the start of each group and, per row, the index of its group's first row."""
    starts = group_starts(table, keys)
    sizes = np.diff(np.append(starts, table.num_rows))
    return starts, np.repeat(starts, sizes)


def _same_key(a: pa.Table, i: int, b: pa.Table, j: int, keys: Sequence[str]) -> bool:
    return a.select(list(keys)).slice(i, 1).to_pylist() == b.select(list(keys)).slice(j, 1).to_pylist()


def whole_groups(tables: Iterable[pa.Table], keys: Sequence[str]) -> Iterator[pa.Table]:
    """Re-cut a stream of tables sorted by ``keys`` into tables that hold only whole groups.

    A group that spans several input tables is held until it ends; its pieces are
    concatenated once (never re-concatenated per batch)."""
    held: list[pa.Table] = []
    for t in tables:
        if t.num_rows == 0:
            continue
        starts = group_starts(t, keys)
        continues = bool(held) and _same_key(held[-1], held[-1].num_rows - 1, t, 0, keys)
        if continues and len(starts) == 1:
            held.append(t)
            continue
        done: list[pa.Table] = list(held)
        if continues:
            done.append(t.slice(0, int(starts[1])))
            lo = int(starts[1])
        else:
            lo = 0
        hi = int(starts[-1])
        if hi > lo:
            done.append(t.slice(lo, hi - lo))
        if done:
            yield pa.concat_tables(done) if len(done) > 1 else done[0]
        held = [t.slice(hi)]
    if held:
        yield pa.concat_tables(held) if len(held) > 1 else held[0]


# ---------------------------------------------------------------------------- worker-side calls


def reduce_groups(
    table: pa.Table,
    keys: Sequence[str],
    order_by: Sequence[str],
    fn: Callable[..., pa.Table],
    schema: pa.Schema,
    batched: bool,
    args: tuple[Any, ...],
) -> pa.Table:
    """Apply a group function to a table of whole groups (in any order).

    The rows are put in the canonical order (keys, ``order_by``, the other columns), so
    a function sees the same group in the same order on every engine and partitioning.
    ``batched``: one call with every group of the table; otherwise one call per group."""
    if table.num_rows == 0:
        return schema.empty_table()
    table = canonical_sort(table, [*keys, *order_by])
    name = getattr(fn, "__name__", "group function")
    if batched:
        return check_out(fn(table, *args), schema, name)
    starts = group_starts(table, keys)
    ends = np.append(starts[1:], table.num_rows)
    outs = [check_out(fn(table.slice(int(s), int(e - s)), *args), schema, name) for s, e in zip(starts, ends)]
    return concat(outs, schema)


def read_task_input(task: PartitionTask, read: bool | Sequence[str]) -> pa.Table:
    fs, path = storage.filesystem(task.input_uri, S3Options(**task.s3))
    columns = None if read is True else list(dict.fromkeys(read))
    return storage.read_parquet(fs, path, columns)


def call_task(task: PartitionTask, fn: Callable[..., Any], read: bool | Sequence[str], args: tuple[Any, ...]) -> Any:
    """Run ``fn`` for one partition task on a worker, as ``tasks.run_task`` runs a map task:
    the run's storage settings, retries of errors that may pass, and a failure line
    (``ARCFORGE_TASK_FAILED {...}``) that names the stage and partition."""
    opts = S3Options(**task.s3)
    storage.configure(opts)

    def once() -> Any:
        if read:
            return fn(task, read_task_input(task, read), *args)
        return fn(task, *args)

    try:
        return storage.retry_transient(once, options=opts, what=f"partition {task.partition}")
    except Exception as exc:
        raise RuntimeError(f"{failure_line(task, exc)}\n{traceback.format_exc()}") from exc


def map_task(task_json: str, fn: Callable[..., pa.Table], schema: pa.Schema, read: bool | Sequence[str], args: tuple[Any, ...]) -> pa.Table:
    task = PartitionTask.from_json(task_json)
    return check_out(call_task(task, fn, read, args), schema, getattr(fn, "__name__", "map function"))


def finish_task(task_json: str, rows: pa.Table, key: str, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> str:
    """One finishing call: the task's rows in canonical order, the commit record as JSON."""
    task = PartitionTask.from_json(task_json)
    record = call_task(task, lambda t, *a: fn(t, canonical_sort(rows, [key]), *a), False, args)
    return json.dumps(record)


# ---------------------------------------------------------------------------- aggregates and joins


def aggregate_schema(schema: pa.Schema, keys: Sequence[str], aggs: Sequence[tuple[str, str]]) -> pa.Schema:
    fields = [schema.field(k) for k in keys]
    for col, fn in aggs:
        if fn not in AGGREGATES:
            raise ValueError(f"aggregate {fn!r} is not one of {AGGREGATES}")
        t = schema.field(col).type
        if fn in ("min", "max"):
            out = t
        elif fn == "sum":
            out = pa.int64() if pa.types.is_integer(t) or pa.types.is_boolean(t) else pa.float64()
        elif fn == "count":
            out = pa.int64()
        else:
            out = pa.float64()
        fields.append(pa.field(f"{col}_{fn}", out))
    return pa.schema(fields)


def join_schema(left: pa.Schema, right: pa.Schema, on: Sequence[str], how: str) -> pa.Schema:
    if how not in ("inner", "left"):
        raise ValueError(f"join how must be 'inner' or 'left', not {how!r}")
    for k in on:
        if k not in left.names or k not in right.names:
            raise ValueError(f"join key {k!r} must be a column of both frames")
    clash = sorted((set(left.names) & set(right.names)) - set(on))
    if clash:
        raise ValueError(f"join: both frames have the non-key column(s) {clash}; rename one side first")
    extra = [f.with_nullable(True) if how == "left" else f for f in right if f.name not in on]
    return pa.schema([*left, *extra])


def local_join(left: pa.Table, right: pa.Table, on: Sequence[str], how: str, schema: pa.Schema) -> pa.Table:
    """A join of two in-memory tables that carries any column type: Acero joins row
    indices on the keys, and ``take`` brings the other columns along."""
    li = pa.table({**{k: left.column(k) for k in on}, "__li": pa.array(np.arange(left.num_rows, dtype=np.int64))})
    ri = pa.table({**{k: right.column(k) for k in on}, "__ri": pa.array(np.arange(right.num_rows, dtype=np.int64))})
    if left.num_rows == 0 or (right.num_rows == 0 and how == "inner"):
        return schema.empty_table()
    if right.num_rows == 0:
        pairs = pa.table({"__li": li.column("__li"), "__ri": pa.nulls(left.num_rows, pa.int64())})
    else:
        pairs = li.join(ri, keys=list(on), join_type="inner" if how == "inner" else "left outer", use_threads=False)
    lrows = left.take(pairs.column("__li"))
    cols = {f.name: lrows.column(f.name) for f in left.schema}
    rcols = [f.name for f in right.schema if f.name not in on]
    if rcols:
        rrows = right.select(rcols).take(pairs.column("__ri"))
        cols.update({c: rrows.column(c) for c in rcols})
    return conform_types(pa.table(cols), schema)
