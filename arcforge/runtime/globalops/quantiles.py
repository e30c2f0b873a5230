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


def _values(table: pa.Table, column: str, weights: str | None = None) -> pa.Table:
    """The column as float64 without nulls and NaN (and, weighted, without rows of null or
    zero weight), ``-0.0`` made ``0.0``: one key, one value."""
    v = pc.cast(table.column(column), pa.float64())
    keep = pc.invert(pc.fill_null(pc.is_nan(v), True))
    if weights is None:
        v = pc.add(v.filter(keep), 0.0)
        return pa.table({"__g": pa.array(np.zeros(len(v), dtype=np.int32)), "v": v}, schema=VALUES)
    w = pc.cast(table.column(weights), pa.int64())
    if pc.any(pc.less(w, 0)).as_py():
        raise ValueError(f"quantiles: the weight column {weights!r} has negative values")
    keep = pc.and_(keep, pc.fill_null(pc.greater(w, 0), False))
    v, w = pc.add(v.filter(keep), 0.0), w.filter(keep)
    return pa.table({"__g": pa.array(np.zeros(len(v), dtype=np.int32)), "v": v, "w": w}, schema=WEIGHTED)


def _histogram(table: pa.Table, intervals: list[tuple[int, int, int, int]]) -> pa.Table:
    """Per interval (id, lo key, hi key, width): count (sum of weights, weighted), min and
    max value per bucket."""
    v = table.column("v").to_numpy()
    w = table.column("w").to_numpy() if "w" in table.column_names else None
    keys = float_keys(v)
    out = []
    for iv, lo, hi, width in intervals:
        inside = (keys >= np.uint64(lo)) & (keys <= np.uint64(hi))
        if not inside.any():
            continue
        kv, vv = keys[inside], v[inside]
        b = ((kv - np.uint64(lo)) // np.uint64(width)).astype(np.int64)
        order = np.argsort(b, kind="stable")
        b, vv = b[order], vv[order]
        uniq, first, counts = np.unique(b, return_index=True, return_counts=True)
        if w is not None:
            counts = np.add.reduceat(w[inside][order], first)
        out.append(pa.table({
            "iv": pa.array(np.full(len(uniq), iv, dtype=np.int32)), "b": pa.array(uniq.astype(np.int32)),
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
    qs = [float(q) for q in qs]
    if any(not 0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must lie in [0, 1], got {qs}")
    if not exact and not 0.0 < rank_error < 1.0:
        raise ValueError(f"rank_error must lie in (0, 1), got {rank_error}")
    field = frame.schema.field(column)
    if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)):
        raise TypeError(f"quantiles need a numeric column; {column!r} is {field.type}")
    if weights is not None:
        wtype = frame.schema.field(weights).type
        if not pa.types.is_integer(wtype):
            raise TypeError(f"quantile weights must be an integer column (exact sums); {weights!r} is {wtype}")
        values = frame.map(_values, WEIGHTED, args=(column, weights)).cache()
    else:
        values = frame.map(_values, VALUES, args=(column,)).cache()
    try:
        n, found = _select(values, qs, exact, rank_error, weights is not None)
    finally:
        values.release()
    if n == 0:
        return [math.nan] * len(qs)
    if weights is not None:
        return [found[inverted_cdf_rank(n, q)] for q in qs]
    if exact:
        return [numpy_linear(n, q, found) for q in qs]
    return [found[wanted_ranks(n, [q], False)[0]] for q in qs]


def _histograms(values: Any, spans: list[tuple[int, int]]) -> tuple[list[tuple[int, int, int, int]], dict[int, list[tuple[int, int, float, float]]]]:
    """One pass: per key span, (bucket, count, min value, max value) of its non-empty buckets."""
    intervals = [(i, lo, hi, -(-(hi - lo + 1) // BUCKETS)) for i, (lo, hi) in enumerate(spans)]
    hist = (
        values.map(_histogram, HIST, args=(intervals,))
        .aggregate(["iv", "b"], [("n", "sum"), ("vmin", "min"), ("vmax", "max")], num_partitions=1)
        .collect()
    )
    by_iv: dict[int, list[tuple[int, int, float, float]]] = {}
    for row in zip(*(hist.column(c).to_pylist() for c in ("iv", "b", "n_sum", "vmin_min", "vmax_max"))):
        by_iv.setdefault(row[0], []).append(row[1:])
    return intervals, {i: sorted(rows) for i, rows in by_iv.items()}


def _select(values: Any, qs: list[float], exact: bool, rank_error: float, weighted: bool = False) -> tuple[int, dict[int, float]]:
    """The number of values (weighted: their total weight) and the value at each wanted
    rank (exact), or a value within ``rank_error*n`` ranks of it. The first pass spans
    every key (one bucket per sign and exponent) and also counts the values."""
    full = (0, (1 << 64) - 1)
    intervals, by_iv = _histograms(values, [full])
    n = sum(cnt for _, cnt, _, _ in by_iv.get(0, []))
    if n == 0:
        return 0, {}
    limit = max(1, math.floor(rank_error * n))
    open_: dict[int, tuple[int, int, int]] = {r: (*full, 0) for r in _ranks(n, qs, exact, weighted)}  # rank: lo, hi, below
    spans = [full]
    found: dict[int, float] = {}
    while True:
        nxt: dict[int, tuple[int, int, int]] = {}
        for r, (lo, hi, below) in open_.items():
            i = spans.index((lo, hi))
            width = intervals[i][3]
            seen = below
            for b, cnt, vmin, vmax in by_iv.get(i, []):
                if seen + cnt > r:
                    if vmin == vmax or (not exact and cnt <= limit):
                        found[r] = vmin
                    else:
                        nlo = lo + b * width
                        nxt[r] = (nlo, min(hi, nlo + width - 1), seen)
                    break
                seen += cnt
            else:  # cannot happen: the interval holds rank r
                raise AssertionError(f"rank {r} not found in its key interval")
        if not nxt:
            return n, found
        open_ = nxt
        spans = sorted({(lo, hi) for lo, hi, _ in open_.values()})
        intervals, by_iv = _histograms(values, spans)
