"""Datasets on disk or S3: stable part names, per-partition commit records, a manifest.

Layout of one stage's output (``<root>/<run>/<stage>/``)::

    part-00042.parquet         one per input partition, written atomically
    _commits/part-00042.json   the partition's commit record, written after the part
    rejected/part-00042.parquet  dropped rows with ``reason`` and ``detail``
    rejected/_manifest.json
    _manifest.json             written last; readers trust only this

A commit record is the unit of resume: a partition whose record carries the
expected fingerprint is done. A part with no record is a leftover of a killed
attempt and is simply overwritten, and no reader sees it because the manifest
does not list it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from arcforge.runtime import storage
from arcforge.runtime.documents import text_bytes
from arcforge.runtime.storage import S3Options

MANIFEST = "_manifest.json"
COMMITS = "_commits"
REJECTED = "rejected"
STATS = "_stats.json"  # distribution stats beside the manifest (arcforge.runtime.distribution)
FORMAT = "arcforge.dataset/1"


def schema_to_b64(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_b64(data: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data)))


def part_name(partition: int) -> str:
    return f"part-{partition:05d}.parquet"


def fingerprint(*items: Any) -> str:
    """A short, stable hash of JSON-serialisable items (params, input fingerprints)."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class DatasetRef:
    """Where a dataset lives; cheap to pickle into tasks (no credentials inside)."""

    uri: str
    s3: S3Options | None = None  # None: the process's configured options (storage.configure)

    def fs(self) -> tuple[pafs.FileSystem, str]:
        return storage.filesystem(self.uri, self.s3)

    def child(self, name: str) -> DatasetRef:
        return DatasetRef(storage.join(self.uri, name), self.s3)

    @property
    def rejected(self) -> DatasetRef:
        return self.child(REJECTED)

    def part_uri(self, name: str) -> str:
        return storage.join(self.uri, name)


class PartWriter:
    """Stream one Parquet part: rows arrive in batches, row groups are written as they fill.

    A task's memory is then bounded by one row group, not by its partition. Row
    groups are cut at fixed row counts and text-byte totals computed from the rows
    themselves, so the same rows give the same bytes however the batches arrived.
    The file is written under a temporary name and made final by ``close``: a
    rename in the dataset directory locally, one streamed upload on S3.
    """

    def __init__(
        self,
        ref: DatasetRef,
        name: str,
        schema: pa.Schema,
        *,
        row_group_rows: int = 64 * 1024,
        row_group_bytes: int = 32 << 20,
    ) -> None:
        self.ref, self.name, self.schema = ref, name, schema
        self.row_group_rows, self.row_group_bytes = row_group_rows, row_group_bytes
        self.rows = 0
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: str | None = None

    def _open(self) -> None:
        fs, base = self.ref.fs()
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(base, exist_ok=True)
            self._tmp = os.path.join(base, f".tmp-{uuid.uuid4().hex}-{self.name}")
        else:
            fd, self._tmp = tempfile.mkstemp(prefix="arcforge-part-", suffix=".parquet")
            os.close(fd)
        self._writer = pq.ParquetWriter(self._tmp, self.schema, **storage.PARQUET_OPTIONS)

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered_rows += table.num_rows
        self._buffered_bytes += text_bytes(table)
        while self._buffered_rows >= self.row_group_rows or self._buffered_bytes >= self.row_group_bytes:
            self._flush_group()

    def _flush_group(self) -> None:
        """Write one row group: the first rows of the buffer up to the row or text-byte limit."""
        buffered = pa.concat_tables(self._buffer)
        cut = min(self.row_group_rows, buffered.num_rows)
        if "text" in buffered.column_names:
            sizes = pc.binary_length(buffered.column("text").slice(0, cut)).fill_null(0).to_numpy(zero_copy_only=False)
            over = np.nonzero(np.cumsum(sizes) >= self.row_group_bytes)[0]
            if len(over):
                cut = int(over[0]) + 1
        if self._writer is None:
            self._open()
        self._writer.write_table(buffered.slice(0, cut), row_group_size=cut)
        self.rows += cut
        rest = buffered.slice(cut)
        self._buffer = [rest] if rest.num_rows else []
        self._buffered_rows = rest.num_rows
        self._buffered_bytes = text_bytes(rest)

    def close(self, *, keep_empty: bool = True) -> dict[str, Any] | None:
        """Finish the file and publish it; an empty part is written only with ``keep_empty``."""
        while self._buffered_rows:
            self._flush_group()
        if self._writer is None:
            if not keep_empty:
                return None
            self._open()
        self._writer.close()
        self._writer = None
        tmp, self._tmp = self._tmp, None
        info = storage.publish_file(tmp, self.ref.uri, self.name, self.ref.s3)
        return {"name": self.name, "rows": self.rows, "bytes": info["bytes"], "sha256": info["sha256"]}

    def abort(self) -> None:
        """Drop the temporary file of a failed task."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - already failing; the temp file goes anyway
                pass
            self._writer = None
        if self._tmp and os.path.exists(self._tmp):
            os.remove(self._tmp)
        self._tmp = None


def write_part(ref: DatasetRef, name: str, table: pa.Table) -> dict[str, Any]:
    """Write one Parquet part atomically and describe it for the commit record."""
    data = storage.parquet_bytes(table)
    fs, base = ref.fs()
    storage.write_bytes_atomic(fs, storage.join(base, name), data)
    return {"name": name, "rows": table.num_rows, "bytes": len(data), "sha256": storage.sha256(data)}


def write_commit(ref: DatasetRef, record: dict[str, Any]) -> None:
    fs, base = ref.fs()
    storage.write_json_atomic(fs, storage.join(base, COMMITS, record["name"] + ".json"), record)


def read_commits(ref: DatasetRef) -> dict[int, dict[str, Any]]:
    """All commit records of a stage directory, keyed by partition."""
    fs, base = ref.fs()
    sel = pafs.FileSelector(storage.join(base, COMMITS), allow_not_found=True)
    out: dict[int, dict[str, Any]] = {}
    for info in fs.get_file_info(sel):
        if info.is_file and info.path.endswith(".json") and "/.tmp-" not in info.path:
            rec = storage.read_json(fs, info.path)
            out[int(rec["partition"])] = rec
    return out


def read_manifest(ref: DatasetRef) -> dict[str, Any] | None:
    fs, base = ref.fs()
    path = storage.join(base, MANIFEST)
    if not storage.exists(fs, path):
        return None
    return storage.read_json(fs, path)


def sum_stats(records: list[dict[str, Any]]) -> dict[str, int | float]:
    total: Counter[str] = Counter()
    for r in records:
        total.update(r.get("stats", {}))
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in sorted(total.items())}


def write_manifests(
    ref: DatasetRef,
    *,
    stage: str,
    stage_fingerprint: str,
    records: list[dict[str, Any]],
    schema: pa.Schema,
    params: dict[str, Any],
    inputs: list[str],
    version: str | None = None,
) -> dict[str, Any]:
    """Write the rejected manifest, then the stage manifest last: that write is the stage's commit.
    ``version``: the stage's code version (``arcforge status`` names it when it moves on)."""
    records = sorted(records, key=lambda r: r["partition"])
    fs, base = ref.fs()
    rejected_parts = [dict(r["rejected"], partition=r["partition"]) for r in records if r.get("rejected")]
    rej_manifest = {
        "format": FORMAT,
        "stage": stage,
        "kind": "rejected",
        "fingerprint": stage_fingerprint,
        "rows": sum(p["rows"] for p in rejected_parts),
        "parts": rejected_parts,
        "created": time.time(),
    }
    storage.write_json_atomic(fs, storage.join(base, REJECTED, MANIFEST), rej_manifest)
    parts = [
        {k: r.get(k, []) for k in ("partition", "name", "rows", "bytes", "sha256", "fingerprint", "input", "files")}
        for r in records
    ]
    errors = [e for r in records for e in r.get("errors", [])]
    manifest = {
        "format": FORMAT,
        "stage": stage,
        "kind": "dataset",
        "fingerprint": stage_fingerprint,
        "params": params,
        "inputs": inputs,
        **({"version": version} if version is not None else {}),
        "schema": schema.to_string(show_field_metadata=False, show_schema_metadata=False),
        "schema_ipc": schema_to_b64(schema),
        "rows": sum(p["rows"] for p in parts),
        "bytes": sum(p["bytes"] for p in parts),
        "parts": parts,
        "stats": sum_stats(records),
        "errors": errors,
        "created": time.time(),
    }
    storage.write_json_atomic(fs, storage.join(base, MANIFEST), manifest)
    return manifest


def write_artifact_manifest(
    ref: DatasetRef,
    *,
    stage: str,
    stage_fingerprint: str,
    params: dict[str, Any],
    inputs: list[str],
    files: list[dict[str, Any]],
    meta: dict[str, Any],
    stats: dict[str, Any],
    version: str | None = None,
) -> dict[str, Any]:
    """The commit of an artifact stage: its files (name, bytes, sha256) and metadata."""
    fs, base = ref.fs()
    manifest = {
        "format": FORMAT,
        "stage": stage,
        "kind": "artifact",
        "fingerprint": stage_fingerprint,
        "params": params,
        "inputs": inputs,
        **({"version": version} if version is not None else {}),
        "files": files,
        "meta": meta,
        "rows": 0,
        "parts": [],
        "stats": stats,
        "errors": [],
        "created": time.time(),
    }
    storage.write_json_atomic(fs, storage.join(base, MANIFEST), manifest)
    return manifest


def read_dataset(ref: DatasetRef, columns: list[str] | None = None) -> pa.Table:
    """Read every committed part listed in the manifest (never a directory listing)."""
    manifest = read_manifest(ref)
    if manifest is None:
        raise FileNotFoundError(f"{ref.uri}: no {MANIFEST}; the dataset is not committed")
    fs, base = ref.fs()
    tables = [storage.read_parquet(fs, storage.join(base, p["name"]), columns) for p in manifest["parts"]]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


def remove_stale(ref: DatasetRef, keep_partitions: set[int]) -> None:
    """Delete commit records (and their parts) for partitions that no longer exist."""
    fs, base = ref.fs()
    for part, rec in read_commits(ref).items():
        if part in keep_partitions:
            continue
        for path in (
            storage.join(base, COMMITS, rec["name"] + ".json"),
            storage.join(base, rec["name"]),
            storage.join(base, REJECTED, rec["name"]),
        ):
            if storage.exists(fs, path):
                fs.delete_file(path)


def invalidate(ref: DatasetRef) -> None:
    """Forget a stage's commits so it is recomputed (``--force``); parts are overwritten later."""
    fs, base = ref.fs()
    for path in (storage.join(base, MANIFEST), storage.join(base, REJECTED, MANIFEST), storage.join(base, STATS)):
        if storage.exists(fs, path):
            fs.delete_file(path)
    commits = storage.join(base, COMMITS)
    if storage.exists(fs, commits):
        fs.delete_dir_contents(commits)
