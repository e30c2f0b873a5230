"""The per-task accumulators behind ``arcforge.runtime.distribution``.

Each one adds Arrow columns batch by batch, turns itself into a JSON-serialisable
state (``to_state``) and merges such states (``merge_states``). Nothing here draws
random numbers or depends on the order of floating-point additions, so the same
rows give the same state and the same merged numbers on every run:

* exact parts (counts, sums, min/max, declared-range histograms, reservoir samples)
  and the quantile sketch (:class:`LogBuckets`, a DDSketch) merge to the same value
  however the rows were split into tasks and batches, in any merge order;
* top domains: each task counts hosts exactly and its state keeps its
  ``2**DOMAINS_LG_MAX_K`` most frequent ones; the merge is a sum, so it does not
  depend on the merge order, and its error bound is carried along.

See ``docs/stats.md``.

The exact sums and the quantile sketch are in ``sketch.py``; the samples of rejected
documents and the top hosts in ``rowsamples.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from arcforge.runtime.sketch import (
    BINS,
    EXACT_VALUES,
    LogBuckets,
    QUANTILES,
    RELATIVE_ACCURACY,
    add_sums,
    b64,
    bucket_bounds,
    exact_sum,
    inverted_cdf_index,
    sum_value,
    unb64,
)


# ---------------------------------------------------------------- numeric attributes


def _numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return column.drop_null().to_numpy(zero_copy_only=False)


class NumericAccumulator:
    """Count, nulls, exact sum, min, max, a DDSketch (:class:`LogBuckets`), every value
    while there are at most ``EXACT_VALUES``, and, with a declared range, an exact
    histogram of ``BINS`` equal bins (values outside counted as below/above)."""

    def __init__(self, is_int: bool, value_range: tuple[float, float] | None) -> None:
        self.is_int = is_int
        self.range = value_range
        self.count = self.nulls = self.non_finite = 0
        self.sum: tuple[int, int] = (0, 0)
        self.min: float | int | None = None
        self.max: float | int | None = None
        self.sketch = LogBuckets()
        self.values: list[np.ndarray] | None = []  # None once over EXACT_VALUES
        self.hist = np.zeros(BINS, dtype=np.int64) if value_range else None
        self.below = self.above = 0

    def add(self, column: pa.Array | pa.ChunkedArray | None, rows: int) -> None:
        if column is None:  # the column is absent from this table: every row is missing
            self.nulls += rows
            return
        self.nulls += column.null_count
        raw = _numpy(column)
        values = raw.astype(np.float64)
        if not self.is_int:
            finite = np.isfinite(values)
            self.non_finite += int(len(values) - finite.sum())
            # + 0.0 turns -0.0 into 0.0: min, max and the kept values then do not depend
            # on which of two equal zeros came first
            values = raw = values[finite] + 0.0
        if len(values) == 0:
            return
        self.count += len(values)
        lo, hi = (int(raw.min()), int(raw.max())) if self.is_int else (float(values.min()), float(values.max()))
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        self.sum = add_sums(self.sum, exact_sum(raw))
        self.sketch.add(values)
        if self.values is not None:
            self.values = [*self.values, values] if self.count <= EXACT_VALUES else None
        if self.range is not None:
            counts, _ = np.histogram(values, bins=BINS, range=self.range)
            self.hist += counts
            self.below += int((values < self.range[0]).sum())
            self.above += int((values > self.range[1]).sum())

    def exact_values(self) -> np.ndarray | None:
        """Every value, sorted (float64), while there are at most ``EXACT_VALUES``."""
        if self.values is None:
            return None
        return np.sort(np.concatenate(self.values)) if self.values else np.zeros(0, dtype=np.float64)

    def to_state(self) -> dict[str, Any]:
        exact = self.exact_values()
        return {
            "count": self.count,
            "nulls": self.nulls,
            "non_finite": self.non_finite,
            "sum": [str(self.sum[0]), self.sum[1]],
            "min": self.min,
            "max": self.max,
            "values": b64(exact.astype("<f8").tobytes()) if exact is not None and len(exact) else None,
            "sketch": self.sketch.to_state() if exact is None else None,
            "hist": None
            if self.hist is None
            else {"range": list(self.range), "counts": self.hist.tolist(), "below": self.below, "above": self.above},
        }

    @classmethod
    def merge_states(cls, states: list[dict[str, Any]], is_int: bool, value_range: tuple[float, float] | None) -> NumericAccumulator:
        acc = cls(is_int, value_range)
        kept: list[np.ndarray] | None = []
        for st in states:
            acc.count += st["count"]
            acc.nulls += st["nulls"]
            acc.non_finite += st["non_finite"]
            acc.sum = add_sums(acc.sum, (int(st["sum"][0]), int(st["sum"][1])))
            if st["min"] is not None:
                acc.min = st["min"] if acc.min is None else min(acc.min, st["min"])
                acc.max = st["max"] if acc.max is None else max(acc.max, st["max"])
            if st.get("values"):
                values = np.frombuffer(unb64(st["values"]), dtype="<f8").astype(np.float64)
                acc.sketch.add(values)
                if kept is not None:
                    kept.append(values)
            elif st.get("sketch"):
                acc.sketch.add_state(st["sketch"])
                kept = None
            elif st["count"]:
                raise ValueError("partial stats of an attribute with values but neither values nor sketch")
            if value_range is not None:
                h = st.get("hist")
                if h is None or tuple(h["range"]) != tuple(value_range):
                    raise ValueError(f"partial stats hold range {h and h['range']}, the schema declares {list(value_range)}")
                acc.hist += np.asarray(h["counts"], dtype=np.int64)
                acc.below += h["below"]
                acc.above += h["above"]
        acc.values = kept if kept is not None and acc.count <= EXACT_VALUES else None
        return acc

    def _bucket_values(self) -> tuple[np.ndarray, np.ndarray]:
        """The sketch's buckets as (reported value, count), ascending: the representative
        value, rounded for integer columns, clamped into [min, max] (what a quantile reports)."""
        values, counts = self.sketch.buckets()
        if self.is_int:
            values = np.rint(values)
        return np.clip(values, float(self.min), float(self.max)), counts

    def describe(self, type_name: str) -> dict[str, Any]:
        """The attribute's entry of the stats document."""
        exact = self.exact_values()
        out: dict[str, Any] = {
            "type": type_name,
            "count": self.count,
            "nulls": self.nulls,
            "non_finite": self.non_finite,
            "mean": float(sum_value(self.sum) / self.count) if self.count else None,
            "min": self.min,
            "max": self.max,
            "quantiles": None,
            "quantiles_exact": exact is not None,
            "relative_error": 0.0 if exact is not None else RELATIVE_ACCURACY,
            "collapsed_below": None if exact is not None else self.sketch.collapse_bound(),
            "histogram": None,
            "histogram_exact": self.range is not None or exact is not None,
        }
        ranks = np.array([r for _, r in QUANTILES])
        if self.count and exact is not None:
            qs = np.quantile(exact, ranks, method="inverted_cdf")
            out["quantiles"] = {name: float(q) for (name, _), q in zip(QUANTILES, qs)}
        elif self.count:
            values, counts = self._bucket_values()
            pick = np.searchsorted(np.cumsum(counts), inverted_cdf_index(self.count, ranks), side="right")
            out["quantiles"] = {name: float(q) for (name, _), q in zip(QUANTILES, values[pick])}
        if self.range is not None:
            edges = np.linspace(self.range[0], self.range[1], BINS + 1)
            out["histogram"] = {"range": "declared", "edges": edges.tolist(), "counts": self.hist.tolist(),
                                "below": self.below, "above": self.above}  # fmt: skip
        elif self.count:
            out["histogram"] = self._observed_histogram(exact)
            if out["histogram"] is None:
                out["histogram_exact"] = False
        return out

    def _observed_histogram(self, exact: np.ndarray | None) -> dict[str, Any] | None:
        """``BINS`` equal bins over [min, max] (numpy.histogram's bins): counted from the
        values while they are all kept, else from the sketch (:meth:`_sketch_counts`)."""
        lo, hi = float(self.min), float(self.max)
        if lo == hi:  # numpy.histogram's convention for a single value
            lo, hi = lo - 0.5, hi + 0.5
        with np.errstate(over="ignore", invalid="ignore"):  # hi - lo beyond the float range
            edges = np.linspace(lo, hi, BINS + 1)
            if not np.all(np.diff(edges) > 0) or not np.all(np.isfinite(edges)):
                return None  # a range too narrow (or wide) for 20 distinct float edges
        if exact is not None:
            counts, _ = np.histogram(exact, bins=BINS, range=(lo, hi))
        else:
            counts = self._sketch_counts(edges)
        return {"range": "observed", "edges": edges.tolist(), "counts": counts.tolist(), "below": 0, "above": 0}

    def _bucket_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sketch's non-empty buckets in ascending order as ``(lo, hi, counts)``, the
        value ranges clamped into [min, max]: for float columns the bucket's interval
        (``(fl(gamma**(k-1)), fl(gamma**k)]``, mirrored for negatives, from 0 for a
        collapsed lowest bucket; the zero count a point), for integer columns the first
        and last integer in it."""
        sk = self.sketch
        parts = []
        for store, sign in ((sk.neg, -1.0), (sk.pos, 1.0)):
            keys = store.keys()
            if len(keys) == 0:
                parts.append((np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)))
                continue
            bounds = bucket_bounds(int(keys[0]) - 1, int(keys[-1]))
            upper, lower = bounds[keys - keys[0] + 1], bounds[keys - keys[0]]
            if store.collapsed:
                lower = np.where(keys == store.lo, 0.0, lower)
            if self.is_int:  # magnitudes: the integers m with lower < m <= upper
                lower, upper = np.floor(lower) + 1, np.floor(upper)
            counts = store.counts[keys - store.lo]
            parts.append((lower, upper, counts) if sign > 0 else (-upper[::-1], -lower[::-1], counts[::-1]))
        zero = np.zeros(1 if sk.zeros else 0)
        (nlo, nhi, nc), (plo, phi, pc_) = parts
        lo, hi = float(self.min), float(self.max)
        out_lo = np.clip(np.concatenate([nlo, zero, plo]), lo, hi)
        out_hi = np.clip(np.concatenate([nhi, zero, phi]), lo, hi)
        counts = np.concatenate([nc, np.full(len(zero), sk.zeros), pc_]).astype(np.int64)
        return np.minimum(out_lo, out_hi), out_hi, counts

    def _sketch_counts(self, edges: np.ndarray) -> np.ndarray:
        """Histogram counts from the buckets: the values below each interior edge are the
        buckets wholly below it plus, of the one bucket the edge falls in, the share of
        its range below the edge (of its integers, for integer columns), rounded; so a bin
        is off only by values in the buckets that hold its edges. Integer arithmetic but
        for that one share: the same counts on every machine."""
        lo, hi, counts = self._bucket_ranges()
        inner = edges[1:-1]
        below_all = np.concatenate([[0], np.cumsum(counts)])
        j = np.searchsorted(hi, inner, side="left")  # buckets [0, j) lie wholly below the edge
        jj = np.minimum(j, len(counts) - 1)
        if self.is_int:
            size = hi[jj] - lo[jj] + 1
            share = np.clip(np.ceil(inner) - lo[jj], 0, size) / size
        else:
            width = hi[jj] - lo[jj]
            share = np.where(width > 0, np.clip((inner - lo[jj]) / np.where(width > 0, width, 1.0), 0.0, 1.0), 0.0)
        below = below_all[j] + np.where(j < len(counts), counts[jj] * share, 0.0)
        cum = np.concatenate([[0], np.rint(below).astype(np.int64), [self.count]])
        return np.diff(cum)


