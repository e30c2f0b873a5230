"""Engine-neutral global operations: a global stage is written once against these and
runs on the local engine, Spark and Ray Data with the same results.

``ops = ctx.engine.ops()`` gives the engine's implementation (a context manager that
drops its temporary state on exit). The primitives:

* ``ops.map_tasks(tasks, fn, schema, read=..., args=...) -> Frame``: ``fn(task, *args)``
  (or ``fn(task, table, *args)`` when ``read`` names the input columns to read) runs
  once per partition task on the workers and returns an Arrow table of ``schema``.
* ``Frame``: a distributed, unordered multiset of Arrow rows of a declared schema.
  ``map``, ``group_reduce``, ``aggregate``, ``join``, ``quantiles`` (``quantiles_by``), ``count``,
  ``collect`` (small frames only), ``cache``/``release``, ``compact``.
* ``ops.broadcast(value) -> Broadcast``: a small artifact every worker function reads
  as ``bc.value`` (pass the handle in ``args``).
* ``ops.finish(tasks, fn, rows=frame, key="partition", on_commit=...) -> list[record]``:
  for each task, ``fn(task, rows_of_that_partition, *args) -> commit record`` on a
  worker (rows in canonical order); ``on_commit(record)`` is called on the driver as
  each one arrives. A global stage writes its parts here with ``tasks.commit_partition``.

Determinism: group functions and finishing functions see rows in the canonical order
(their keys, ``order_by``, then every other sortable column, ascending, nulls first),
and frames have no order, so results do not depend on the engine or the partitioning.
No per-row result is collected on the driver by any primitive except ``collect``.
See docs/global_ops.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from arcforge.runtime.globalops.common import canonical_sort, group_index, group_starts
from arcforge.runtime.stage import Resources
from arcforge.runtime.tasks import PartitionTask

OnCommit = Callable[[dict[str, Any]], None]

__all__ = ["Broadcast", "Frame", "GlobalOps", "canonical_sort", "group_index", "group_starts"]


class Broadcast:
    """A read-only value shipped once to every worker; read it with ``.value``."""

    def __init__(self, value: Any) -> None:
        self._value = value

    @property
    def value(self) -> Any:
        return self._value


class Frame(ABC):
    """An unordered multiset of Arrow rows of ``schema``, held by an engine."""

    schema: pa.Schema

    @abstractmethod
    def map(self, fn: Callable[..., pa.Table], schema: pa.Schema, *, args: tuple[Any, ...] = ()) -> Frame:
        """``fn(table, *args) -> table`` on chunks of rows. The chunks are arbitrary, so
        ``fn`` must treat rows independently (or its output be summed later)."""

    @abstractmethod
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
    ) -> Frame:
        """Group rows by ``keys`` and reduce each group with ``fn(group, *args) -> table``.

        A group's rows come in canonical order (keys, ``order_by``, the other sortable
        columns). ``batched=True`` hands ``fn`` several whole groups at once (sorted,
        use :func:`group_starts`), one call per chunk instead of per group; ``fn`` must
        then treat each group on its own."""

    @abstractmethod
    def aggregate(self, keys: Sequence[str], aggs: Sequence[tuple[str, str]], *, num_partitions: int | None = None) -> Frame:
        """Built-in reductions per group of ``keys``: ``[(column, "min"|"max"|"sum"|"count"|"mean")]``,
        output columns ``<column>_<fn>``. ``count`` counts non-null values. Float ``sum``
        and ``mean`` may differ in the last bits between engines (addition order);
        integer sums, counts, min and max are exact."""

    @abstractmethod
    def join(self, other: Frame, on: Sequence[str], how: str = "inner", *, num_partitions: int | None = None) -> Frame:
        """Equi-join on ``on`` (``how``: "inner" or "left"). Columns: this frame's, then the
        other's non-key columns (which must not clash). Null keys never match."""

    def quantiles(
        self, column: str, qs: Sequence[float], *, exact: bool = True, rank_error: float = 0.001, weights: str | None = None
    ) -> list[float]:
        """Quantiles of a numeric column (nulls and NaN ignored), a handful of floats on the
        driver. ``exact``: what ``numpy.nanquantile`` (method "linear") returns. Otherwise a
        value of the column whose rank is within ``rank_error * n`` of ``q * (n - 1)``.
        ``weights``: a non-negative integer column; counts become sums of it and the result
        is ``numpy.quantile(v, q, weights=w, method="inverted_cdf")`` (rows of null or zero
        weight left out), so percentile buckets can hold equal shares of tokens."""
        from arcforge.runtime.globalops.quantiles import quantiles

        return quantiles(self, column, qs, exact=exact, rank_error=rank_error, weights=weights)

    def quantiles_by(
        self, columns: Sequence[str], qs: Sequence[float], *, by: str | None = None, groups: Sequence[str | None] = (),
        exact: bool = True, rank_error: float = 0.001, weights: str | None = None, fetch_rows: int | None = None,
    ) -> dict[Any, list[float]]:
        """``quantiles`` of several columns at once (keyed by column), or of each column within
        each of ``groups`` of the string column ``by`` (``None``: its nulls; keyed
        ``(group, column)``): one selection for all of them, so the passes over the rows are
        those of the hardest one rather than one selection per column and group. ``fetch_rows``:
        the most rows its last pass brings to the driver (default ``quantiles.FETCH_ROWS``)."""
        from arcforge.runtime.globalops.quantiles import FETCH_ROWS, quantiles_by

        return quantiles_by(self, columns, qs, by=by, groups=groups, exact=exact, rank_error=rank_error, weights=weights,
                            fetch_rows=FETCH_ROWS if fetch_rows is None else fetch_rows)

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def collect(self) -> pa.Table:
        """Every row on the driver, in canonical order: for small frames (a centroid table,
        aggregated counts, tests), never for per-row results of a large dataset."""

    def cache(self) -> Frame:
        """Keep the rows computed (Spark persist, Ray materialize) when read more than once."""
        return self

    def compact(self) -> Frame:
        """The same rows in about one partition per worker slot, merged without a shuffle
        (Spark ``coalesce``, Ray ``repartition``; the local engine has no per-task cost). For a
        narrow frame that several passes read, then ``cache``: a Spark task costs about 50 ms
        whatever it holds, so three histogram passes over a frame of 21 small partitions took
        3 s on ``local[2]`` and 0.8 s over 2. The work before it runs in as many tasks, so a
        large upstream computation is better cached at full width first."""
        return self

    def release(self) -> None:
        """Drop what ``cache`` kept."""


class GlobalOps(ABC):
    """One engine's implementation of the primitives (see the module docstring)."""

    engine: str

    @abstractmethod
    def map_tasks(
        self,
        tasks: Sequence[PartitionTask],
        fn: Callable[..., pa.Table],
        schema: pa.Schema,
        *,
        read: bool | Sequence[str] = False,
        args: tuple[Any, ...] = (),
        resources: Resources | None = None,
    ) -> Frame:
        """One call per task on the workers; ``read``: hand ``fn`` the task's input part
        (True: every column, a list: those columns) as ``fn(task, table, *args)``."""

    @abstractmethod
    def from_arrow(self, table: pa.Table, num_partitions: int = 1) -> Frame:
        """A frame from a small driver-side table (a centroid table, test data)."""

    @abstractmethod
    def broadcast(self, value: Any) -> Broadcast: ...

    @abstractmethod
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
        """``fn(task, rows, *args) -> record`` once per task, ``rows`` being the rows of
        ``rows`` whose ``key`` equals ``task.partition`` (an empty table when none), in
        canonical order. Records are small and come back to the driver."""

    def close(self) -> None:
        """Drop temporary state (spill files, cached frames)."""

    def __enter__(self) -> GlobalOps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
