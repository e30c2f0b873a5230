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

The quantile sketch is DDSketch (Masson, Rim and Lee, VLDB 2019) with the
``ddsketch`` package's ``LogarithmicMapping``: a value ``x > 0`` goes to bucket
``key(x) = ceil(log(x) / log(gamma))``, ``gamma = (1 + alpha) / (1 - alpha)``, negative
values to a second store by ``key(-x)``, values of magnitude at most
``MIN_INDEXABLE`` to a zero count; a bucket stands for ``gamma**key * 2 / (1 + gamma)``,
within relative error ``alpha`` of every value in it. Merging adds bucket counts.
Beyond ``MAX_BUCKETS`` keys per sign the lowest keys collapse into one, as DDSketch's
``CollapsingLowestDenseStore`` does, except that the floor is always
``max key - MAX_BUCKETS + 1``: collapsing is clamping keys to that floor, floors only
rise when states merge, so any split and merge order ends with the same counts.

It is written here rather than taken from the ``ddsketch`` package because that one
adds one value per Python call (about 1.7 microseconds each: seconds per million rows
and column, where this takes ~0.05 s) and what its collapsing store collapses can
depend on the order values arrive in. Here a batch's keys are computed with numpy
and counted with ``np.bincount``. One change for bit-reproducibility: the bucket
boundaries ``gamma**k`` are computed in 40-digit decimal arithmetic and rounded to
float64, and a value's key is settled by comparing it with them; ``np.log`` only
proposes a candidate. A vectorised ``log`` may differ in the last bit between CPUs
(SIMD code paths) and library versions, which could move a value lying on a boundary
into the neighbouring bucket on another machine; a comparison cannot. The keys agree
with the ``ddsketch`` package's except for values within about 1e-13 (relative) of a
boundary (``tests/test_distribution.py`` checks them against it).
"""

from __future__ import annotations

import base64
import decimal
import hashlib
import heapq
import json
import math
import sys
from collections import Counter
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BINS = 20  # fixed histogram bins per attribute
RELATIVE_ACCURACY = 0.005  # DDSketch's alpha: each quantile within 0.5% (relative) of the value of its rank
MAX_BUCKETS = 4096  # per sign: magnitudes within gamma**4096 ~ 6e17 of the largest keep the guarantee
# (the reach of DDSketch's defaults, alpha 1% and 2048 buckets)
EXACT_VALUES = 200  # up to this many values the state keeps them all: quantiles and histograms are exact
DOMAINS_LG_MAX_K = 10  # a task's state keeps its 2**10 = 1024 most frequent hosts
DOMAINS_TASK_CAP = 1 << 16  # distinct hosts a task counts before pruning its counter (Misra-Gries)
SAMPLE_SIZE = 10  # rejected documents kept per reason
SAMPLE_TEXT_CHARS = 500  # text prefix kept per sampled document
QUANTILES = (
    ("p01", 0.01), ("p05", 0.05), ("p10", 0.10), ("p25", 0.25), ("p50", 0.50),
    ("p75", 0.75), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99),
)  # fmt: skip


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


# ---------------------------------------------------------------- exact sums
# A sum is kept as an exact binary fraction n * 2**exp (n a Python int), so the mean is
# the correctly rounded mean of all values, whatever the partitioning: float addition
# is not associative, this is.


def _normalise(n: int, exp: int) -> tuple[int, int]:
    if n == 0:
        return 0, 0
    tz = (n & -n).bit_length() - 1
    return n >> tz, exp + tz


def exact_sum(values: np.ndarray) -> tuple[int, int]:
    """The exact sum of an int or finite-float numpy array as ``(n, exp)``: sum = n * 2**exp."""
    if len(values) == 0:
        return 0, 0
    if values.dtype.kind in "iu":
        if values.dtype.kind == "u":
            v = values.astype(np.uint64)
            hi, lo = (v >> np.uint64(32)).astype(np.int64), (v & np.uint64(0xFFFFFFFF)).astype(np.int64)
        else:
            v = values.astype(np.int64)
            hi, lo = v >> 32, v & 0xFFFFFFFF  # v = hi * 2**32 + lo, lo in [0, 2**32)
        return _normalise((int(hi.sum()) << 32) + int(lo.sum()), 0)
    mant, ex = np.frexp(values.astype(np.float64))  # v = mant * 2**ex, |mant| in [0.5, 1)
    ints = (mant * 2.0**53).astype(np.int64)  # exact: v = ints * 2**(ex - 53)
    ex = ex.astype(np.int64) - 53
    order = np.argsort(ex, kind="stable")
    ex, ints = ex[order], ints[order]
    starts = np.flatnonzero(np.r_[True, ex[1:] != ex[:-1]])
    his = np.add.reduceat(ints >> 26, starts)  # |.| < 2**27 per value: no overflow below 2**36 values
    los = np.add.reduceat(ints & ((1 << 26) - 1), starts)
    base = int(ex[0])
    total = 0
    for e, h, lo_sum in zip(ex[starts].tolist(), his.tolist(), los.tolist()):
        total += ((h << 26) + lo_sum) << (e - base)
    return _normalise(total, base)


def add_sums(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    if a[0] == 0:
        return b
    if b[0] == 0:
        return a
    e = min(a[1], b[1])
    return _normalise((a[0] << (a[1] - e)) + (b[0] << (b[1] - e)), e)


def sum_value(s: tuple[int, int]) -> Fraction:
    return Fraction(s[0]) * (Fraction(2) ** s[1])


# ---------------------------------------------------------------- the DDSketch mapping

_GAMMA_MANTISSA = 2 * RELATIVE_ACCURACY / (1 - RELATIVE_ACCURACY)  # as the ddsketch package computes it
GAMMA = 1 + _GAMMA_MANTISSA
MIN_INDEXABLE = sys.float_info.min * GAMMA  # |x| <= this counts as zero (DDSketch's min_possible)
_INV_LOG_GAMMA = 1 / math.log1p(_GAMMA_MANTISSA)
_REPRESENTATIVE = 2.0 / (1 + GAMMA)  # bucket k stands for gamma**k * this
_CHUNK = 1024  # boundaries are computed (and cached) this many keys at a time
_BOUNDARY_CHUNKS: dict[int, np.ndarray] = {}


def _boundary_chunk(c: int) -> np.ndarray:
    """gamma**k rounded to float64 for k in [c * _CHUNK, (c + 1) * _CHUNK): 40-digit decimal
    arithmetic (software, the same bits on every machine); overflows to inf past ~1.8e308."""
    chunk = _BOUNDARY_CHUNKS.get(c)
    if chunk is None:
        with decimal.localcontext() as ctx:
            ctx.prec = 40
            gamma = decimal.Decimal(1) + decimal.Decimal(_GAMMA_MANTISSA)  # exact: 1 + the float mantissa
            power = gamma ** (c * _CHUNK)
            out = []
            for _ in range(_CHUNK):
                out.append(float(power))  # correctly rounded
                power *= gamma
        chunk = _BOUNDARY_CHUNKS[c] = np.array(out, dtype=np.float64)
    return chunk


def bucket_bounds(lo: int, hi: int) -> np.ndarray:
    """The upper boundaries ``fl(gamma**k)`` of the buckets ``k = lo .. hi``."""
    c0, c1 = lo // _CHUNK, hi // _CHUNK
    table = np.concatenate([_boundary_chunk(c) for c in range(c0, c1 + 1)])
    return table[lo - c0 * _CHUNK : hi - c0 * _CHUNK + 1]


def bucket_keys(magnitudes: np.ndarray) -> np.ndarray:
    """DDSketch keys of finite magnitudes > ``MIN_INDEXABLE``: the smallest ``k`` with
    ``x <= fl(gamma**k)``, i.e. ``ceil(log(x) / log(gamma))`` with exact boundaries."""
    guess = np.ceil(np.log(magnitudes) * _INV_LOG_GAMMA).astype(np.int64)  # within one of the key
    lo, hi = int(guess.min()) - 3, int(guess.max()) + 3
    bounds = bucket_bounds(lo, hi)
    i = guess - lo
    for _ in range(4):
        step = (magnitudes > bounds[i]).astype(np.int64) - (magnitudes <= bounds[i - 1])
        if not step.any():
            return i + lo
        i += step
    raise AssertionError("bucket_keys: log(x) is off by more than a few buckets")  # pragma: no cover


def bucket_values(keys: np.ndarray) -> np.ndarray:
    """The representative value of each key: ``fl(gamma**k) * 2 / (1 + gamma)``."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.float64)
    lo = int(keys.min())
    return bucket_bounds(lo, int(keys.max()))[keys - lo] * _REPRESENTATIVE


def inverted_cdf_index(n: int, ranks: np.ndarray) -> np.ndarray:
    """0-based order statistic that ``numpy.quantile(..., method="inverted_cdf")`` returns
    for ``n`` values (numpy's own arithmetic, so it agrees at exact multiples)."""
    index = n * np.asarray(ranks, dtype=np.float64) - 1
    previous = np.floor(index)
    out = np.where(index - previous == 0, previous, previous + 1).astype(np.int64)
    return np.maximum(out, 0)


def _pack_counts(counts: np.ndarray) -> tuple[str, str]:
    """Counts as the narrowest little-endian unsigned type that holds them, in base64."""
    top = int(counts.max())
    for dtype in ("<u1", "<u2", "<u4", "<u8"):
        if top < 1 << (8 * int(dtype[-1])):
            return dtype[1:], b64(counts.astype(dtype).tobytes())
    raise ValueError("bucket count over 2**64")  # pragma: no cover


def _unpack_counts(dtype: str, data: str) -> np.ndarray:
    return np.frombuffer(unb64(data), dtype="<" + dtype).astype(np.int64)


class BucketStore:
    """One sign's bucket counts, dense from key ``lo`` (first and last count non-zero).
    Keys below ``max key - MAX_BUCKETS + 1`` are clamped to it (``collapsed`` then)."""

    __slots__ = ("collapsed", "counts", "lo")

    def __init__(self) -> None:
        self.lo = 0
        self.counts = np.zeros(0, dtype=np.int64)
        self.collapsed = False

    def __len__(self) -> int:
        return len(self.counts)

    def add_keys(self, keys: np.ndarray) -> None:
        if len(keys) == 0:
            return
        lo, hi = int(keys.min()), int(keys.max())
        collapsed = hi - lo + 1 > MAX_BUCKETS
        if collapsed:  # bound the bincount; the merge below clamps again to the final floor
            lo = hi - MAX_BUCKETS + 1
            keys = np.maximum(keys, lo)
        self.add(lo, np.bincount(keys - lo), collapsed)

    def add(self, lo: int, counts: np.ndarray, collapsed: bool = False) -> None:
        if len(counts) == 0:
            return
        if len(self.counts) == 0:
            new_lo, new = lo, counts.astype(np.int64)
        else:
            new_lo = min(self.lo, lo)
            new = np.zeros(max(self.lo + len(self.counts), lo + len(counts)) - new_lo, dtype=np.int64)
            new[self.lo - new_lo : self.lo - new_lo + len(self.counts)] += self.counts
            new[lo - new_lo : lo - new_lo + len(counts)] += counts
        self.collapsed = self.collapsed or collapsed
        if len(new) > MAX_BUCKETS:
            cut = len(new) - MAX_BUCKETS
            new[cut] += new[:cut].sum()
            new, new_lo = new[cut:], new_lo + cut
            self.collapsed = True
        self.lo, self.counts = new_lo, new

    def to_state(self) -> dict[str, Any] | None:
        if len(self.counts) == 0:
            return None
        dtype, data = _pack_counts(self.counts)
        return {"key": self.lo, "dtype": dtype, "counts": data, "collapsed": self.collapsed}

    def add_state(self, st: dict[str, Any] | None) -> None:
        if st:
            self.add(int(st["key"]), _unpack_counts(st["dtype"], st["counts"]), bool(st["collapsed"]))

    def keys(self) -> np.ndarray:
        return self.lo + np.flatnonzero(self.counts)

    def collapse_bound(self) -> float | None:
        """When collapsed: the magnitude at or below which values share the lowest bucket."""
        return float(bucket_bounds(self.lo, self.lo)[0]) if self.collapsed and len(self.counts) else None


class LogBuckets:
    """A DDSketch: positive and negative bucket stores and a zero count (module docstring)."""

    def __init__(self) -> None:
        self.pos = BucketStore()
        self.neg = BucketStore()
        self.zeros = 0

    def add(self, values: np.ndarray) -> None:
        """Finite float64 values."""
        pos, neg = values > MIN_INDEXABLE, values < -MIN_INDEXABLE
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        self.zeros += len(values) - n_pos - n_neg
        if n_pos:
            self.pos.add_keys(bucket_keys(values[pos]))
        if n_neg:
            self.neg.add_keys(bucket_keys(-values[neg]))

    def to_state(self) -> dict[str, Any]:
        return {"relative_accuracy": RELATIVE_ACCURACY, "max_buckets": MAX_BUCKETS, "zeros": self.zeros,
                "pos": self.pos.to_state(), "neg": self.neg.to_state()}  # fmt: skip

    def add_state(self, st: dict[str, Any]) -> None:
        if (st["relative_accuracy"], st["max_buckets"]) != (RELATIVE_ACCURACY, MAX_BUCKETS):
            raise ValueError(
                f"partial stats hold a sketch of relative accuracy {st['relative_accuracy']} and "
                f"{st['max_buckets']} buckets, this build uses {RELATIVE_ACCURACY} and {MAX_BUCKETS}"
            )
        self.zeros += int(st["zeros"])
        self.pos.add_state(st["pos"])
        self.neg.add_state(st["neg"])

    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """Representative values (ascending) and counts of the non-empty buckets."""
        nk, pk = self.neg.keys()[::-1], self.pos.keys()
        values = [-bucket_values(nk), np.zeros(1 if self.zeros else 0), bucket_values(pk)]
        counts = [self.neg.counts[nk - self.neg.lo], np.array([self.zeros] if self.zeros else [], dtype=np.int64),
                  self.pos.counts[pk - self.pos.lo]]  # fmt: skip
        return np.concatenate(values), np.concatenate(counts).astype(np.int64)

    def collapse_bound(self) -> float | None:
        bounds = [b for b in (self.pos.collapse_bound(), self.neg.collapse_bound()) if b is not None]
        return max(bounds) if bounds else None


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


# ---------------------------------------------------------------- rejected samples


def sample_key(row: dict[str, Any]) -> tuple[str, str]:
    """The order of the reservoir: blake2b of the id first, then the whole row (a total
    order, so the 10 smallest of a union are the 10 smallest of the parts' 10 smallest)."""
    return id_hash(row.get("id")), json.dumps(row, sort_keys=True, ensure_ascii=False)


def id_hash(doc_id: str | None) -> str:
    return hashlib.blake2b((doc_id or "").encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def smallest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return heapq.nsmallest(SAMPLE_SIZE, rows, key=sample_key)


class RejectAccumulator:
    """Drop counts by reason and, per reason, the ``SAMPLE_SIZE`` rejected documents with
    the smallest blake2b(id): the same rows whatever the partitioning."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, list[dict[str, Any]]] = {}

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        reasons = ["null" if r is None else r for r in table.column("reason").to_pylist()]
        self.counts.update(reasons)
        ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
        hashes = [id_hash(i) for i in ids]
        by_reason: dict[str, list[int]] = {}
        for i, r in enumerate(reasons):
            by_reason.setdefault(r, []).append(i)
        for reason, idx in by_reason.items():
            current = self.samples.get(reason, [])
            # rows whose id hash is above the 10th smallest cannot enter the sample; only
            # the others are materialised (ties on the hash are settled by the full key)
            threshold = heapq.nsmallest(SAMPLE_SIZE, [hashes[i] for i in idx] + [id_hash(r.get("id")) for r in current])[-1]
            candidates = [i for i in idx if hashes[i] <= threshold]
            self.samples[reason] = smallest(current + sample_rows(table, candidates))

    def to_state(self) -> dict[str, Any]:
        return {r: {"count": self.counts[r], "sample": self.samples.get(r, [])} for r in sorted(self.counts)}

    @staticmethod
    def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        rows: dict[str, list[dict[str, Any]]] = {}
        for st in states:
            for reason, entry in st.items():
                counts[reason] += entry["count"]
                rows.setdefault(reason, []).extend(entry["sample"])
        return {r: {"count": counts[r], "sample": smallest(rows.get(r, []))} for r in sorted(counts)}


def sample_rows(table: pa.Table, indices: list[int]) -> list[dict[str, Any]]:
    """id, url, text prefix, text length, detail (and step where the table has one)."""
    if not indices:
        return []
    sub = table.take(pa.array(indices, pa.int64()))
    names = set(sub.column_names)

    def col(name: str) -> list[Any]:
        return sub.column(name).to_pylist() if name in names else [None] * sub.num_rows

    texts = col("text")
    steps = col("step")
    out = []
    for i, (doc, url, text, detail) in enumerate(zip(col("id"), col("url"), texts, col("detail"))):
        row = {
            "id": doc,
            "url": url,
            "text": text[:SAMPLE_TEXT_CHARS] if isinstance(text, str) else None,
            "text_chars": len(text) if isinstance(text, str) else None,
            "detail": detail,
        }
        if "step" in names:
            row["step"] = steps[i]
        out.append(row)
    return out


# ---------------------------------------------------------------- domains

# scheme, optional userinfo, then the host (a bracketed IPv6 literal or up to ':', '/', '?', '#')
_HOST = r"(?i)^\s*https?://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#\s]*)"


def url_hosts(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lower-cased hosts of the http(s) URLs (others dropped), trailing dot and IPv6 brackets
    removed: ``urllib.parse.urlsplit(url).hostname`` without a trailing dot."""
    hosts = pc.struct_field(pc.extract_regex(urls, _HOST), "host")
    if isinstance(hosts, pa.ChunkedArray):
        hosts = hosts.combine_chunks()
    hosts = pc.utf8_trim(pc.utf8_rtrim(pc.utf8_lower(hosts.drop_null()), "."), "[]")  # [::1] -> ::1, as urlsplit
    return hosts.filter(pc.greater(pc.utf8_length(hosts), 0))


def _ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


class DomainAccumulator:
    """Kept documents per URL host.

    A task counts hosts exactly; should it see more than ``DOMAINS_TASK_CAP`` distinct
    hosts, it prunes its counter the Misra-Gries way (subtract the count of the
    ``DOMAINS_TASK_CAP // 2 + 1``-th host from all, drop those at zero) and adds what it
    subtracted to ``error``. Its state keeps the ``2**DOMAINS_LG_MAX_K`` hosts with the
    largest counts (ties by name) and, as ``tail``, the largest count it left out. So in
    a task, for every host, ``listed <= true <= listed + error (+ tail if not listed)``.
    The merge sums the listed counts and the bounds: it does not depend on the order of
    the states, and the result depends on how the rows were split only where a task's
    ``tail`` or ``error`` is non-zero."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.upper: dict[str, int] = {}  # merged only: each listed host's upper bound
        self.docs = 0
        self.error = 0  # task: Misra-Gries subtractions; merged: the largest upper - lower
        self.tail = 0

    def add(self, urls: pa.Array | pa.ChunkedArray) -> None:
        hosts = url_hosts(urls)
        if len(hosts) == 0:
            return
        self.docs += len(hosts)
        vc = pc.value_counts(hosts)
        counts = self.counts
        for host, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            counts[host] = counts.get(host, 0) + n
        if len(counts) > DOMAINS_TASK_CAP:
            keep = DOMAINS_TASK_CAP // 2
            cut = heapq.nlargest(keep + 1, counts.values())[-1]
            self.counts = {h: n - cut for h, n in counts.items() if n > cut}
            self.error += cut

    def to_state(self) -> dict[str, Any] | None:
        if not self.docs:
            return None
        ranked = _ranked(self.counts)
        keep = 1 << DOMAINS_LG_MAX_K
        tail = ranked[keep][1] if len(ranked) > keep else 0
        return {"docs": self.docs, "hosts": [[h, n] for h, n in ranked[:keep]], "tail": tail, "error": self.error}

    @classmethod
    def merge_states(cls, states: list[dict[str, Any] | None]) -> DomainAccumulator:
        """Lower bound of a host: the sum of its listed counts; upper bound: that plus
        every state's ``error`` plus the ``tail`` of every state that does not list it."""
        acc = cls()
        listed_tails: Counter[str] = Counter()
        tails = errors = 0
        for st in states:
            if not st:
                continue
            acc.docs += st["docs"]
            tails += st["tail"]
            errors += st["error"]
            for host, n in st["hosts"]:
                acc.counts[host] = acc.counts.get(host, 0) + n
                listed_tails[host] += st["tail"]
        acc.error = tails + errors  # also bounds the count of a host listed nowhere
        acc.upper = {h: n + acc.error - listed_tails[h] for h, n in acc.counts.items()}
        return acc

    def describe(self, top: int) -> dict[str, Any] | None:
        if not self.docs:
            return None
        ranked = _ranked(self.counts)[:top]
        keep = 1 << DOMAINS_LG_MAX_K
        return {
            "docs": self.docs,
            "exact": self.error == 0,
            "max_error": self.error,
            "epsilon": 1 / (keep + 1) + 1 / (DOMAINS_TASK_CAP // 2 + 1),
            "lg_max_k": DOMAINS_LG_MAX_K,
            "top": [{"domain": h, "docs": n, "lower_bound": n, "upper_bound": self.upper.get(h, n)} for h, n in ranked],
        }
