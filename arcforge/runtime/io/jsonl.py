"""JSON Lines: byte-range splits of plain files, streaming reads of ``.gz``/``.zst``.

Blocks of complete lines (a few MB) are parsed at once by ``pyarrow.json``; a block
that fails is parsed line by line with ``json.loads``, so a bad line is rejected
with its byte offset and the lines around it still come out.

A split ``[start, end)`` reads the lines whose first byte is in the range: it
starts at the first line start at or after ``start`` and finishes the line that
straddles ``end``. Adjacent splits therefore cover every line exactly once.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from arcforge.runtime import storage
from arcforge.runtime.documents import doc_id
from arcforge.runtime.io.decompress import decompressed
from arcforge.runtime.io.rows import Layout, assemble, assemble_all, dumps, file_row
from arcforge.runtime.stage import Output, TaskContext

CHUNK = 4 << 20  # bytes read (and parsed) at a time
HEAD_BYTES = 1 << 20  # what schema inference reads
MAX_HEAD_BYTES = 64 << 20  # ... unless the first line is longer


class LineBlocks:
    """Complete lines of a byte stream, a block at a time.

    ``pos`` is the offset (in the uncompressed stream) of the next unread line;
    lines starting at or after ``end`` (when given) are left to the next split.
    """

    def __init__(self, stream: BinaryIO, pos: int = 0, end: int | None = None, chunk: int | None = None) -> None:
        self.stream, self.pos, self.end, self.chunk = stream, pos, end, chunk or CHUNK
        self.pending: list[bytes] = []  # a partial line, in pieces

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while self.end is None or self.pos < self.end:
            data = self.stream.read(self.chunk)
            if not data:
                if self.pending:  # a last line without a newline
                    block = b"".join(self.pending)
                    self.pending = []
                    yield self.pos, block
                    self.pos += len(block)
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                self.pending.append(data)
                continue
            block = b"".join([*self.pending, data[:cut]]) if self.pending else data[:cut]
            self.pending = [data[cut:]] if cut < len(data) else []
            if self.end is not None and self.pos + len(block) > self.end:
                q = self.end - self.pos
                stop = q if block[q - 1 : q] == b"\n" else block.index(b"\n", q) + 1
                if stop < len(block):
                    block = block[:stop]
                    self.pending = []
            yield self.pos, block
            self.pos += len(block)

    def partial(self) -> int:
        return sum(len(p) for p in self.pending)


def first_line_start(f: Any, start: int) -> int:
    """The offset of the first line that starts at or after ``start``."""
    if start == 0:
        return 0
    f.seek(start - 1)
    pos = start - 1
    while True:
        data = f.read(1 << 16)
        if not data:
            return pos
        i = data.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(data)


def line_spans(block: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without the newline) of every line of a block."""
    nl = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(block)]))
    if block.endswith(b"\n"):
        starts, ends = starts[:-1], ends[:-1]
    return starts, ends


def _blank_mask(block: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lengths = ends - starts
    blank = lengths == 0
    for i in np.flatnonzero((lengths > 0) & (lengths < 16)):
        blank[i] = not block[starts[i] : ends[i]].strip()
    return blank


def parse_options(explicit: pa.Schema | None) -> pajson.ParseOptions:
    return pajson.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer", newlines_in_values=False)


def parse_block(block: bytes, explicit: pa.Schema | None) -> pa.Table:
    opts = pajson.ReadOptions(use_threads=False, block_size=max(len(block) + 1, 1 << 16))
    return pajson.read_json(io.BytesIO(block), read_options=opts, parse_options=parse_options(explicit))


_PARSE_ERRORS = (pa.ArrowException, UnicodeDecodeError, ValueError)


def _lines(block: bytes, base: int) -> tuple[list[int], list[bytes], int]:
    starts, ends = line_spans(block)
    blank = _blank_mask(block, starts, ends)
    keep = np.flatnonzero(~blank)
    return [base + int(starts[i]) for i in keep], [block[starts[i] : ends[i]] for i in keep], int(blank.sum())


def read_block(block: bytes, base: int, name: str, lay: Layout, explicit: pa.Schema, ctx: TaskContext) -> Iterator[Output]:
    """Outputs for one block of complete lines starting at offset ``base``."""
    starts, ends = line_spans(block)
    blank = _blank_mask(block, starts, ends)
    offsets = base + starts[~blank]
    if blank.any():
        ctx.stats.update("read.blank_lines", int(blank.sum()))
    if len(offsets) == 0:
        return
    try:
        table = parse_block(block, explicit)
        if table.num_rows != len(offsets):  # two objects on one line, say
            raise ValueError("rows and lines differ")
    except _PARSE_ERRORS:
        ctx.stats.update("read.fallback_blocks")
        yield from _read_lines(block, base, name, lay, explicit, ctx)
        return
    yield from assemble_all(table, offsets, "byte offset", name, lay)


def _read_lines(block: bytes, base: int, name: str, lay: Layout, explicit: pa.Schema, ctx: TaskContext) -> Iterator[Output]:
    """The slow path: one line at a time, so each bad line gets its own reason."""
    offsets, lines, _ = _lines(block, base)
    good_offsets: list[int] = []
    good_lines: list[bytes] = []
    objs: list[dict[str, Any]] = []
    bad: list[tuple[int, str, str, str]] = []  # offset, reason, message, raw text
    for off, line in zip(offsets, lines):
        try:
            s = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((off, "bad_utf8", f"invalid UTF-8 at byte {off + exc.start}", line.decode("utf-8", "replace")))
            continue
        try:
            obj = json.loads(s)
        except ValueError as exc:
            bad.append((off, "bad_json", str(exc), s))
            continue
        if not isinstance(obj, dict):
            bad.append((off, "bad_json", f"not a JSON object but {type(obj).__name__}", s))
            continue
        text = obj.get(lay.text)
        if text is None:
            bad.append((off, "missing_text", f"no {lay.text!r} value", s))
            continue
        if not isinstance(text, str):
            bad.append((off, "bad_type", f"{lay.text!r} is {type(text).__name__}, not a string", s))
            continue
        try:
            dumps(obj).encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate escape ("\ud800")
            bad.append((off, "bad_utf8", f"lone surrogate: {exc.reason}", s))
            continue
        good_offsets.append(off)
        good_lines.append(line)
        objs.append(obj)
    if bad:
        yield _rejected_lines(bad, name, lay)
    if not good_lines:
        return
    try:  # the good lines parse together unless their types disagree
        table = parse_block(b"\n".join(good_lines) + b"\n", explicit)
        if table.num_rows != len(good_lines):
            raise ValueError("rows and lines differ")
        yield from assemble_all(table, np.asarray(good_offsets), "byte offset", name, lay)
    except _PARSE_ERRORS:
        for s in range(0, len(objs), 1024):
            yield _python_rows(objs[s : s + 1024], good_offsets[s : s + 1024], name, lay, explicit)


def _rejected_lines(bad: list[tuple[int, str, str, str]], name: str, lay: Layout) -> Output:
    return lay.rejected_rows(
        [
            {
                "id": doc_id(name, str(off)),
                "text": raw,
                "source": lay.source,
                "reason": reason,
                "detail": f"byte offset {off} of {name}: {msg}",
            }
            for off, reason, msg, raw in bad
        ]
    )


def _python_rows(objs: list[dict[str, Any]], offsets: list[int], name: str, lay: Layout, explicit: pa.Schema) -> Output:
    """Lines whose types disagree with each other: columns built value by value."""
    problems: dict[int, tuple[str, str]] = {}
    cols: dict[str, pa.Array] = {lay.text: pa.array([o[lay.text] for o in objs], pa.string())}
    for key in (lay.id, lay.url, lay.language):
        if key:
            cols[key] = pa.array([None if o.get(key) is None else str(o.get(key)) for o in objs], pa.string())
    for f in lay.keep:
        values = []
        for i, o in enumerate(objs):
            try:
                pa.array([o.get(f.name)], f.type)
                values.append(o.get(f.name))
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                values.append(None)
                problems[i] = ("bad_type", f"{f.name!r} is not {f.type}")
        cols[f.name] = pa.array(values, f.type)
    metas = []
    for o in objs:
        if lay.metadata == "rest":
            own = {k: v for k, v in o.items() if k not in lay.mapped}
            base = own.pop("metadata", None)
            if isinstance(base, dict):
                own = {**base, **own}
            elif base is not None:
                own["metadata"] = base
        else:
            own = {k: o.get(k) for k in lay.metadata}
        metas.append(dumps({k: own[k] for k in sorted(own)}))
    table = pa.table(cols)
    return assemble(table, offsets, "byte offset", name, lay, metadata=pa.array(metas, pa.string()), problems=problems)


def read_jsonl(
    path: str, fs: Any, name: str, lay: Layout, explicit: pa.Schema, spec: dict[str, Any], ctx: TaskContext
) -> Iterator[Output]:
    compression = spec.get("compression")
    with fs.open_input_file(path) as raw:
        if compression:
            blocks = LineBlocks(decompressed(raw, compression))
        else:
            start, end = spec.get("byte_range") or (0, None)
            pos = first_line_start(raw, start)
            raw.seek(pos)
            blocks = LineBlocks(raw, pos, end)
        try:
            for base, block in blocks:
                ctx.stats.update("read.bytes", len(block))
                yield from read_block(block, base, name, lay, explicit, ctx)
        except OSError as exc:
            if storage.is_transient(exc) or not compression:
                raise
            reason = "truncated_file" if "runcated" in str(exc) else "corrupt_file"
            lost = blocks.partial()
            detail = (
                f"{name}: {' '.join(str(exc).split())} at uncompressed byte offset {blocks.pos}"
                + (f" ({lost} bytes of an unfinished line dropped)" if lost else "")
            )
            ctx.stats.update(f"read.{reason}")
            ctx.errors.append(f"{reason}: {detail}")
            yield file_row(name, reason, detail, lay)


def head_bytes(stream: BinaryIO) -> bytes:
    """The complete lines of a stream's first MB (more when its first line is longer), to infer
    its columns; of a damaged or cut compressed file, the lines before the damage."""
    data, eof = b"", False
    while True:
        try:
            more = stream.read(HEAD_BYTES)
        except OSError:  # a damaged compressed file: its first lines still say what its columns are
            if b"\n" not in data:
                raise
            break
        if not more:
            eof = True
            break
        data += more
        if b"\n" in more or len(data) >= MAX_HEAD_BYTES:
            break
    return data if eof else data[: data.rfind(b"\n") + 1]


def head_table(stream: BinaryIO, name: str) -> pa.Table | None:
    """Rows of the first MB of a JSON Lines stream, to infer its columns; None when it has none."""
    complete = head_bytes(stream)
    stripped = complete.lstrip()
    if stripped.startswith(b"["):
        raise ValueError(f"{name} is a JSON array, not JSON Lines (one object per line); convert it first")
    if not stripped:
        return None
    try:
        table = parse_block(complete, None)
        if table.num_rows:
            return table
    except _PARSE_ERRORS:
        pass
    # Some lines are bad: the first type seen for each key, from the lines that parse.
    fields: dict[str, pa.Field] = {}
    rows = 0
    for line in complete.split(b"\n"):
        try:
            t = parse_block(line + b"\n", None) if line.strip() else None
        except _PARSE_ERRORS:
            continue
        if t is None or t.num_rows != 1:
            continue
        rows += 1
        for f in t.schema:
            if f.name not in fields or pa.types.is_null(fields[f.name].type):
                fields[f.name] = f
    return pa.schema(list(fields.values())).empty_table() if rows else None
