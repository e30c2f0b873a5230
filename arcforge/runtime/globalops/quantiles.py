"""Quantiles of a numeric column, exact or approximate, written once against frames.

The algorithm is a distributed selection on the order-preserving 64-bit key of each
float64 value (the IEEE bits with the sign folded, so key order is value order):

1. the first pass cuts the whole key space into ``BUCKETS`` ranges (one per sign and
   exponent) and counts the values in each (nulls and NaN are left out, as
   ``numpy.nanquantile`` does), which also gives ``n`` and so the wanted ranks;
2. each later pass cuts the range that holds a wanted rank ``k`` into ``BUCKETS`` equal
   key ranges; workers count the values per range (and the smallest and largest value
   in it), the engine sums the counts by range, and the driver keeps the range that
   holds rank ``k``.

3. once the ranges still open hold at most ``FETCH_ROWS`` rows in all, the last pass
   brings those rows to the driver instead of counting them again, and the driver reads the
   wanted ranks off them, sorted.

The driver receives per-range counts (at most ``BUCKETS`` rows per open range), and rows
only in that last pass, at most ``FETCH_ROWS`` of them (2 MB). A range is cut 4096-fold per
pass, so the 64-bit key space is down to one key after at most 6 passes, usually 2 or 3
(a range whose values are all equal is final), and the last of those is the fetch.

* **exact**: order statistics ``floor(q*(n-1))`` and the next one, combined by numpy's
  own ``linear`` formula, so the result is the float ``numpy.nanquantile`` gives.
* **approximate** (``rank_error=e``): stops as soon as the range holding rank ``k`` has at
  most ``e*n`` values and returns the smallest value in it: a value of the column whose
  rank is within ``e*n`` of ``q*(n-1)`` (the exact one when the fetch comes first). Usually one
  or two passes.
* **weighted** (``weights="w"``, a non-negative integer column): every count above becomes
  a sum of weights, so a value of weight ``w`` stands for ``w`` copies of it, and the
  answer is numpy's ``method="inverted_cdf"`` with those weights (the only weighted method
  numpy has): the smallest value whose cumulative weight ``C`` has ``C / W >= q``, where
  ``W`` is the total weight. The comparison is numpy's own float64 ``C / W``, so the result
  is the same float for every ``q`` while ``W < 2**53``. Integer weights because their sums
  are exact on every engine (float sums are not). Rows with a null weight or weight 0 are
  left out, as numpy leaves out zero weights; a negative weight is an error.

**Several series at once** (``quantiles_by``): the quantiles of several columns, and of each
column within groups of a string column, are selected together. Every row carries its series
id (``__g``), each pass cuts the open range of every series at once, and the histograms of
all of them are one aggregation: the number of passes over the data is that of the hardest
series, not the sum over series. (``quality.buckets`` needs three scores times its groups;
one at a time that was a cached frame and three or four aggregation jobs per score and group.)

All are deterministic: counts are integer sums, so neither the engine nor the
partitioning changes the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from arcforge.runtime.globalops import Frame

BUCKETS = 4096
_SIGN = np.uint64(1 << 63)
VALUES = pa.schema([("__g", pa.int32()), ("v", pa.float64())])
WEIGHTED = pa.schema([("__g", pa.int32()), ("v", pa.float64()), ("w", pa.int64())])
HIST = pa.schema([("iv", pa.int32()), ("b", pa.int32()), ("n", pa.int64()), ("c", pa.int64()), ("vmin", pa.float64()),
                  ("vmax", pa.float64())])  # n: rows or, weighted, their weight; c: rows
LOCATED = pa.schema([("iv", pa.int32()), ("v", pa.float64()), ("w", pa.int64())])
FETCH_ROWS = 100_000  # open ranges holding at most this many rows in all are fetched, not cut again


def float_keys(v: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float64 values (-0.0 counts as 0.0)."""
    bits = (np.asarray(v, dtype=np.float64) + 0.0).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def key_float(k: int) -> float:
    bits = np.uint64(k)
    bits = bits ^ _SIGN if bits & _SIGN else ~bits
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def in_group(values: Any, group: str | None) -> Any:
    """A boolean array: which of the string ``values`` are ``group`` (``None``: the nulls)."""
    return pc.is_null(values) if group is None else pc.fill_null(pc.equal(values, group), False)


def _values(table: pa.Table, series: list[tuple[str, str | None]], by: str | None, weights: str | None = None) -> pa.Table:
    """Series ``i`` (a column, within one group of ``by``) as rows ``(__g=i, v[, w])``: float64
    without nulls and NaN (and, weighted, without rows of null or zero weight), ``-0.0``
    made ``0.0``: one key, one value."""
    if weights is not None:
        w_all = pc.cast(table.column(weights), pa.int64())
        if pc.any(pc.less(w_all, 0)).as_py():
            raise ValueError(f"quantiles: the weight column {weights!r} has negative values")
        positive = pc.fill_null(pc.greater(w_all, 0), False)
    parts = []
    for i, (column, group) in enumerate(series):
        v = pc.cast(table.column(column), pa.float64())
        keep = pc.invert(pc.fill_null(pc.is_nan(v), True))
        if by is not None:
            keep = pc.and_(keep, in_group(table.column(by), group))
        if weights is not None:
            keep = pc.and_(keep, positive)
        v = pc.add(v.filter(keep), 0.0)
        cols = {"__g": pa.array(np.full(len(v), i, dtype=np.int32)), "v": v}
        if weights is not None:
            cols["w"] = w_all.filter(keep)
        parts.append(pa.table(cols, schema=WEIGHTED if weights is not None else VALUES))
    return pa.concat_tables(parts)


Interval = tuple[int, int, int, int, int]  # id (its index), series, lo key, hi key, width


def _locate(table: pa.Table, intervals: list[Interval]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows inside one of the intervals: (interval id, key, value, weight) of each (weight
    1 unweighted). The intervals of one series are disjoint (each pass cuts every open range
    to the same depth), so a row is found among its series' intervals with one
    ``searchsorted``: a Python step per series, not per interval (64 groups of 3 scores have
    up to 64 x 3 x 19 ranges open at once)."""
    g = table.column("__g").to_numpy()
    order = np.argsort(g, kind="stable")  # each series one contiguous slice
    g, v = g[order], table.column("v").to_numpy()[order]
    w = table.column("w").to_numpy()[order] if "w" in table.column_names else np.ones(len(v), dtype=np.int64)
    keys = float_keys(v)
    per_series: dict[int, list[tuple[int, int, int]]] = {}
    for iv, series, lo, hi, _ in intervals:
        per_series.setdefault(series, []).append((lo, hi, iv))
    found = []
    for series, spans in per_series.items():
        a, b = np.searchsorted(g, series, "left"), np.searchsorted(g, series, "right")
        if a == b:
            continue
        spans.sort()
        los, his = (np.array([s[i] for s in spans], dtype=np.uint64) for i in (0, 1))
        ids = np.array([s[2] for s in spans], dtype=np.int64)
        k = keys[a:b]
        j = np.searchsorted(los, k, "right") - 1
        jj = np.maximum(j, 0)
        inside = (j >= 0) & (k <= his[jj])
        found.append((ids[jj[inside]], k[inside], v[a:b][inside], w[a:b][inside]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.float64), np.zeros(0, np.int64)
    return tuple(np.concatenate(x) for x in zip(*found))  # type: ignore[return-value]


def _histogram(table: pa.Table, intervals: list[Interval]) -> pa.Table:
    """Per interval: rows, their count (sum of weights, weighted), min and max value per bucket."""
    ids, k, v, w = _locate(table, intervals)
    if not len(ids):
        return HIST.empty_table()
    lo = np.array([x[2] for x in intervals], dtype=np.uint64)
    width = np.array([x[4] for x in intervals], dtype=np.uint64)
    cell = ids * BUCKETS + ((k - lo[ids]) // width[ids]).astype(np.int64)  # a bucket is < BUCKETS
    order = np.argsort(cell, kind="stable")
    cell, v, w = cell[order], v[order], w[order]
    uniq, first, rows = np.unique(cell, return_index=True, return_counts=True)
    return pa.table({
        "iv": pa.array((uniq // BUCKETS).astype(np.int32)), "b": pa.array((uniq % BUCKETS).astype(np.int32)),
        "n": pa.array(np.add.reduceat(w, first).astype(np.int64)), "c": pa.array(rows.astype(np.int64)),
        "vmin": pa.array(np.minimum.reduceat(v, first)), "vmax": pa.array(np.maximum.reduceat(v, first)),
    }, schema=HIST)


def _located(table: pa.Table, intervals: list[Interval]) -> pa.Table:
    """The fetch: every row inside the intervals, with its interval id."""
    ids, _, v, w = _locate(table, intervals)
    return pa.table({"iv": pa.array(ids.astype(np.int32)), "v": pa.array(v), "w": pa.array(w)}, schema=LOCATED)


def numpy_linear(n: int, q: float, order_stat: dict[int, float]) -> float:
    """numpy's ``linear`` quantile from the order statistics it reads, with numpy's own float
    operations (including its clipping at the ends: the weight there is not 0, so an
    infinite extreme gives what numpy gives)."""
    vi = np.float64(n - 1) * np.float64(q)
    prev = np.floor(vi)
    nxt = prev + 1
    if vi >= n - 1:
        prev = nxt = np.float64(-1)
    if vi < 0:
        prev = nxt = np.float64(0)
    gamma = vi - prev
    a, b = np.float64(order_stat[int(prev) % n]), np.float64(order_stat[int(nxt) % n])
    with np.errstate(invalid="ignore"):
        diff = b - a
        res = a + diff * gamma
        if gamma >= 0.5:
            res = b - diff * (np.float64(1) - gamma)
    return float(res)


def wanted_ranks(n: int, qs: Sequence[float], exact: bool) -> list[int]:
    ranks: set[int] = set()
    for q in qs:
        vi = np.float64(n - 1) * np.float64(q)
        prev = min(max(int(np.floor(vi)), 0), n - 1)
        ranks.add(prev)
        if exact and prev + 1 < n and 0 <= vi < n - 1:
            ranks.add(prev + 1)
    return sorted(ranks)


def inverted_cdf_rank(total: int, q: float) -> int:
    """The 0-based weighted rank numpy's weighted ``inverted_cdf`` picks: ``C - 1`` for the
    smallest cumulative weight ``C`` (1..total) with ``float64(C) / float64(total) >= q``,
    numpy's own comparison (``cdf /= cdf[-1]``, then ``searchsorted(cdf, q, "left")``)."""
    w, qq = np.float64(total), np.float64(q)
    c = min(max(math.ceil(q * total), 1), total)
    while c > 1 and np.float64(c - 1) / w >= qq:
        c -= 1
    while c < total and np.float64(c) / w < qq:
        c += 1
    return c - 1


def _ranks(n: int, qs: Sequence[float], exact: bool, weighted: bool) -> list[int]:
    return sorted({inverted_cdf_rank(n, q) for q in qs}) if weighted else wanted_ranks(n, qs, exact)


def quantiles(
    frame: Frame, column: str, qs: Sequence[float], *, exact: bool = True, rank_error: float = 0.001,
    weights: str | None = None,
) -> list[float]:
    return quantiles_by(frame, [column], qs, exact=exact, rank_error=rank_error, weights=weights)[column]


def quantiles_by(
    frame: Frame, columns: Sequence[str], qs: Sequence[float], *, by: str | None = None,
    groups: Sequence[str | None] = (), exact: bool = True, rank_error: float = 0.001, weights: str | None = None,
    fetch_rows: int = FETCH_ROWS,
) -> dict[Any, list[float]]:
    """Each column's quantiles, keyed by column; with ``by``, within each of ``groups`` (values
    of that string column, ``None`` for its nulls), keyed ``(group, column)``. Rows of a group
    not listed count nowhere. One selection for all of them (the module docstring); ``fetch_rows``
    bounds the rows of its last pass (0: count until every rank is found)."""
    qs = [float(q) for q in qs]
    if any(not 0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must lie in [0, 1], got {qs}")
    if not exact and not 0.0 < rank_error < 1.0:
        raise ValueError(f"rank_error must lie in (0, 1), got {rank_error}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"quantiles: {list(columns)} names a column twice")
    for column in columns:
        field = frame.schema.field(column)
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)):
            raise TypeError(f"quantiles need a numeric column; {column!r} is {field.type}")
    if weights is not None:
        wtype = frame.schema.field(weights).type
        if not pa.types.is_integer(wtype):
            raise TypeError(f"quantile weights must be an integer column (exact sums); {weights!r} is {wtype}")
    if by is None:
        keys: list[Any] = list(columns)
        series = [(c, None) for c in columns]
    else:
        btype = frame.schema.field(by).type
        if not (pa.types.is_string(btype) or pa.types.is_large_string(btype)):
            raise TypeError(f"quantiles: by must name a string column; {by!r} is {btype}")
        keys = [(g, c) for g in dict.fromkeys(groups) for c in columns]
        series = [(c, g) for g, c in keys]
    # narrow rows (12 bytes, 20 weighted), read by every pass: few partitions, so a pass costs few tasks
    values = frame.map(_values, WEIGHTED if weights is not None else VALUES, args=(series, by, weights)).compact().cache()
    try:
        ns, found = _select(values, len(series), qs, exact, rank_error, weights is not None, fetch_rows)
    finally:
        values.release()
    return {key: _result(n, f, qs, exact, weights is not None) for key, n, f in zip(keys, ns, found)}


def _result(n: int, found: dict[int, float], qs: list[float], exact: bool, weighted: bool) -> list[float]:
    if n == 0:
        return [math.nan] * len(qs)
    if weighted:
        return [found[inverted_cdf_rank(n, q)] for q in qs]
    if exact:
        return [numpy_linear(n, q, found) for q in qs]
    return [found[wanted_ranks(n, [q], False)[0]] for q in qs]


Span = tuple[int, int, int]  # series, lo key, hi key
Open = dict[tuple[int, int], tuple[int, int, int]]  # (series, rank): lo, hi, weight below lo


def _intervals(spans: list[Span]) -> list[Interval]:
    return [(i, g, lo, hi, -(-(hi - lo + 1) // BUCKETS)) for i, (g, lo, hi) in enumerate(spans)]


def _histograms(values: Any, spans: list[Span]) -> tuple[list[Interval], dict[int, list[tuple[int, int, int, float, float]]]]:
    """One pass: per (series, key span), (bucket, count, rows, min value, max value) of its non-empty buckets."""
    intervals = _intervals(spans)
    hist = (
        values.map(_histogram, HIST, args=(intervals,))
        .aggregate(["iv", "b"], [("n", "sum"), ("c", "sum"), ("vmin", "min"), ("vmax", "max")], num_partitions=1)
        .collect()
    )
    by_iv: dict[int, list[tuple[int, int, int, float, float]]] = {}
    for row in zip(*(hist.column(c).to_pylist() for c in ("iv", "b", "n_sum", "c_sum", "vmin_min", "vmax_max"))):
        by_iv.setdefault(row[0], []).append(row[1:])
    return intervals, {i: sorted(rows) for i, rows in by_iv.items()}


def _fetch(values: Any, spans: list[Span], open_: Open, found: list[dict[int, float]]) -> None:
    """The last pass: the rows of the open spans on the driver, each wanted rank read off its
    span's rows sorted by value (their cumulative weight, counted from the weight below)."""
    rows = values.map(_located, LOCATED, args=(_intervals(spans),)).collect()
    iv, v, w = (rows.column(c).to_numpy() for c in ("iv", "v", "w"))
    order = np.lexsort((v, iv))
    iv, v, w = iv[order], v[order], w[order]
    index = {span: i for i, span in enumerate(spans)}
    for (g, r), (lo, hi, below) in open_.items():
        i = index[(g, lo, hi)]
        a, b = np.searchsorted(iv, i, "left"), np.searchsorted(iv, i, "right")
        at = int(np.searchsorted(np.cumsum(w[a:b]), r - below, "right"))
        if at >= b - a:  # cannot happen: the span holds rank r
            raise AssertionError(f"series {g}: rank {r} not among the fetched rows of its key interval")
        found[g][r] = float(v[a + at])


def _select(values: Any, n_series: int, qs: list[float], exact: bool, rank_error: float,
            weighted: bool = False, fetch_rows: int = FETCH_ROWS) -> tuple[list[int], list[dict[int, float]]]:
    """Per series, the number of values (weighted: their total weight) and the value at each
    wanted rank (exact), or a value within ``rank_error*n`` ranks of it. The first pass spans
    every key of every series (one bucket per sign and exponent) and also counts the values;
    each later pass cuts the open span of every (series, rank) still open, or, when they hold
    few rows, fetches them."""
    full = (0, (1 << 64) - 1)
    spans: list[Span] = [(g, *full) for g in range(n_series)]
    intervals, by_iv = _histograms(values, spans)
    ns = [sum(cnt for _, cnt, _, _, _ in by_iv.get(g, [])) for g in range(n_series)]  # interval g is series g's
    limits = [max(1, math.floor(rank_error * n)) for n in ns]
    open_: Open = {(g, r): (*full, 0) for g, n in enumerate(ns) if n for r in _ranks(n, qs, exact, weighted)}
    found: list[dict[int, float]] = [{} for _ in range(n_series)]
    while open_:
        index = {span: i for i, span in enumerate(spans)}
        nxt: Open = {}
        held: dict[Span, int] = {}  # rows of each next span
        for (g, r), (lo, hi, below) in open_.items():
            i = index[(g, lo, hi)]
            width = intervals[i][4]
            seen = below
            for b, cnt, rows, vmin, vmax in by_iv.get(i, []):
                if seen + cnt > r:
                    if vmin == vmax or (not exact and cnt <= limits[g]):
                        found[g][r] = vmin
                    else:
                        nlo = lo + b * width
                        nxt[(g, r)] = span = (nlo, min(hi, nlo + width - 1), seen)
                        held[(g, *span[:2])] = rows
                    break
                seen += cnt
            else:  # cannot happen: the interval holds rank r
                raise AssertionError(f"series {g}: rank {r} not found in its key interval")
        if not nxt:
            break
        spans = sorted(held)
        if sum(held.values()) <= fetch_rows:
            _fetch(values, spans, nxt, found)
            break
        intervals, by_iv = _histograms(values, spans)
        open_ = nxt
    return ns, found
