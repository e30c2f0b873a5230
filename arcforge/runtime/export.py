"""``arcforge export``: hand a committed dataset on as JSONL or Parquet.

Only the parts the manifest lists are read (never a directory listing), one
record batch at a time, so exporting a large dataset needs the memory of one
batch. JSONL goes to one file (``.jsonl``, ``.jsonl.gz`` or ``.jsonl.zst`` by
its extension); Parquet goes to one file per part in a folder, named as in the
dataset, so a reader can split the work the same way. Columns keep their names
and values; ``metadata`` stays the JSON string it is in the dataset, so
``io.read`` reads an export back to the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from arcforge.runtime import dataset, storage
from arcforge.runtime.dataset import DatasetRef

BATCH_ROWS = 4096


def iter_batches(ref: DatasetRef, columns: list[str] | None = None) -> Iterator[tuple[str, pa.RecordBatch]]:
    """(part name, batch) for every committed part, in manifest order."""
    manifest = dataset.read_manifest(ref)
    if manifest is None:
        raise FileNotFoundError(f"{ref.uri}: no {dataset.MANIFEST}; not a committed dataset")
    if manifest.get("kind") not in ("dataset", "rejected"):
        raise ValueError(f"{ref.uri}: a {manifest.get('kind')} stage has no rows to export")
    fs, base = ref.fs()
    for part in manifest["parts"]:
        with fs.open_input_file(storage.join(base, part["name"])) as f:
            yield from ((part["name"], b) for b in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def export_jsonl(ref: DatasetRef, out: str, columns: list[str] | None = None) -> int:
    compression = "gzip" if out.endswith(".gz") else "zstd" if out.endswith(".zst") else None
    fs, path = storage.filesystem(out)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    rows = 0
    with fs.open_output_stream(path, compression=compression) as f:
        for _, batch in iter_batches(ref, columns):
            lines = [json.dumps(r, ensure_ascii=False, default=_json_default) for r in batch.to_pylist()]
            if lines:
                f.write(("\n".join(lines) + "\n").encode("utf-8"))
            rows += batch.num_rows
    return rows


def export_parquet(ref: DatasetRef, out: str, columns: list[str] | None = None) -> int:
    fs, base = storage.filesystem(out)
    fs.create_dir(base, recursive=True)
    rows = 0
    sink: Any = None
    writer: pq.ParquetWriter | None = None
    current = None

    def finish() -> None:
        if writer is not None:
            writer.close()
            sink.close()

    try:
        for name, batch in iter_batches(ref, columns):
            if name != current:
                finish()
                sink = fs.open_output_stream(storage.join(base, name))
                writer = pq.ParquetWriter(sink, batch.schema, **storage.PARQUET_OPTIONS)
                current = name
            writer.write_batch(batch)
            rows += batch.num_rows
    finally:
        finish()
    return rows


def export(path: str, out: str, fmt: str, columns: list[str] | None = None) -> int:
    """Export the dataset at ``path`` to ``out``; return the number of rows written."""
    ref = DatasetRef(path.rstrip("/"))
    next(iter_batches(ref, columns), None)  # a path that is not a committed dataset fails before anything is written
    if fmt == "jsonl":
        return export_jsonl(ref, out, columns)
    if fmt == "parquet":
        return export_parquet(ref, out, columns)
    raise ValueError(f"unknown export format {fmt!r}; expected jsonl or parquet")
