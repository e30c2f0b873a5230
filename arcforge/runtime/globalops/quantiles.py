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

The driver only ever receives these per-range counts (at most ``BUCKETS`` rows per open
range), never a row. A range is cut 4096-fold per pass, so the 64-bit key space is down
to one key after at most 6 passes, usually 2 or 3: a range whose values are all equal is
final.

* **exact**: order statistics ``floor(q*(n-1))`` and the next one, combined by numpy's
  own ``linear`` formula, so the result is the float ``numpy.nanquantile`` gives.
* **approximate** (``rank_error=e``): stops as soon as the range holding rank ``k`` has at
  most ``e*n`` values and returns the smallest value in it: a value of the column whose
  rank is within ``e*n`` of ``q*(n-1)``. Usually one or two passes.
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
HIST = pa.schema([("iv", pa.int32()), ("b", pa.int32()), ("n", pa.int64()), ("vmin", pa.float64()), ("vmax", pa.float64())])


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


def _histogram(table: pa.Table, intervals: list[tuple[int, int, int, int, int]]) -> pa.Table:
    """Per interval (id, series, lo key, hi key, width): count (sum of weights, weighted), min
    and max value per bucket, over the rows of that series. The intervals of one series are
    disjoint (each pass cuts every open range to the same depth), so each row is found in its
    series' intervals with one ``searchsorted``: a Python step per series, not per interval
    (64 groups of 3 scores have up to 64 x 3 x 19 open ranges at once)."""
    g = table.column("__g").to_numpy()
    order = np.argsort(g, kind="stable")  # each series one contiguous slice
    g, v = g[order], table.column("v").to_numpy()[order]
    w = table.column("w").to_numpy()[order] if "w" in table.column_names else None
    keys = float_keys(v)
    per_series: dict[int, list[tuple[int, int, int, int]]] = {}
    for iv, series, lo, hi, width in intervals:
        per_series.setdefault(series, []).append((lo, hi, width, iv))
    out = []
    for series, spans in per_series.items():
        a, b_ = np.searchsorted(g, series, "left"), np.searchsorted(g, series, "right")
        if a == b_:
            continue
        spans.sort()
        los, his, widths = (np.array([s[i] for s in spans], dtype=np.uint64) for i in range(3))
        ids = np.array([s[3] for s in spans], dtype=np.int64)
        k = keys[a:b_]
        j = np.searchsorted(los, k, "right") - 1
        jj = np.maximum(j, 0)
        inside = (j >= 0) & (k <= his[jj])
        if not inside.any():
            continue
        jj, k, vv = jj[inside], k[inside], v[a:b_][inside]
        cell = jj.astype(np.int64) * BUCKETS + ((k - los[jj]) // widths[jj]).astype(np.int64)  # bucket < BUCKETS
        order = np.argsort(cell, kind="stable")
        cell, vv = cell[order], vv[order]
        uniq, first, counts = np.unique(cell, return_index=True, return_counts=True)
        if w is not None:
            counts = np.add.reduceat(w[a:b_][inside][order], first)
        out.append(pa.table({
            "iv": pa.array(ids[uniq // BUCKETS].astype(np.int32)), "b": pa.array((uniq % BUCKETS).astype(np.int32)),
            "n": pa.array(counts.astype(np.int64)), "vmin": pa.array(np.minimum.reduceat(vv, first)),
            "vmax": pa.array(np.maximum.reduceat(vv, first)),
        }, schema=HIST))
    return pa.concat_tables(out) if out else HIST.empty_table()


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
) -> dict[Any, list[float]]:
    """Each column's quantiles, keyed by column; with ``by``, within each of ``groups`` (values
    of that string column, ``None`` for its nulls), keyed ``(group, column)``. Rows of a group
    not listed count nowhere. One selection for all of them (the module docstring)."""
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
        ns, found = _select(values, len(series), qs, exact, rank_error, weights is not None)
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


def _histograms(values: Any, spans: list[Span]) -> tuple[list[tuple[int, int, int, int, int]], dict[int, list[tuple[int, int, float, float]]]]:
    """One pass: per (series, key span), (bucket, count, min value, max value) of its non-empty buckets."""
    intervals = [(i, g, lo, hi, -(-(hi - lo + 1) // BUCKETS)) for i, (g, lo, hi) in enumerate(spans)]
    hist = (
        values.map(_histogram, HIST, args=(intervals,))
        .aggregate(["iv", "b"], [("n", "sum"), ("vmin", "min"), ("vmax", "max")], num_partitions=1)
        .collect()
    )
    by_iv: dict[int, list[tuple[int, int, float, float]]] = {}
    for row in zip(*(hist.column(c).to_pylist() for c in ("iv", "b", "n_sum", "vmin_min", "vmax_max"))):
        by_iv.setdefault(row[0], []).append(row[1:])
    return intervals, {i: sorted(rows) for i, rows in by_iv.items()}


def _select(values: Any, n_series: int, qs: list[float], exact: bool, rank_error: float,
            weighted: bool = False) -> tuple[list[int], list[dict[int, float]]]:
    """Per series, the number of values (weighted: their total weight) and the value at each
    wanted rank (exact), or a value within ``rank_error*n`` ranks of it. The first pass spans
    every key of every series (one bucket per sign and exponent) and also counts the values;
    each later pass cuts the open span of every (series, rank) still open."""
    full = (0, (1 << 64) - 1)
    spans: list[Span] = [(g, *full) for g in range(n_series)]
    intervals, by_iv = _histograms(values, spans)
    ns = [sum(cnt for _, cnt, _, _ in by_iv.get(g, [])) for g in range(n_series)]  # interval g is series g's
    limits = [max(1, math.floor(rank_error * n)) for n in ns]
    # (series, rank): lo, hi, weight below lo
    open_: dict[tuple[int, int], tuple[int, int, int]] = {
        (g, r): (*full, 0) for g, n in enumerate(ns) if n for r in _ranks(n, qs, exact, weighted)}
    found: list[dict[int, float]] = [{} for _ in range(n_series)]
    while open_:
        index = {span: i for i, span in enumerate(spans)}
        nxt: dict[tuple[int, int], tuple[int, int, int]] = {}
        for (g, r), (lo, hi, below) in open_.items():
            i = index[(g, lo, hi)]
            width = intervals[i][4]
            seen = below
            for b, cnt, vmin, vmax in by_iv.get(i, []):
                if seen + cnt > r:
                    if vmin == vmax or (not exact and cnt <= limits[g]):
                        found[g][r] = vmin
                    else:
                        nlo = lo + b * width
                        nxt[(g, r)] = (nlo, min(hi, nlo + width - 1), seen)
                    break
                seen += cnt
            else:  # cannot happen: the interval holds rank r
                raise AssertionError(f"series {g}: rank {r} not found in its key interval")
        if nxt:
            spans = sorted({(g, lo, hi) for (g, _), (lo, hi, _) in nxt.items()})
            intervals, by_iv = _histograms(values, spans)
        open_ = nxt
    return ns, found
