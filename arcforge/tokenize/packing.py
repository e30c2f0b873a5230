"""Sequence packing for mid-training: best-fit decreasing, pure functions.

Pre-training shards hold whole documents and Megatron's sampler concatenates and
truncates them (GLM-4.5 pre-trains that way at 4,096 tokens). Mid-training packs
documents into sequences of exactly ``seq_length`` tokens so that a reasoning trace
or a repository that fits in a sequence is never cut:

* a document of at most ``seq_length`` tokens is placed whole;
* a longer one is cut into ``seq_length`` chunks that fill sequences on their own, and
  only its remainder is packed (these are the only cuts, counted as ``split_docs``);
* pieces are placed largest first, each into the open sequence with the least room
  that still fits it (best fit), else into a new sequence;
* each sequence is padded to exactly ``seq_length`` with the pad id, so sequence *k*
  of the shard is sample *k* of Megatron's sampler when it trains at that length
  (``--seq-length`` equal to ``seq_length``; use ``--reset-attention-mask
  --reset-position-ids --eod-mask-loss`` so packed documents do not attend to each other).

Documents keep their end-of-document token, so boundaries inside a sequence are visible.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Segment:
    """Tokens ``[start, end)`` of document ``doc``."""

    doc: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class PackStats:
    documents: int = 0
    tokens: int = 0  # real tokens placed (every document token, once)
    sequences: int = 0
    seq_length: int = 0
    pad_tokens: int = 0
    split_docs: int = 0  # documents longer than seq_length, cut into chunks
    pieces: int = 0  # segments placed (documents plus extra chunks)
    full_chunks: int = 0  # seq_length chunks of long documents, one sequence each

    @property
    def capacity(self) -> int:
        return self.sequences * self.seq_length

    @property
    def efficiency(self) -> float:
        """Share of sequence positions holding real tokens."""
        return self.tokens / self.capacity if self.capacity else 1.0

    @property
    def pad_share(self) -> float:
        return self.pad_tokens / self.capacity if self.capacity else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "sequences": self.sequences,
            "seq_length": self.seq_length,
            "pad_tokens": self.pad_tokens,
            "split_docs": self.split_docs,
            "pieces": self.pieces,
            "full_chunks": self.full_chunks,
            "efficiency": round(self.efficiency, 6),
            "pad_share": round(self.pad_share, 6),
        }


@dataclass
class PackPlan:
    bins: list[list[Segment]]
    stats: PackStats = field(default_factory=PackStats)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bin packing of item ``lengths`` (each ``<= capacity``) into bins of ``capacity``.

    Items in decreasing length (ties by index); each goes to the open bin with the
    smallest remaining room that fits it. Returns the item indices of each bin, bins in
    the order they were opened. Deterministic.
    """
    if any(n > capacity or n < 0 for n in lengths):
        raise ValueError(f"every length must be within 0..{capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (remaining room, bin index), sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            left, b = room.pop(k)
        else:
            b, left = len(bins), capacity
            bins.append([])
        bins[b].append(i)
        if left - n > 0:
            bisect.insort(room, (left - n, b))
    return bins


def plan_packing(lengths: Sequence[int], seq_length: int) -> PackPlan:
    """Which tokens of which documents go into each sequence (see the module docstring)."""
    if seq_length < 1:
        raise ValueError("seq_length must be positive")
    stats = PackStats(documents=len(lengths), seq_length=seq_length)
    full: list[list[Segment]] = []
    items: list[Segment] = []
    for doc, n in enumerate(lengths):
        n = int(n)
        stats.tokens += n
        if n == 0:
            continue
        if n > seq_length:
            stats.split_docs += 1
            cut = (n // seq_length) * seq_length
            full += [[Segment(doc, s, s + seq_length)] for s in range(0, cut, seq_length)]
            if cut < n:
                items.append(Segment(doc, cut, n))
        else:
            items.append(Segment(doc, 0, n))
    packed = [[items[i] for i in b] for b in best_fit_decreasing([s.length for s in items], seq_length)]
    bins = full + packed
    stats.full_chunks = len(full)
    stats.pieces = len(items) + len(full)
    stats.sequences = len(bins)
    stats.pad_tokens = stats.capacity - stats.tokens
    return PackPlan(bins, stats)


def pack_documents(
    docs: Sequence[np.ndarray | Sequence[int]], seq_length: int, pad_id: int | None, dtype: type = np.int64
) -> tuple[list[np.ndarray], PackStats]:
    """Pack token arrays into sequences of ``seq_length``; with ``pad_id`` None the
    sequences are left short instead of padded (``pad_tokens`` then counts the room)."""
    arrays = [np.asarray(d, dtype=dtype) for d in docs]
    plan = plan_packing([len(a) for a in arrays], seq_length)
    out = []
    for segs in plan.bins:
        parts = [arrays[s.doc][s.start : s.end] for s in segs]
        used = sum(s.length for s in segs)
        if pad_id is not None and used < seq_length:
            parts.append(np.full(seq_length - used, pad_id, dtype=dtype))
        out.append(np.concatenate(parts) if len(parts) > 1 else parts[0].copy())
    return out, plan.stats


def split_document(doc: np.ndarray | Sequence[int], max_tokens: int) -> list[np.ndarray]:
    """Cut one document into consecutive pieces of at most ``max_tokens`` (nothing dropped)."""
    arr = np.asarray(doc)
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    return [arr[i : i + max_tokens] for i in range(0, len(arr), max_tokens)] or [arr]


def next_fit_sequences(lengths: Sequence[int], seq_length: int) -> int:
    """Sequences that packing in the given order without cutting would need (a baseline)."""
    count, left = 0, 0
    for n in lengths:
        n = int(n)
        while n > seq_length:  # long documents still take whole chunks
            count += 1
            n -= seq_length
        if n == 0:
            continue
        if n > left:
            count += 1
            left = seq_length
        left -= n
    return count


__all__ = [
    "PackPlan",
    "PackStats",
    "Segment",
    "best_fit_decreasing",
    "next_fit_sequences",
    "pack_documents",
    "plan_packing",
    "split_document",
]
