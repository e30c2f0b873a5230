"""Per-bucket epochs: a mixture source's ``buckets:`` table, checked and expanded.

Nemotron-CC-style quality buckets (``quality.buckets``: 0 = lowest .. n-1 = highest) are
not kept or dropped at one threshold; each range of buckets is seen its own number of
times, the best ones several epochs, the worst not at all::

    sources:
      - source: web
        buckets: {"18-19": 3.2, "12-17": 2, "5-11": 1, "0-4": 0}   # range -> epochs; 0 drops

A table must cover every bucket ``0..n-1`` exactly once (``n`` is the source's
``n_buckets``, or the table's highest bucket + 1), because a bucket left out would silently
vanish from training and a bucket named twice has no single answer. The shards of the
source must be grouped by integer buckets inside that range (``tokenize.megatron_shards``
writes ``<source>__<bucket>``); any other bucket of the source is an error too, for the
same reason. Each bucket then becomes its own entry of the stage with the epochs of its
range, including dropped buckets (0 epochs, shown with 0 tokens) and buckets without
shards (shown with 0 available tokens), so the table ``arcforge mix`` prints lists every
bucket.

The checks of the table alone run when the YAML is validated (``parse_table``); those
against the shards when the mixture is loaded (``expand``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class BucketRange:
    label: str  # as written in the table, e.g. "12-17"
    first: int
    last: int
    epochs: float


@dataclass
class BucketEntry:
    """One bucket of a source, with the epochs of its range and its shard group (if any)."""

    bucket: int
    label: str  # the range it came from
    epochs: float
    groups: list[Any] = field(default_factory=list)  # mixture.Group: none when the bucket has no shards

    @property
    def name(self) -> str:
        return str(self.bucket)  # what tokenize.megatron_shards writes for an int bucket column


def _span(buckets: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, start = [], None
    for i, b in enumerate(buckets):
        if start is None:
            start = b
        if i + 1 == len(buckets) or buckets[i + 1] != b + 1:
            out.append(str(start) if start == b else f"{start}-{b}")
            start = None
    return ", ".join(out)


def parse_table(table: dict[str, Any], n_buckets: int | None) -> tuple[list[BucketRange], int]:
    """The ranges of a ``buckets:`` table, sorted, and the number of buckets; a ValueError
    names what is wrong (a bad range, negative epochs, a gap or an overlap)."""
    if not table:
        raise ValueError("the table is empty; expected ranges such as {'10-19': 2, '0-9': 1}")
    ranges = []
    for label, epochs in table.items():
        m = _RANGE.match(str(label))
        if not m or int(m.group(1)) > int(m.group(2) or m.group(1)):
            raise ValueError(f"{label!r} is not a bucket range; expected 'A-B' or 'A' with whole numbers 0 <= A <= B")
        if isinstance(epochs, bool) or not isinstance(epochs, int | float) or not epochs >= 0:
            raise ValueError(f"{label!r}: epochs must be a number >= 0 (0 drops the buckets), got {epochs!r}")
        ranges.append(BucketRange(str(label), int(m.group(1)), int(m.group(2) or m.group(1)), float(epochs)))
    n = n_buckets if n_buckets is not None else max(r.last for r in ranges) + 1
    owner: dict[int, str] = {}
    for r in sorted(ranges, key=lambda r: (r.first, r.last)):
        if r.last >= n:
            raise ValueError(f"{r.label!r} goes past n_buckets={n} (buckets 0-{n - 1})")
        for b in range(r.first, r.last + 1):
            if b in owner:
                raise ValueError(f"bucket {b} is in both {owner[b]!r} and {r.label!r}; expected each of 0-{n - 1} exactly once")
            owner[b] = r.label
    missing = [b for b in range(n) if b not in owner]
    if missing:
        raise ValueError(f"bucket(s) {_span(missing)} not covered; expected ranges that cover 0-{n - 1} exactly once")
    return sorted(ranges, key=lambda r: r.first), n


def expand(table: dict[str, float], n_buckets: int | None, source: str, groups: list[Any]) -> list[BucketEntry]:
    """One entry per bucket 0..n-1, given the source's shard groups (``mixture.Group``, any
    bucket); a ValueError when a group's bucket is not a bucket of the table."""
    ranges, n = parse_table(table, n_buckets)
    by_bucket: dict[int, Any] = {}
    stray = []
    for g in groups:
        b = g.bucket
        if b is None or not re.fullmatch(r"\d+", b) or int(b) >= n:
            stray.append("(no bucket)" if b is None else repr(b))
        else:
            by_bucket[int(b)] = g
    if stray:
        raise ValueError(
            f"the shards of {source!r} have bucket(s) {', '.join(sorted(set(stray)))} outside the table's 0-{n - 1}; "
            f"expected shards grouped by a quality.buckets column (or set n_buckets / extend the table)"
        )
    return [
        BucketEntry(b, r.label, r.epochs, [by_bucket[b]] if b in by_bucket else [])
        for r in ranges
        for b in range(r.first, r.last + 1)
    ]


def sort_key(bucket: str | None) -> tuple[int, int, str]:
    """Buckets in a readable order: none first, then numbers as numbers (2 before 11), then names."""
    if bucket is None:
        return (0, 0, "")
    return (1, int(bucket), "") if bucket.isdigit() else (2, 0, bucket)


def asked(entry: BucketEntry) -> str:
    """The ``asked`` column of the mixture table for one bucket."""
    if entry.epochs == 0:
        return f"dropped ({entry.label})"
    return f"{entry.epochs:g} epochs ({entry.label})" + ("" if entry.groups else ", no shards")


__all__ = ["BucketEntry", "BucketRange", "asked", "expand", "parse_table", "sort_key"]
