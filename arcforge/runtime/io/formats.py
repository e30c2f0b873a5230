"""Streaming readers for Parquet, CSV/TSV, plain-text files and Hugging Face folders.

Each reads one Split and yields bounded Outputs (see ``rows.py``); a file that
cannot be read to the end keeps the rows read before the damage and adds one
rejected row (``corrupt_file``, ``truncated_file``, ``schema_mismatch``,
``unreadable_input``) saying where it stopped. Errors that may pass (S3
outages) are re-raised so the runtime retries the task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from arcforge.runtime import storage
from arcforge.runtime.io.decompress import open_content
from arcforge.runtime.documents import doc_id, docs_table
from arcforge.runtime.io.rows import (
    MAX_ROWS,
    MAX_TEXT_BYTES,
    Layout,
    assemble_all,
    file_row,
    has_binary,
    text_type_ok,
)
from arcforge.runtime.stage import Output, TaskContext, split_rejected

CSV_BLOCK = 4 << 20
_READ_ERRORS = (pa.ArrowException, OSError, EOFError)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1000]


def _damaged(exc: BaseException, name: str, where: str, lay: Layout, ctx: TaskContext) -> Output:
    """The rejected row for a file that stops being readable (re-raises errors that may pass)."""
    if isinstance(exc, OSError) and storage.is_transient(exc):
        raise exc
    reason = "truncated_file" if "runcated" in str(exc) else "corrupt_file"
    detail = f"{name}: {_one_line(exc)} ({where})"
    ctx.stats.update(f"read.{reason}")
    ctx.errors.append(f"{reason}: {detail}")
    return file_row(name, reason, detail, lay)


def schema_problem(schema: pa.Schema, lay: Layout) -> str | None:
    """Why a file's own schema cannot give documents (None when it can)."""
    if lay.text not in schema.names:
        return f"no column {lay.text!r} (columns: {', '.join(schema.names)})"
    if not text_type_ok(schema.field(lay.text).type):
        return f"column {lay.text!r} is {schema.field(lay.text).type}, not a string"
    return None


def _mismatch(name: str, problem: str, lay: Layout, ctx: TaskContext) -> Output:
    ctx.stats.update("read.schema_mismatch")
    ctx.errors.append(f"schema_mismatch: {name}: {problem}")
    return file_row(name, "schema_mismatch", f"{name}: {problem}", lay)


def needed_columns(schema: pa.Schema, lay: Layout) -> list[str]:
    """The columns a reader must load: mapped, kept and metadata ones (binary ones only if kept)."""
    keep = {f.name for f in lay.keep}
    if lay.metadata == "rest":
        return [f.name for f in schema if f.name in lay.mapped or f.name in keep or not has_binary(f.type)]
    wanted = lay.mapped | set(lay.metadata)
    return [f.name for f in schema if f.name in wanted]


# ---------------------------------------------------------------------------- Parquet


def read_parquet(path: str, fs: Any, name: str, lay: Layout, spec: dict[str, Any], ctx: TaskContext) -> Iterator[Output]:
    with fs.open_input_file(path) as f:
        try:
            pf = pq.ParquetFile(f)
        except _READ_ERRORS as exc:
            yield _damaged(exc, name, "footer", lay, ctx)
            return
        problem = schema_problem(pf.schema_arrow, lay)
        if problem:
            yield _mismatch(name, problem, lay, ctx)
            return
        meta = pf.metadata
        first, last = spec.get("row_groups") or (0, meta.num_row_groups)
        groups = list(range(first, last))
        if not groups:  # a file without rows
            return
        row = sum(meta.row_group(i).num_rows for i in range(first))
        rows = sum(meta.row_group(i).num_rows for i in groups)
        size = sum(meta.row_group(i).total_byte_size for i in groups)
        batch_size = int(max(1, min(MAX_ROWS, MAX_TEXT_BYTES * max(rows, 1) // max(size, 1))))
        ctx.stats.update("read.row_groups", len(groups))
        columns = needed_columns(pf.schema_arrow, lay)
        try:
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns, use_threads=False):
                table = pa.Table.from_batches([batch])
                yield from assemble_all(table, np.arange(row, row + table.num_rows), "row", name, lay)
                row += table.num_rows
        except _READ_ERRORS as exc:
            yield _damaged(exc, name, f"at row {row}", lay, ctx)


# ---------------------------------------------------------------------------- CSV / TSV


def read_csv(
    path: str, fs: Any, name: str, lay: Layout, spec: dict[str, Any], params: Any, ctx: TaskContext
) -> Iterator[Output]:
    compression = spec.get("compression")
    delimiter = params.csv_delimiter or ("\t" if ".tsv" in name.lower() else ",")
    read_opts = pacsv.ReadOptions(encoding=params.encoding, block_size=CSV_BLOCK, use_threads=False)
    bad: list[Any] = []

    def on_bad_row(row: Any) -> str:
        bad.append(row)
        return "skip"

    parse_opts = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_bad_row)
    content, partial = open_content(fs, path, compression)
    with content as head:
        try:
            names = pacsv.open_csv(head, read_options=read_opts, parse_options=parse_opts).schema.names
        except _READ_ERRORS as exc:
            yield _damaged(partial.error if partial is not None and partial.error else exc, name, "header", lay, ctx)
            return
    problem = None if lay.text in names else f"no column {lay.text!r} (columns: {', '.join(names)})"
    if problem:
        yield _mismatch(name, problem, lay, ctx)
        return
    bad.clear()
    convert = pacsv.ConvertOptions(
        column_types={n: pa.binary() for n in names}, strings_can_be_null=False, quoted_strings_can_be_null=False
    )
    row = 0
    content, partial = open_content(fs, path, compression)
    with content as stream:
        reader = pacsv.open_csv(stream, read_options=read_opts, parse_options=parse_opts, convert_options=convert)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                batch = None
            except _READ_ERRORS as exc:
                yield from _bad_rows(bad, row, name, lay)
                yield _damaged(exc, name, f"after data row {row}", lay, ctx)
                return
            yield from _bad_rows(bad, row, name, lay)
            if batch is None:
                if partial is not None and partial.error is not None:  # cut or damaged: every row before it is out
                    yield _damaged(partial.error, name, f"after data row {row}", lay, ctx)
                return
            table, problems = _decode(pa.Table.from_batches([batch]), params.encoding)
            yield from assemble_all(table, np.arange(row, row + table.num_rows), "row", name, lay, problems=problems)
            row += table.num_rows


def _bad_rows(bad: list[Any], row: int, name: str, lay: Layout) -> Iterator[Output]:
    if not bad:
        return
    rows = [
        {
            "id": doc_id(name, "bad_row", str(row), str(k)),
            "text": r.text,
            "source": lay.source,
            "reason": "bad_row",
            "detail": f"a row in the block from data row {row} of {name}: expected {r.expected_columns} columns, got {r.actual_columns}",
        }
        for k, r in enumerate(bad)
    ]
    bad.clear()
    yield lay.rejected_rows(rows)


def _decode(table: pa.Table, encoding: str) -> tuple[pa.Table, dict[int, tuple[str, str]]]:
    """CSV cells arrive as bytes; a cell that is not UTF-8 rejects its row as bad_utf8."""
    cols, problems = {}, {}
    for name in table.column_names:
        arr = table.column(name).combine_chunks()
        try:
            cols[name] = arr.cast(pa.string())
            continue
        except pa.ArrowInvalid:
            pass
        values = []
        for i, v in enumerate(arr.to_pylist()):
            try:
                values.append(v.decode("utf-8"))
            except UnicodeDecodeError as exc:
                values.append(v.decode("utf-8", "replace"))
                problems.setdefault(i, ("bad_utf8", f"column {name!r} is not valid UTF-8 at byte {exc.start} of the cell"))
        cols[name] = pa.array(values, pa.string())
    return pa.table(cols), problems


# ---------------------------------------------------------------------------- text files


def read_text_files(spec: dict[str, Any], params: Any, lay: Layout, ctx: TaskContext) -> Iterator[Output]:
    """One document per file; id from the path relative to the input folder, url = that path."""
    rows: list[dict[str, Any]] = []
    reasons: list[str | None] = []
    details: list[str | None] = []
    text_bytes = 0

    def flush() -> Output:
        nonlocal rows, reasons, details, text_bytes
        out = split_rejected(docs_table(rows), reasons, details)
        rows, reasons, details, text_bytes = [], [], [], 0
        return out

    for uri, name in zip(spec["files"], spec["names"]):
        row = {"id": doc_id(name), "text": "", "source": lay.source, "url": name, "language": None, "metadata": "{}"}
        reason = detail = None
        fs, path = storage.filesystem(uri)
        try:
            with fs.open_input_file(path) as f:
                data = f.read()
        except OSError as exc:
            if storage.is_transient(exc):
                raise
            data, reason, detail = b"", "unreadable_input", f"{name}: {_one_line(exc)}"
            ctx.errors.append(f"unreadable: {detail}")
        ctx.stats.update("read.files")
        try:
            text = data.decode(params.encoding)
        except UnicodeDecodeError as exc:
            text = data.decode(params.encoding, "replace")
            reason, detail = "bad_utf8", f"{name}: not {params.encoding} at byte {exc.start}: {exc.reason}"
        text = text.removeprefix("\ufeff")
        if reason is None and not text.strip() and not params.keep_empty:
            reason, detail = "empty_text", f"{name}: {len(data)} bytes, no text"
        rows.append({**row, "text": text})
        reasons.append(reason)
        details.append(detail)
        text_bytes += len(data)
        if len(rows) >= MAX_ROWS or text_bytes >= MAX_TEXT_BYTES:
            yield flush()
    if rows:
        yield flush()


# ---------------------------------------------------------------------------- Hugging Face


def hf_schema(f: Any) -> tuple[Any, pa.Schema]:
    """Open an ``.arrow`` file of a ``save_to_disk`` folder: IPC stream (what datasets
    writes) or IPC file format, told apart by the file's magic bytes."""
    magic = f.read(6)
    f.seek(0)
    reader = pa.ipc.open_file(f) if magic == b"ARROW1" else pa.ipc.open_stream(f)
    return reader, reader.schema


def _batches(reader: Any) -> Iterator[pa.RecordBatch]:
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
        return
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def read_hf(path: str, fs: Any, name: str, lay: Layout, spec: dict[str, Any], ctx: TaskContext) -> Iterator[Output]:
    with fs.open_input_file(path) as f:
        try:
            reader, schema = hf_schema(f)
        except _READ_ERRORS as exc:
            yield _damaged(exc, name, "schema", lay, ctx)
            return
        problem = schema_problem(schema, lay)
        if problem:
            yield _mismatch(name, problem, lay, ctx)
            return
        extra = None
        if spec.get("hf_split"):
            extra = {"hf_split" if "split" in schema.names else "split": spec["hf_split"]}
        row = 0
        try:
            for batch in _batches(reader):
                table = pa.Table.from_batches([batch])
                yield from assemble_all(table, np.arange(row, row + table.num_rows), "row", name, lay, extra=extra)
                row += table.num_rows
        except _READ_ERRORS as exc:
            yield _damaged(exc, name, f"at row {row}", lay, ctx)


__all__ = ["hf_schema", "read_csv", "read_hf", "read_parquet", "read_text_files", "schema_problem"]
