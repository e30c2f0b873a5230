"""Distribution statistics of a stage's output, beside the manifest's counters.

A task feeds a :class:`DistributionCollector` every kept and rejected table it
writes and puts ``to_record()`` in its commit record; the driver merges the
records of all partitions with :func:`merge_records` into the stage's stats
document and writes it with :func:`write_stats` as ``_stats.json`` beside
``_manifest.json``. The format, and which numbers are exact and which are
approximate, is described in ``docs/stats.md``.

What is described: for every int/float column of the output schema, and for the
text length in characters (``text_chars``), count, nulls, mean, min, max,
quantiles (exact up to 200 values, then from a DDSketch: within 0.5% relative error)
and a 20-bin histogram; drops by reason with a deterministic sample of rejected
documents; the top URL domains of kept web documents.

The same rows give the same document, byte for byte: nothing is random, and every
merge is a sum, a minimum/maximum or a "smallest k" selection, so the partitioning,
the batch sizes and the merge order do not matter (except for the top-domain counts
once a task sees more than 1024 distinct hosts: those stay within their stated bounds).

A column's histogram is exact when its field declares a range in its Arrow
metadata (``RANGE_KEY``, see :func:`with_range`)::

    pa.field("language_score", pa.float32(), metadata={"arcforge.range": "0,1"})
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from arcforge.runtime import storage
from arcforge.runtime.accumulators import NumericAccumulator
from arcforge.runtime.rowsamples import DomainAccumulator, RejectAccumulator
from arcforge.runtime.sketch import (
    BINS,
    DOMAINS_LG_MAX_K,
    EXACT_VALUES,
    MAX_BUCKETS,
    QUANTILES,
    RELATIVE_ACCURACY,
    SAMPLE_SIZE,
    SAMPLE_TEXT_CHARS,
)
from arcforge.runtime.dataset import DatasetRef

FORMAT = "arcforge.stats/2"  # the stats document (_stats.json); /2: DDSketch quantiles, relative_error
RECORD_FORMAT = "arcforge.stats.partial/2"  # one task's state, inside its commit record
# states of earlier versions (KLL sketches): a merge counts them as partitions without stats
SUPERSEDED_RECORD_FORMATS = ("arcforge.stats.partial/1",)
STATS_FILE = "_stats.json"
RANGE_KEY = "arcforge.range"  # field metadata: "lo,hi", the range of the exact histogram
TEXT_CHARS = "text_chars"  # the described attribute derived from the text column
TOP_DOMAINS = 20
KLL_K = EXACT_VALUES  # former name (the KLL sketch is gone): how many values the state keeps exactly

__all__ = [
    "BINS", "DOMAINS_LG_MAX_K", "EXACT_VALUES", "FORMAT", "KLL_K", "MAX_BUCKETS", "QUANTILES", "RANGE_KEY",
    "RECORD_FORMAT", "RELATIVE_ACCURACY", "SAMPLE_SIZE", "SAMPLE_TEXT_CHARS", "STATS_FILE",
    "SUPERSEDED_RECORD_FORMATS", "TEXT_CHARS", "TOP_DOMAINS", "DistributionCollector", "described_attributes",
    "declared_range", "merge_records", "read_stats", "render_status", "with_range", "write_stats",
]  # fmt: skip


def with_range(field: pa.Field, lo: float, hi: float) -> pa.Field:
    """The field with a declared value range: its histogram is then exact (20 bins over [lo, hi])."""
    meta = dict(field.metadata or {})
    meta[RANGE_KEY.encode()] = f"{lo!r},{hi!r}".encode()
    return field.with_metadata(meta)


def declared_range(field: pa.Field) -> tuple[float, float] | None:
    """The ``arcforge.range`` of a field, or None; a malformed one is an error, not ignored."""
    raw = (field.metadata or {}).get(RANGE_KEY.encode())
    if raw is None:
        return None
    text = raw.decode()
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"field {field.name}: {RANGE_KEY} must be 'lo,hi' (two numbers), got {text!r}") from None
    if not (lo < hi) or lo != lo or hi != hi or abs(lo) == float("inf") or abs(hi) == float("inf"):
        raise ValueError(f"field {field.name}: {RANGE_KEY} needs finite lo < hi, got {text!r}")
    return lo, hi


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def described_attributes(schema: pa.Schema) -> dict[str, tuple[str, bool, tuple[float, float] | None]]:
    """name -> (type, is_int, declared range): ``text_chars`` (when there is a string
    ``text`` column) and every int/float column, in schema order. A column that is
    itself named ``text_chars`` is described instead of the derived length."""
    out: dict[str, tuple[str, bool, tuple[float, float] | None]] = {}
    text = schema.field("text") if "text" in schema.names else None
    if text is not None and (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        if TEXT_CHARS not in schema.names:
            out[TEXT_CHARS] = ("int64", True, None)
    for f in schema:
        if _is_numeric(f.type):
            out[f.name] = (str(f.type), pa.types.is_integer(f.type), declared_range(f))
    return out


def _has_urls(schema: pa.Schema) -> bool:
    return "url" in schema.names and (pa.types.is_string(schema.field("url").type) or pa.types.is_large_string(schema.field("url").type))


class DistributionCollector:
    """One task's mergeable accumulators; feed it what the task writes, batch by batch."""

    def __init__(self, schema: pa.Schema, stage: str) -> None:
        self.stage = stage
        self.attributes = described_attributes(schema)
        self.numeric = {name: NumericAccumulator(is_int, rng) for name, (_, is_int, rng) in self.attributes.items()}
        self.rejects = RejectAccumulator()
        self.domains = DomainAccumulator() if _has_urls(schema) else None
        self.docs = 0
        self.rejected = 0

    def add_kept(self, table: pa.Table | pa.RecordBatch) -> None:
        self.docs += table.num_rows
        if table.num_rows == 0:
            return
        names = set(table.column_names)
        for name, acc in self.numeric.items():
            if name == TEXT_CHARS and TEXT_CHARS not in names:
                column = pc.utf8_length(table.column("text")) if "text" in names else None
            else:
                column = table.column(name) if name in names else None
            acc.add(column, table.num_rows)
        if self.domains is not None and "url" in names:
            self.domains.add(table.column("url"))

    def add_rejected(self, table: pa.Table | pa.RecordBatch) -> None:
        """Rejected rows: ``reason`` and ``detail`` columns (and ``step`` from a chain)."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        self.rejected += table.num_rows
        self.rejects.add(table)

    def to_record(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "stage": self.stage,
            "docs": self.docs,
            "rejected": self.rejected,
            "attributes": {name: acc.to_state() for name, acc in self.numeric.items()},
            "reasons": self.rejects.to_state(),
            "domains": self.domains.to_state() if self.domains is not None else None,
        }


def merge_records(
    records: list[dict[str, Any]], schema: pa.Schema, stage: str, *, fingerprint: str | None = None
) -> dict[str, Any]:
    """The stage's stats document from its partitions' records (``to_record``), in
    partition order (the result does not depend on the order). A missing record
    (``None``, ``{}``: a partition committed before stats existed), or one of a
    superseded format (``SUPERSEDED_RECORD_FORMATS``: committed by an earlier version,
    then resumed), is counted in ``partitions_without_stats`` and otherwise left out.
    ``fingerprint`` (the stage manifest's) lets readers refuse a stale ``_stats.json``."""
    attributes = described_attributes(schema)
    usable = []
    for rec in records:
        if not rec or rec.get("format") in SUPERSEDED_RECORD_FORMATS:
            continue
        if rec.get("format") != RECORD_FORMAT:
            raise ValueError(f"stage {stage}: partial stats of format {rec.get('format')!r}, expected {RECORD_FORMAT}")
        if rec.get("stage") != stage:
            raise ValueError(f"stage {stage}: partial stats of stage {rec.get('stage')!r} handed to its merge")
        missing = sorted(set(attributes) - set(rec["attributes"]))
        if missing:
            raise ValueError(f"stage {stage}: partial stats lack attribute(s) {missing} of the schema")
        usable.append(rec)
    described = {}
    for name, (type_name, is_int, rng) in attributes.items():
        acc = NumericAccumulator.merge_states([r["attributes"][name] for r in usable], is_int, rng)
        described[name] = acc.describe(type_name)
    domains = DomainAccumulator.merge_states([r.get("domains") for r in usable]) if _has_urls(schema) else None
    return {
        "format": FORMAT,
        "stage": stage,
        "fingerprint": fingerprint,
        "partitions": len(records),
        "partitions_without_stats": len(records) - len(usable),
        "docs": sum(r["docs"] for r in usable),
        "rejected": sum(r["rejected"] for r in usable),
        "attributes": described,
        "rejected_by_reason": RejectAccumulator.merge_states([r["reasons"] for r in usable]),
        "domains": domains.describe(TOP_DOMAINS) if domains is not None else None,
        "settings": {
            "bins": BINS,
            "relative_accuracy": RELATIVE_ACCURACY,
            "max_buckets": MAX_BUCKETS,
            "exact_values": EXACT_VALUES,
            "domains_lg_max_k": DOMAINS_LG_MAX_K,
            "sample_size": SAMPLE_SIZE,
            "sample_text_chars": SAMPLE_TEXT_CHARS,
        },
    }


def write_stats(ref: DatasetRef, stats: dict[str, Any]) -> None:
    """Write ``_stats.json`` beside the stage's ``_manifest.json``, atomically (a temp
    name and a rename locally, one PUT on S3). Strict JSON: a NaN or infinity is refused."""
    fs, base = ref.fs()
    data = json.dumps(stats, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False).encode()
    storage.write_bytes_atomic(fs, storage.join(base, STATS_FILE), data)


def read_stats(ref: DatasetRef) -> dict[str, Any] | None:
    """The stage's stats document, or None where there is none."""
    fs, base = ref.fs()
    path = storage.join(base, STATS_FILE)
    if not storage.exists(fs, path):
        return None
    return storage.read_json(fs, path)


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    return f"{v:.4g}"


def render_status(stats: dict[str, Any]) -> list[str]:
    """A few plain-text lines for ``arcforge status``: docs, drops by reason, one line per
    attribute (p10/p50/p90), the top domains."""
    lines = [f"{stats.get('stage', '?')}: {stats.get('docs', 0):,} docs kept, {stats.get('rejected', 0):,} rejected"]
    reasons = stats.get("rejected_by_reason") or {}
    if reasons:
        ranked = sorted(reasons.items(), key=lambda kv: (-kv[1]["count"], kv[0]))
        lines.append("  dropped: " + ", ".join(f"{r} {e['count']:,}" for r, e in ranked))
    attrs = stats.get("attributes") or {}
    width = max((len(n) for n in attrs), default=0)
    for name, a in attrs.items():
        q = a.get("quantiles") or {}
        extra = f", {a['nulls']:,} null" if a.get("nulls") else ""
        if not a.get("quantiles_exact") and a.get("relative_error"):
            extra += f", ±{a['relative_error']:.1%}"
        lines.append(
            f"  {name:<{width}}  p10 {_num(q.get('p10'))}  p50 {_num(q.get('p50'))}  p90 {_num(q.get('p90'))}"
            f"  (n {a.get('count', 0):,}{extra})"
        )
    dom = stats.get("domains")
    if dom and dom.get("top"):
        top = ", ".join(f"{d['domain']} {d['docs']:,}" for d in dom["top"][:5])
        lines.append(f"  top domains{'' if dom.get('exact') else ' (approx.)'}: {top}")
    return lines
