"""Input rows -> documents: the part of ``io.read`` that every format shares.

A reader hands :func:`assemble` an Arrow table of input rows (as typed as the
format allows) and each row's locator (byte offset for line formats, row number
otherwise); it gets back one :class:`Output` with the kept documents and the rows
rejected with a reason. Metadata is encoded per batch: with polars when it is
importable (``struct.json_encode``, about 8x faster than ``json.dumps`` per row),
else with a Python encoder that writes the same JSON (compact separators, top-level
keys sorted, NaN and infinities as null).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.runtime.documents import DOC_SCHEMA, doc_id, docs_table, rejected_schema, with_columns
from arcforge.runtime.stage import Output, split_rejected

MAX_ROWS = 64 * 1024  # rows (kept + rejected) per Output: few, large Outputs keep per-call costs low
MAX_TEXT_BYTES = 16 << 20  # text bytes per Output (a single larger document still comes out alone)
DOC_NAMES = frozenset(DOC_SCHEMA.names)

try:  # polars is optional: the Python encoder gives the same JSON, only slower
    import polars as _pl
except ImportError:  # pragma: no cover - depends on the environment
    _pl = None


@dataclass(frozen=True)
class Layout:
    """Which input columns become which output columns."""

    text: str
    id: str | None
    url: str | None
    language: str | None
    keep: tuple[pa.Field, ...]
    metadata: str | tuple[str, ...]  # "rest" or the input columns packed into metadata
    source: str
    keep_empty: bool = False  # documents with an empty text are kept (ReadParams.keep_empty)

    @property
    def schema(self) -> pa.Schema:
        """The stage's output schema: the document columns and the kept ones."""
        return with_columns(DOC_SCHEMA, self.keep)

    def rejected_rows(self, rows: list[dict[str, Any]]) -> Output:
        """An Output of rejected rows only (dicts with reason and detail; absent columns null)."""
        return Output(kept=self.schema.empty_table(), rejected=docs_table(rows, rejected_schema(self.schema)))

    @property
    def mapped(self) -> frozenset[str]:
        """Input columns never packed into metadata in "rest" mode."""
        return frozenset(c for c in (self.text, self.id, self.url, self.language) if c) | {f.name for f in self.keep}


def schema_to_spec(schema: pa.Schema) -> dict[str, str] | str:
    """A schema for a Split's JSON spec: ``{column: type}`` when every type has a
    pyarrow alias (readable in commit records), else base64 Arrow IPC."""
    try:
        if all(pa.type_for_alias(str(f.type)) == f.type for f in schema):
            return {f.name: str(f.type) for f in schema}
    except (ValueError, KeyError):
        pass
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_spec(data: dict[str, str] | str) -> pa.Schema:
    if isinstance(data, dict):
        return pa.schema([pa.field(k, pa.type_for_alias(v)) for k, v in data.items()])
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data)))


def is_stringlike(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def text_type_ok(t: pa.DataType) -> bool:
    """Types a text column may have: strings, binary holding UTF-8, null (all missing)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return is_stringlike(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_null(t)


def has_binary(t: pa.DataType) -> bool:
    """Binary anywhere inside a type (an HF ``Image`` feature is ``struct<bytes: binary, path>``)."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        return True
    if pa.types.is_dictionary(t):
        return has_binary(t.value_type)
    return any(has_binary(t.field(i).type) for i in range(t.num_fields)) if t.num_fields else False


def normalize_type(t: pa.DataType) -> pa.DataType:
    """The type a kept column gets in the output: dictionaries decoded, nulls as strings."""
    if pa.types.is_dictionary(t):
        return normalize_type(t.value_type)
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_string_view(t):
        return pa.string()
    return t


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def to_string(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Any column as strings (an id may be a number; a nested value becomes its JSON)."""
    arr = _plain(col)
    if arr.type == pa.string():
        return arr
    try:
        return arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        values = arr.to_pylist()
        return pa.array([v if v is None or isinstance(v, str) else dumps(v) for v in values], pa.string())


def slices(table: pa.Table, text_column: str | None) -> Iterator[pa.Table]:
    """Cut a table into pieces of at most MAX_ROWS rows and about MAX_TEXT_BYTES of text."""
    n = table.num_rows
    if n == 0:
        return
    if text_column is None or text_column not in table.column_names or not is_stringlike(table.schema.field(text_column).type):
        for s in range(0, n, MAX_ROWS):
            yield table.slice(s, MAX_ROWS)
        return
    sizes = pc.binary_length(_plain(table.column(text_column))).fill_null(0).to_numpy(zero_copy_only=False)
    cum = np.cumsum(sizes, dtype=np.int64)
    start = 0
    while start < n:
        base = cum[start - 1] if start else 0
        stop = min(n, start + MAX_ROWS, int(np.searchsorted(cum, base + MAX_TEXT_BYTES, side="right")))
        stop = max(stop, start + 1)
        yield table.slice(start, stop - start)
        start = stop


# ---------------------------------------------------------------------------- metadata


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def dumps(obj: dict[str, Any]) -> str:
    """The metadata JSON of the Python path (same shape as polars' encoder)."""
    return json.dumps(_clean(obj), ensure_ascii=False, separators=(",", ":"), default=str, sort_keys=False)


def _encode_python(table: pa.Table) -> pa.Array:
    return pa.array([dumps(r) for r in table.to_pylist()], pa.string())


def _encode(table: pa.Table) -> pa.Array:
    if _pl is not None:
        try:
            df = _pl.from_arrow(table, rechunk=False)
            out = df.select(_pl.struct(_pl.all()).struct.json_encode()).to_series().to_arrow()
            return out.cast(pa.string())
        except BaseException as exc:  # noqa: BLE001 - polars panics are BaseExceptions; fall back
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
    return _encode_python(table)


def encode_metadata(table: pa.Table, lay: Layout, extra: dict[str, Any] | None = None) -> pa.Array:
    """One JSON object per row from the metadata columns (top-level keys sorted).

    In "rest" mode every column that is not mapped or kept goes in, except binary
    ones; an input ``metadata`` column is merged in as datatrove's adapter does
    (a struct's fields, or a JSON-object string's keys; the row's own columns win).
    """
    n = table.num_rows
    cols: dict[str, pa.Array] = {}
    merge_json: pa.Array | None = None
    if lay.metadata == "rest":
        mapped = lay.mapped
        for name in table.column_names:
            if name in mapped or has_binary(table.schema.field(name).type):
                continue
            cols[name] = _plain(table.column(name))
        meta = cols.get("metadata")
        if meta is not None and pa.types.is_struct(meta.type):
            del cols["metadata"]
            for i in range(meta.type.num_fields):
                child = meta.type.field(i).name
                if child not in cols:
                    cols[child] = pc.struct_field(meta, i)
        elif meta is not None and is_stringlike(meta.type):
            merge_json = to_string(cols.pop("metadata"))
    else:
        for name in lay.metadata:
            cols[name] = _plain(table.column(name)) if name in table.column_names else pa.nulls(n, pa.string())
    for k, v in (extra or {}).items():
        cols.setdefault(k, pa.array([v] * n))
    for name, arr in list(cols.items()):
        if pa.types.is_floating(arr.type):  # NaN and infinities as null, whichever encoder runs
            cols[name] = pc.if_else(pc.is_finite(arr), arr, pa.scalar(None, arr.type))
    if not cols:
        return pa.array(["{}"] * n, pa.string())
    encoded = _encode(pa.table({k: cols[k] for k in sorted(cols)}))
    if merge_json is None or merge_json.null_count == n:
        return encoded
    out = []
    for own, old in zip(encoded.to_pylist(), merge_json.to_pylist()):
        try:
            base = json.loads(old) if old else {}
        except ValueError:
            base = None
        if not isinstance(base, dict):  # not a JSON object: kept as a plain value
            base = {"metadata": old}
        merged = {**base, **json.loads(own)}
        out.append(dumps({k: merged[k] for k in sorted(merged)}))
    return pa.array(out, pa.string())


# ---------------------------------------------------------------------------- assembly


def _cast_lenient(col: pa.Array, typ: pa.DataType) -> tuple[pa.Array, list[int]]:
    """Cast a column; values that do not convert become null and are reported by index."""
    col = _plain(col)
    if col.type == typ:
        return col, []
    try:
        return col.cast(typ), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    values, bad = [], []
    for i in range(len(col)):
        try:
            values.append(col.slice(i, 1).cast(typ))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            values.append(pa.nulls(1, typ))
            bad.append(i)
    return pa.concat_arrays(values), bad


def _text(col: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, list[int]]:
    """The text as strings; a binary column (some writers store strings so) is decoded,
    and values that are not UTF-8 are reported by index."""
    arr = _plain(col)
    if is_stringlike(arr.type) or not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        return to_string(arr), []
    try:
        return arr.cast(pa.string()), []
    except pa.ArrowInvalid:
        pass
    values, bad = [], []
    for i, v in enumerate(arr.to_pylist()):
        try:
            values.append(None if v is None else v.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(v.decode("utf-8", "replace"))
            bad.append(i)
    return pa.array(values, pa.string()), bad


def assemble(
    table: pa.Table,
    locs: Sequence[int] | np.ndarray,
    where: str,
    name: str,
    lay: Layout,
    *,
    extra: dict[str, Any] | None = None,
    metadata: pa.Array | None = None,
    problems: dict[int, tuple[str, str]] | None = None,
) -> Output:
    """Documents from input rows.

    ``locs[i]`` locates row ``i`` in its file (``where`` says what it is: "byte
    offset" or "row"); ids missing from the data are ``doc_id(name, str(loc))``.
    ``problems`` are rejections the caller already found (index -> reason, message).
    """
    n = table.num_rows
    cols = table.column_names
    reasons: list[str | None] = [None] * n
    details: list[str | None] = [None] * n

    def reject(i: int, reason: str, msg: str) -> None:
        if reasons[i] is None:
            reasons[i] = reason
            details[i] = f"{where} {locs[i]} of {name}: {msg}"

    for i, (reason, msg) in (problems or {}).items():
        reject(i, reason, msg)
    if lay.text in cols:
        text, bad = _text(table.column(lay.text))
        for i in bad:
            reject(i, "bad_utf8", f"{lay.text!r} is not valid UTF-8")
    else:
        text = pa.nulls(n, pa.string())
    if text.null_count:
        for i in np.flatnonzero(text.is_null().to_numpy(zero_copy_only=False)):
            reject(int(i), "missing_text", f"no {lay.text!r} value")
        text = text.fill_null("")
    empty = np.flatnonzero(pc.binary_length(text).to_numpy(zero_copy_only=False) == 0) if not lay.keep_empty else ()
    for i in empty:
        reject(int(i), "empty_text", "the text is empty")

    ids: pa.Array | None = to_string(table.column(lay.id)) if lay.id and lay.id in cols else None
    if ids is None or ids.null_count:
        given = ids.to_pylist() if ids is not None else [None] * n
        ids = pa.array([g if g is not None else doc_id(name, str(loc)) for g, loc in zip(given, locs)], pa.string())
    url = to_string(table.column(lay.url)) if lay.url and lay.url in cols else pa.nulls(n, pa.string())
    lang = to_string(table.column(lay.language)) if lay.language and lay.language in cols else pa.nulls(n, pa.string())
    out = {
        "id": ids,
        "text": text,
        "source": pa.repeat(pa.scalar(lay.source, pa.string()), n),
        "url": url,
        "language": lang,
        "metadata": metadata if metadata is not None else encode_metadata(table, lay, extra),
    }
    for f in lay.keep:
        if f.name not in cols:
            out[f.name] = pa.nulls(n, f.type)
            continue
        arr, bad = _cast_lenient(table.column(f.name), f.type)
        for i in bad:
            reject(i, "bad_type", f"{f.name!r} is not {f.type}")
        out[f.name] = arr
    return split_rejected(pa.table(out), reasons, details)


def assemble_all(
    table: pa.Table,
    locs: np.ndarray,
    where: str,
    name: str,
    lay: Layout,
    *,
    extra: dict[str, Any] | None = None,
    problems: dict[int, tuple[str, str]] | None = None,
) -> Iterator[Output]:
    """:func:`assemble` over a table of any size, in Outputs of bounded size."""
    start = 0
    for piece in slices(table, lay.text):
        stop = start + piece.num_rows
        sub = {i - start: p for i, p in (problems or {}).items() if start <= i < stop}
        yield assemble(piece, locs[start:stop], where, name, lay, extra=extra, problems=sub)
        start = stop


def file_row(name: str, reason: str, detail: str, lay: Layout) -> Output:
    """One rejected row that stands for a whole file, or the rest of one (corrupt, truncated, ...)."""
    row = {"id": doc_id(name, reason, detail), "text": "", "source": lay.source, "reason": reason, "detail": detail}
    return lay.rejected_rows([row])
