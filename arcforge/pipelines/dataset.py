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
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from arcforge.pipelines import storage
from arcforge.pipelines.storage import S3Options

MANIFEST = "_manifest.json"
COMMITS = "_commits"
REJECTED = "rejected"
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
    s3: S3Options = S3Options()

    def fs(self) -> tuple[pafs.FileSystem, str]:
        return storage.filesystem(self.uri, self.s3)

    def child(self, name: str) -> DatasetRef:
        return DatasetRef(storage.join(self.uri, name), self.s3)

    @property
    def rejected(self) -> DatasetRef:
        return self.child(REJECTED)

    def part_uri(self, name: str) -> str:
        return storage.join(self.uri, name)


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
) -> dict[str, Any]:
    """Write the rejected manifest, then the stage manifest last: that write is the stage's commit."""
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
    for path in (storage.join(base, MANIFEST), storage.join(base, REJECTED, MANIFEST)):
        if storage.exists(fs, path):
            fs.delete_file(path)
    commits = storage.join(base, COMMITS)
    if storage.exists(fs, commits):
        fs.delete_dir_contents(commits)
