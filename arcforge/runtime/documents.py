"""The one document schema every stage reads and writes.

Keeping it in one place means a Parquet part written by any stage opens in
polars, duckdb or Spark with the same columns, and a stage only declares the
columns it *adds*.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),  # URL for web pages, path for files
        pa.field("language", pa.string()),
        pa.field("metadata", pa.string()),  # JSON object: free-form per source
    ]
)

# Rejected rows keep every column of the dataset they were dropped from, plus why.
REJECT_FIELDS = [
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
    pa.field("step", pa.string()),  # the step of a fused chain that dropped the row; null outside chains
]

PARQUET_COMPRESSION = "zstd"


def doc_id(*parts: str) -> str:
    """A stable id from whatever identifies a document at its origin.

    Ids must not depend on run order or random UUIDs (warcio invents one for
    ARC records), so that a retried partition writes byte-identical output.
    """
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def dump_metadata(meta: Mapping[str, Any] | None) -> str:
    """Metadata is stored as a sorted-key JSON string so parts stay byte-stable."""
    return json.dumps(dict(meta or {}), sort_keys=True, ensure_ascii=False, default=str)


def with_columns(schema: pa.Schema, fields: Iterable[pa.Field]) -> pa.Schema:
    """Append fields to a schema, replacing any of the same name (a re-added column)."""
    out = schema
    for f in fields:
        idx = out.get_field_index(f.name)
        out = out.set(idx, f) if idx >= 0 else out.append(f)
    return out


def put_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """Set a column by name, appending it if absent: a stage that scores data it has
    scored before replaces its attribute instead of adding a second one."""
    idx = table.schema.get_field_index(name)
    return table.set_column(idx, name, values) if idx >= 0 else table.append_column(name, values)


def rejected_schema(schema: pa.Schema) -> pa.Schema:
    return with_columns(schema, REJECT_FIELDS)


def docs_table(rows: list[dict[str, Any]], schema: pa.Schema = DOC_SCHEMA) -> pa.Table:
    """Build a table from row dicts, filling absent nullable columns with nulls."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.table(cols, schema=schema)


class ColumnMismatch(ValueError):
    """A stage returned a column it does not declare, or left out one it must return."""


def check_columns(
    table: pa.Table | pa.RecordBatch, schema: pa.Schema, stage: str, required: Iterable[str] = ()
) -> None:
    """Refuse what ``conform`` would otherwise hide: an undeclared column (it would be
    dropped) or a missing column that is declared as added or not nullable (it would
    be filled with nulls). The message names the stage and the column."""
    names = set(table.column_names)
    extra = sorted(names - set(schema.names))
    if extra:
        raise ColumnMismatch(
            f"stage {stage} returned column(s) {extra} that it does not declare; add them to the stage's "
            f"`adds` (or its schema) or drop them"
        )
    missing = [f.name for f in schema if f.name not in names and (not f.nullable or f.name in set(required))]
    if missing:
        raise ColumnMismatch(f"stage {stage} did not return the declared column(s) {missing}")


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """Select and cast columns to `schema` so every part of a dataset is identical in shape."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def text_bytes(table: pa.Table | pa.RecordBatch) -> int:
    """UTF-8 bytes of the text column: the 'bytes in/out' every stage reports."""
    if "text" not in table.column_names or table.num_rows == 0:
        return 0
    import pyarrow.compute as pc

    total = pc.sum(pc.binary_length(table.column("text"))).as_py()
    return int(total or 0)
