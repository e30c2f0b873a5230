"""``io.read``: the built-in reader stage, "any dataset in".

JSON Lines (plain, ``.gz``, ``.zst``), Parquet, CSV/TSV, folders of plain-text files
and Hugging Face ``save_to_disk`` folders become documents of the one schema
(``documents.DOC_SCHEMA``) plus the input columns named in ``keep``. The other
input columns go, as datatrove's adapter does, into the ``metadata`` JSON.

At plan time the input is cut into Splits of about ``partition_mb`` (byte ranges
of plain JSONL, groups of Parquet row groups, groups of small text files; one per
compressed JSONL, CSV or ``.arrow`` file), and the head of the first file gives
the output schema, so a missing ``text_key`` is a config error before any engine
starts. Workers stream their Split in bounded batches; bad rows are rejected with
a reason and their byte offset or row number, and rows read = kept + rejected.
"""

from __future__ import annotations

import codecs
import math
import posixpath
from collections.abc import Iterator
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from arcforge.runtime import storage
from arcforge.runtime.documents import with_columns
from arcforge.runtime.io.formats import hf_schema, read_csv, read_hf, read_parquet, read_text_files
from arcforge.runtime.io.inputs import Entry, detect, entries
from arcforge.runtime.io.decompress import open_content
from arcforge.runtime.io.jsonl import head_bytes, head_table, read_jsonl
from arcforge.runtime.io.rows import (
    DOC_NAMES,
    Layout,
    has_binary,
    normalize_type,
    schema_from_spec,
    schema_to_spec,
    text_type_ok,
)
from arcforge.runtime.stage import Output, Resources, SourceStage, Split, StageParams, TaskContext

Format = Literal["jsonl", "parquet", "csv", "text", "hf"]  # inputs.FORMATS
_HEAD_FILES = 8  # schema inference tries this many files before giving up


class ReadParams(StageParams):
    format: Format | None = None  # None: from the extension (a folder: hf if it has state.json, else its files)
    text_key: str = "text"
    id_key: str | None = "id"  # used when the column exists; else ids are doc_id(file name, byte offset | row)
    url_key: str | None = "url"  # used when the column exists
    language_key: str | None = "language"  # used when the column exists
    source: str = "io"
    keep: list[str] = Field(default_factory=list)  # input columns kept as typed output columns
    metadata_keys: Literal["rest"] | list[str] = "rest"  # "rest": every other column (datatrove's adapter)
    partition_mb: float = Field(128.0, gt=0)  # target input bytes per partition
    csv_delimiter: str | None = None  # None: "," (tab for .tsv)
    encoding: str = "utf-8"  # of text files and CSV
    glob: str | None = None  # files of an input folder to read (matched against their path inside it)
    keep_empty: bool = False  # keep documents whose text is empty (source code: an empty __init__.py marks a package)

    @field_validator("csv_delimiter")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is not None and len(v) != 1:
            raise ValueError("csv_delimiter must be one character")
        return v

    @field_validator("encoding")
    @classmethod
    def _codec(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:  # not a ValueError, so pydantic would not report it
            raise ValueError(f"unknown encoding {v!r}") from None
        return v

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: list[str]) -> list[str]:
        clash = sorted(set(v) & DOC_NAMES)
        if clash:
            raise ValueError(f"keep: {clash} are output columns already (id, text, source, url, language, metadata)")
        if len(set(v)) != len(v):
            raise ValueError("keep: a column is named twice")
        return v


# ---------------------------------------------------------------------------- schema


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def _head_schema(e: Entry, s3: Any, params: ReadParams) -> pa.Schema | None:
    fs, path = storage.filesystem(e.uri, s3)
    if e.format == "parquet":
        with fs.open_input_file(path) as f:
            return pq.read_schema(f)
    if e.format == "hf":
        with fs.open_input_file(path) as f:
            return hf_schema(f)[1]
    if e.format == "csv":
        with open_content(fs, path, e.compression)[0] as stream:
            delimiter = params.csv_delimiter or ("\t" if ".tsv" in e.name.lower() else ",")
            schema = pacsv.open_csv(
                pa.BufferReader(head_bytes(stream)),
                read_options=pacsv.ReadOptions(encoding=params.encoding, block_size=1 << 20, use_threads=False),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=lambda r: "skip"),
            ).schema
            # a cell that is not UTF-8 makes pyarrow infer binary; the reader rejects such rows
            return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_binary(f.type) else f for f in schema])
    with open_content(fs, path, e.compression)[0] as stream:
        table = head_table(stream, e.name)
        if table is None:
            return None
        # JSON has no dates: keep ISO strings as written (pyarrow would parse them)
        return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_temporal(f.type) else f for f in table.schema])


def input_schema(es: list[Entry], s3: Any, params: ReadParams) -> tuple[pa.Schema | None, str]:
    """The columns of the first readable file (None for text folders) and its name."""
    if es[0].format == "text":
        return None, es[0].name
    errors = []
    for e in es[:_HEAD_FILES]:
        try:
            schema = _head_schema(e, s3, params)
        except (pa.ArrowException, OSError, EOFError) as exc:
            if isinstance(exc, OSError) and storage.is_transient(exc):
                raise
            errors.append(f"{e.name} ({_one_line(exc)})")
            continue
        if schema is not None:
            return schema, e.name
    if errors:
        raise ValueError(f"cannot read the columns of {errors[0]}")
    return pa.schema([pa.field(params.text_key, pa.string())]), es[0].name  # only empty JSONL files


def layout(params: ReadParams, schema: pa.Schema | None, first: str, *, check: bool = True) -> Layout:
    """The column mapping; with ``check``, a ValueError (one line) for what the input lacks."""
    mdkeys = "rest" if params.metadata_keys == "rest" else tuple(params.metadata_keys)
    if schema is None:  # plain-text files: no columns
        if check and (params.keep or mdkeys != "rest"):
            raise ValueError("keep and metadata_keys do not apply to text files (one document per file)")
        return Layout("text", None, None, None, (), "rest", params.source, params.keep_empty)
    names = schema.names
    if check:
        cols = f"its columns are: {', '.join(names)}"[:400]
        if params.text_key not in names:
            raise ValueError(f"text_key {params.text_key!r} is not a column of {first}; {cols}")
        t = schema.field(params.text_key).type
        if not text_type_ok(t):
            raise ValueError(f"text_key {params.text_key!r} of {first} is {t}, not a string column")
        for key in ("id_key", "url_key", "language_key"):
            value = getattr(params, key)
            if value and key in params.model_fields_set and value not in names:
                raise ValueError(f"{key} {value!r} is not a column of {first}; {cols}")
        for k in params.keep:
            if k not in names:
                raise ValueError(f"keep: {k!r} is not a column of {first}; {cols}")
        for k in mdkeys if mdkeys != "rest" else ():
            if k not in names:
                raise ValueError(f"metadata_keys: {k!r} is not a column of {first}; {cols}")
            if has_binary(schema.field(k).type):
                raise ValueError(f"metadata_keys: {k!r} of {first} is binary ({schema.field(k).type}); keep it instead")
    keep = tuple(
        pa.field(k, normalize_type(schema.field(k).type)) if k in names else pa.field(k, pa.string()) for k in params.keep
    )
    return Layout(params.text_key, params.id_key, params.url_key, params.language_key, keep, mdkeys, params.source,
                  params.keep_empty)


def _typed(fmt: str, schema: pa.Schema | None, lay: Layout) -> pa.Schema:
    """What a reader must know of the head's types: the kept columns' types and, for
    JSON, the schema the parser is given (so ISO dates stay strings and the text is a string)."""
    if fmt != "jsonl" or schema is None:
        return pa.schema(list(lay.keep))
    fields = {lay.text: pa.field(lay.text, pa.string())}
    for k in (lay.id, lay.url, lay.language):
        if k and k in schema.names and not pa.types.is_null(schema.field(k).type) and k not in fields:
            fields[k] = schema.field(k)
    for f in lay.keep:
        fields.setdefault(f.name, f)
    for f in schema:  # string columns stay strings (pyarrow would parse ISO dates into timestamps)
        if f.name not in fields and pa.types.is_string(f.type):
            fields[f.name] = f
    return pa.schema(list(fields.values()))


def infer_schema(uris: list[str], s3: Any, params: ReadParams) -> pa.Schema:
    """The stage's output schema: the document columns plus the kept columns, typed."""
    es = entries(uris, s3, params)
    schema, first = input_schema(es, s3, params)
    lay = layout(params, schema, first)
    return lay.schema


# ---------------------------------------------------------------------------- plan


def _parquet_groups(e: Entry, s3: Any, target: int) -> list[list[int]] | None:
    """Consecutive row groups of about ``target`` bytes (uncompressed); None if unreadable."""
    fs, path = storage.filesystem(e.uri, s3)

    def footer() -> pq.FileMetaData:
        with fs.open_input_file(path) as f:
            return pq.read_metadata(f)

    try:
        meta = storage.retry_transient(footer, options=s3, what=e.uri)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, OSError) and storage.is_transient(exc):
            raise
        return None  # the reader rejects it as corrupt_file
    groups: list[list[int]] = []
    size = 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i).total_byte_size
        if groups and size + rg <= target:
            groups[-1][1] = i + 1
            size += rg
        else:
            groups.append([i, i + 1])
            size = rg
    return groups or [[0, 0]]


def plan(uris: list[str], s3: Any, params: ReadParams) -> list[Split]:
    es = entries(uris, s3, params)
    fmt = es[0].format
    schema, first = input_schema(es, s3, params)
    lay = layout(params, schema, first)
    common: dict[str, Any] = {"format": fmt}
    typed = _typed(fmt, schema, lay)
    if len(typed):
        common["types"] = schema_to_spec(typed)
    target = max(1, int(params.partition_mb * (1 << 20)))
    splits: list[Split] = []
    if fmt == "text":
        group: list[Entry] = []
        for e in [*es, None]:
            if group and (e is None or sum(g.size for g in group) + e.size > target):
                spec = {**common, "files": [g.uri for g in group], "names": [g.name for g in group], "sizes": [g.size for g in group]}
                splits.append(Split(group[0].uri, sum(g.size for g in group), spec))
                group = []
            if e is not None:
                group.append(e)
        return splits
    for e in es:
        spec = {**common, "name": e.name}
        if e.compression:
            spec["compression"] = e.compression
        if e.hf_split:
            spec["hf_split"] = e.hf_split
        if fmt == "jsonl" and not e.compression:
            n = max(1, math.ceil(e.size / target))
            splits += [Split(e.uri, e.size, {**spec, "byte_range": [i * e.size // n, (i + 1) * e.size // n]}) for i in range(n)]
        elif fmt == "parquet":
            groups = _parquet_groups(e, s3, target)
            if groups is None:
                splits.append(Split(e.uri, e.size, spec))
            else:
                splits += [Split(e.uri, e.size, {**spec, "row_groups": g}) for g in groups]
        else:
            splits.append(Split(e.uri, e.size, spec))
    return splits


# ---------------------------------------------------------------------------- read


def _read_split(path: str, fs: Any, params: ReadParams, ctx: TaskContext, spec: dict[str, Any]) -> Iterator[Output]:
    fmt = spec["format"]
    typed = schema_from_spec(spec["types"]) if spec.get("types") else pa.schema([])
    lay = layout(params, typed if fmt != "text" else None, "", check=False)
    name = spec.get("name") or posixpath.basename(path)
    if fmt == "jsonl":
        explicit = typed if params.text_key in typed.names else with_columns(typed, [pa.field(params.text_key, pa.string())])
        yield from read_jsonl(path, fs, name, lay, explicit, spec, ctx)
    elif fmt == "parquet":
        yield from read_parquet(path, fs, name, lay, spec, ctx)
    elif fmt == "csv":
        yield from read_csv(path, fs, name, lay, spec, params, ctx)
    elif fmt == "hf":
        yield from read_hf(path, fs, name, lay, spec, ctx)
    elif fmt == "text":
        yield from read_text_files(spec, params, lay, ctx)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def read(path: str, fs: Any, params: ReadParams, ctx: TaskContext) -> Iterator[Output]:
    """Read one Split (``ctx.split``). Without one (a caller that does not plan), the
    whole input at ``path`` is planned and read here, split after split."""
    if ctx.split and "format" in ctx.split:
        yield from _read_split(path, fs, params, ctx, ctx.split)
        return
    uri = f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path
    for split in plan([uri], storage.active_options(), params):
        sub_fs, sub_path = storage.filesystem(split.uri)
        yield from _read_split(sub_path, sub_fs, params, ctx, split.spec)


READ = SourceStage(
    "io.read",
    ReadParams,
    read,
    plan=plan,
    infer_schema=infer_schema,
    reads_dirs=True,
    engine="spark",
    resources=Resources(cpus=1),
    doc="Any dataset in: JSONL (.gz/.zst), Parquet, CSV/TSV, text folders, Hugging Face save_to_disk folders.",
)

__all__ = ["READ", "Entry", "ReadParams", "detect", "entries", "infer_schema", "input_schema", "layout", "plan", "read"]
