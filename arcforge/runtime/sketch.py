"""Exact float sums and the deterministic quantile sketch of the distribution stats.

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
import math
import sys
from fractions import Fraction
from typing import Any

import numpy as np

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


