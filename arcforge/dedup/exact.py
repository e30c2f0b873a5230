"""Exact deduplication on normalised text (``dedup.exact``) and on normalised URLs (``dedup.url``).

Two passes, each a pure function of its inputs so retries and resumes give the
same parts:

1. hash every document's normalised text, group by hash, and keep the member
   with the smallest ``(id, partition, row)``; the keeper does not depend on
   how the input is partitioned when ids are unique;
2. rewrite each input partition without its duplicates, which go to the
   rejected dataset with reason ``exact_duplicate`` (``duplicate_url``) and the keeper's id.

``dedup.url`` keys documents by their normalised URL instead (``normalize_url``: scheme and
host lower-cased, default ports, ``#fragment`` and a trailing ``/`` of the path dropped, query
kept); a document without a URL is never anyone's duplicate.

The stage is written once against the engine-neutral primitives of
``arcforge.runtime.globalops``: on Spark and Ray the grouping and the routing of
duplicates to their partitions are shuffles (nothing per row reaches the driver); the
local engine spills to Parquet and is the reference.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.runtime import storage
from arcforge.runtime.globalops import group_index
from arcforge.runtime.stage import GlobalStage, Output, Resources, StageParams, Stats, split_rejected
from arcforge.runtime.storage import S3Options
from arcforge.runtime.tasks import PartitionTask, commit_partition

_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


class ExactDedupParams(StageParams):
    lowercase: bool = True
    strip_punctuation: bool = False
    column: str = "text"


class UrlDedupParams(StageParams):
    column: str = "url"
    drop_query: bool = False  # also ignore ?query (tracking parameters), at the risk of merging distinct pages


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def normalize_url(url: str, drop_query: bool = False) -> str:
    """``HTTP://Example.com:80/a/?q=1#top`` -> ``http://example.com/a?q=1``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port if parts.port is not None else None
    netloc = host if port is None or str(port) == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    path = parts.path.rstrip("/") if parts.path not in ("", "/") else ""
    return urlunsplit((scheme, netloc, path, "" if drop_query else parts.query, ""))


def normalize_text(text: str, params: ExactDedupParams = ExactDedupParams()) -> str:
    """NFKC, optional casefold and punctuation strip, collapsed whitespace."""
    text = unicodedata.normalize("NFKC", text)
    if params.lowercase:
        text = text.casefold()
    if params.strip_punctuation:
        text = _PUNCT.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def text_hashes(texts: Iterable[str], params: ExactDedupParams = ExactDedupParams()) -> list[str]:
    return [hashlib.blake2b(normalize_text(t, params).encode(), digest_size=16).hexdigest() for t in texts]


def _digest(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def key_hashes(values: Iterable[str | None], params: ExactDedupParams | UrlDedupParams) -> list[str | None]:
    """The grouping key of each document; ``None`` (no URL) groups with nothing."""
    if isinstance(params, UrlDedupParams):
        return [None if not v or not v.strip() else _digest(normalize_url(v, params.drop_query)) for v in values]
    return [_digest(normalize_text(t or "", params)) for t in values]


def duplicate_reason(params: ExactDedupParams | UrlDedupParams) -> str:
    return "duplicate_url" if isinstance(params, UrlDedupParams) else "exact_duplicate"


def hash_table(table: pa.Table, partition: int, params: ExactDedupParams | UrlDedupParams) -> pa.Table:
    """Pass 1 per partition: (partition, row, id, hash) for every document with a key."""
    n = table.num_rows
    out = pa.table(
        {
            "partition": pa.array([partition] * n, pa.int32()),
            "row": pa.array(range(n), pa.int32()),
            "id": table.column("id").cast(pa.string()),
            "hash": pa.array(key_hashes(table.column(params.column).to_pylist(), params), pa.string()),
        }
    )
    return out.filter(pc.is_valid(out.column("hash"))) if out.column("hash").null_count else out


def find_duplicates(hashes: pa.Table) -> dict[int, dict[int, str]]:
    """Reference grouping: {partition: {row: keeper id}} for every non-keeper."""
    best: dict[str, tuple[str, int, int]] = {}
    rows = list(zip(*(hashes.column(c).to_pylist() for c in ("hash", "id", "partition", "row"))))
    for h, id_, part, row in rows:
        key = (id_, part, row)
        if h not in best or key < best[h]:
            best[h] = key
    drops: dict[int, dict[int, str]] = {}
    for h, id_, part, row in rows:
        keeper = best[h]
        if (id_, part, row) != keeper:
            drops.setdefault(part, {})[row] = keeper[0]
    return drops


def drop_rows(table: pa.Table, drops: dict[int, str], reason: str = "exact_duplicate") -> Output:
    """Pass 2 per partition: split the input into kept rows and duplicates with their keeper."""
    reasons = [reason if i in drops else None for i in range(table.num_rows)]
    details = [f"duplicate_of={drops[i]}" if i in drops else None for i in range(table.num_rows)]
    return split_rejected(table, reasons, details)


def _read_input(task: PartitionTask) -> pa.Table:
    fs, path = storage.filesystem(task.input_uri, S3Options(**task.s3))
    return storage.read_parquet(fs, path)


def rewrite_partition(task: PartitionTask, drops: dict[int, str], reason: str = "exact_duplicate") -> dict[str, Any]:
    started = time.time()
    table = _read_input(task)
    stats = Stats()
    stats.update("docs_in", table.num_rows)
    from arcforge.runtime.documents import conform, rejected_schema, text_bytes

    stats.update("bytes_in", text_bytes(table))
    out = drop_rows(table, drops, reason)
    rejected = conform(out.rejected, rejected_schema(task.schema)) if out.rejected is not None else None
    return commit_partition(task, conform(out.kept, task.schema), rejected, stats, started)


HASH_SCHEMA = pa.schema([("partition", pa.int32()), ("row", pa.int32()), ("id", pa.string()), ("hash", pa.string())])
DROP_SCHEMA = pa.schema([("partition", pa.int32()), ("row", pa.int32()), ("keeper", pa.string())])


def _hash_partition(task: PartitionTask, table: pa.Table, params: ExactDedupParams) -> pa.Table:
    """Pass 1 on a worker: the (partition, row, id, hash) rows of one input part."""
    return hash_table(table, task.partition, params)


def _duplicates(groups: pa.Table) -> pa.Table:
    """Whole hash groups in canonical order (hash, id, partition, row): every member but
    the first of its group is a duplicate of the first (the smallest (id, partition, row))."""
    _, first = group_index(groups, ["hash"])
    dup = np.arange(groups.num_rows) != first
    return pa.table(
        {
            "partition": groups.column("partition").filter(dup),
            "row": groups.column("row").filter(dup),
            "keeper": groups.column("id").take(pa.array(first[dup])),
        },
        schema=DROP_SCHEMA,
    )


def _rewrite(task: PartitionTask, drops: pa.Table, reason: str) -> dict[str, Any]:
    """Pass 2 on a worker: the partition's part without its duplicates, committed."""
    return rewrite_partition(task, dict(zip(drops.column("row").to_pylist(), drops.column("keeper").to_pylist())), reason)


class ExactDedup(GlobalStage[ExactDedupParams]):
    """One algorithm on every engine (``arcforge.runtime.globalops``): hash each part,
    group by hash keeping the smallest (id, partition, row), key the duplicates by
    partition and rewrite each pending partition with its own list of duplicates."""

    def required_columns(self, params: ExactDedupParams | UrlDedupParams) -> list[str]:
        return ["id", params.column]

    def run(self, ctx: Any) -> list[dict[str, Any]]:
        if not ctx.pending:
            return []
        params: ExactDedupParams = ctx.stage.params
        with ctx.engine.ops() as ops:
            hashes = ops.map_tasks(
                ctx.tasks, _hash_partition, HASH_SCHEMA, read=["id", params.column], args=(params,), resources=self.resources
            )
            drops = hashes.group_reduce(["hash"], _duplicates, DROP_SCHEMA, order_by=["id", "partition", "row"], batched=True)
            return ops.finish(ctx.pending, _rewrite, rows=drops, key="partition", args=(duplicate_reason(params),),
                              on_commit=ctx.on_commit, resources=self.resources)


EXACT_DEDUP = ExactDedup(
    "dedup.exact",
    ExactDedupParams,
    resources=Resources(cpus=1),
    engine="spark",
    doc="Exact dedup on normalised text; one deterministic keeper per group (local, Spark, Ray).",
)

URL_DEDUP = ExactDedup(
    "dedup.url",
    UrlDedupParams,
    resources=Resources(cpus=1),
    engine="spark",
    doc="Exact dedup on normalised URLs (documents without one are kept); smallest id kept (local, Spark, Ray).",
)
