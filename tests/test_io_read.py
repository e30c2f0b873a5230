"""io.read on real files written by the libraries users write them with.

The stage's hooks (plan, infer_schema, read) are called directly with a local
filesystem and a TaskContext per Split: no engine is started.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
import shutil
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
import zstandard

from arcforge.runtime.documents import DOC_SCHEMA, conform, doc_id, rejected_schema
from arcforge.runtime.io import jsonl as jsonl_mod
from arcforge.runtime.io import rows as rows_mod
from arcforge.runtime.io.read import ReadParams, detect, infer_schema, plan, read
from arcforge.runtime.io.rows import MAX_ROWS
from arcforge.runtime.stage import SourceStage, TaskContext, resolve_stage
from arcforge.runtime import storage
from arcforge.runtime.storage import S3Options

FS = pafs.LocalFileSystem()
S3 = S3Options()


class Result:
    def __init__(self, kept: pa.Table, rejected: pa.Table | None, ctxs: list[TaskContext], splits: list[Any], outs: int):
        self.kept, self.rejected, self.ctxs, self.splits, self.outputs = kept, rejected, ctxs, splits, outs

    @property
    def texts(self) -> list[str]:
        return self.kept.column("text").to_pylist()

    def reasons(self) -> list[tuple[str, str]]:
        return [] if self.rejected is None else list(zip(self.rejected["reason"].to_pylist(), self.rejected["detail"].to_pylist()))

    def stat(self, name: str) -> int:
        return sum(c.stats.counters.get(name, 0) for c in self.ctxs)


def read_all(inputs: list[Any], s3: S3Options = S3, **params: Any) -> Result:
    uris = [str(p) for p in inputs]
    p = ReadParams(**params)
    schema = infer_schema(uris, s3, p)
    splits = plan(uris, s3, p)
    assert splits == plan(uris, s3, p)  # deterministic
    json.dumps([s.spec for s in splits])  # specs are JSON
    kept, rejected, ctxs, n = [], [], [], 0
    for sp in splits:
        ctx = TaskContext(split=sp.spec)
        ctxs.append(ctx)
        fs, path = storage.filesystem(sp.uri, s3)  # what the runtime hands the reader
        for out in read(path, fs, p, ctx):
            n += 1
            rej = out.rejected.num_rows if out.rejected is not None else 0
            assert out.kept.num_rows + rej <= MAX_ROWS
            assert set(out.kept.column_names) == set(schema.names)
            kept.append(conform(out.kept, schema))  # as the runtime does: the columns must fit
            if rej:
                rejected.append(conform(out.rejected, rejected_schema(schema)))
    table = pa.concat_tables(kept) if kept else schema.empty_table()
    rej = pa.concat_tables(rejected) if rejected else None
    return Result(table, rej, ctxs, splits, n)


def fineweb_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "text": f"Document {i}: " + "naïve café ünïcode " * (i % 7) + "line\nbreak",
            "id": f"<urn:uuid:{i:08d}>",
            "dump": "CC-MAIN-2013-20",
            "url": f"http://example.com/{i}",
            "date": "2013-05-18T07:12:25Z",
            "file_path": "s3://commoncrawl/crawl-data/CC-MAIN-2013-20/x.warc.gz",
            "language": "en",
            "language_score": 0.5 + (i % 50) / 100,
            "token_count": 10 + i,
        }
        for i in range(start, start + n)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> bytes:
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)
    path.write_bytes(data)
    return data


# ---------------------------------------------------------------------------- registry, params


def test_registered_with_its_hooks() -> None:
    stage = resolve_stage("io.read")
    assert isinstance(stage, SourceStage) and stage.params is ReadParams and stage.reads_dirs
    assert stage._plan is plan and stage._infer_schema is infer_schema


def test_params_are_checked() -> None:
    with pytest.raises(ValidationError):
        ReadParams(fromat="jsonl")
    with pytest.raises(ValidationError):
        ReadParams(format="xml")
    with pytest.raises(ValidationError):
        ReadParams(keep=["url"])
    with pytest.raises(ValidationError):
        ReadParams(partition_mb=0)
    with pytest.raises(ValidationError):
        ReadParams(encoding="no-such-codec")


def test_format_from_extension() -> None:
    assert detect("a.jsonl") == ("jsonl", None)
    assert detect("a.json.gz") == ("jsonl", "gzip")
    assert detect("a.ndjson.zst") == ("jsonl", "zstd")
    assert detect("a.jsonl.bz2") == ("jsonl", "bz2") and detect("t.csv.xz") == ("csv", "xz")
    assert detect("x/y.parquet") == ("parquet", None)
    assert detect("t.TSV.gz") == ("csv", "gzip")
    assert detect("r.md") == ("text", None)
    assert detect("r.bin")[0] is None


# ---------------------------------------------------------------------------- JSONL


def test_fineweb_jsonl_defaults(tmp_path: Path) -> None:
    rows = fineweb_rows(50)
    write_jsonl(tmp_path / "000_00000.jsonl", rows)
    r = read_all([tmp_path / "000_00000.jsonl"], keep=["token_count"])
    assert r.kept.schema.names == [*DOC_SCHEMA.names, "token_count"]
    assert r.kept.schema.field("token_count").type == pa.int64()
    assert r.texts == [x["text"] for x in rows]
    assert r.kept["id"].to_pylist() == [x["id"] for x in rows]
    assert r.kept["url"].to_pylist() == [x["url"] for x in rows]
    assert set(r.kept["language"].to_pylist()) == {"en"} and set(r.kept["source"].to_pylist()) == {"io"}
    assert r.kept["token_count"].to_pylist() == [x["token_count"] for x in rows]
    meta = json.loads(r.kept["metadata"][3].as_py())
    assert meta == {"date": "2013-05-18T07:12:25Z", "dump": "CC-MAIN-2013-20", "file_path": rows[3]["file_path"], "language_score": rows[3]["language_score"]}
    assert list(meta) == sorted(meta)  # ISO dates stay strings, keys sorted
    assert r.rejected is None


@pytest.mark.parametrize("chunk", [None, 97])
def test_byte_range_splits_cover_every_line_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int | None) -> None:
    if chunk:
        monkeypatch.setattr(jsonl_mod, "CHUNK", chunk)  # lines straddle reads too
    rows = [{"text": f"{i} " + "é" * (i * 37 % 301), "n": i} for i in range(400)]
    data = write_jsonl(tmp_path / "lines.jsonl", rows)
    for mb in (0.0005, 0.001, 0.0123, 1.0):
        r = read_all([tmp_path / "lines.jsonl"], partition_mb=mb)
        ranges = [s.spec["byte_range"] for s in r.splits]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        if mb < 0.01:
            assert len(r.splits) > 10
        assert r.texts == [x["text"] for x in rows]
    # ids are stable hashes of (file name, byte offset of the line)
    offsets = [0]
    for line in data.splitlines(keepends=True)[:-1]:
        offsets.append(offsets[-1] + len(line))
    assert r.kept["id"].to_pylist() == [doc_id("lines.jsonl", str(o)) for o in offsets]


def test_a_split_whose_range_falls_inside_one_long_line_is_empty(tmp_path: Path) -> None:
    rows = [{"text": "short"}, {"text": "x" * 5000}, {"text": "after"}]
    write_jsonl(tmp_path / "long.jsonl", rows)
    r = read_all([tmp_path / "long.jsonl"], partition_mb=1000 / 2**20)
    assert len(r.splits) > 3 and r.texts == ["short", "x" * 5000, "after"]


def small_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs of at most 1,024 rows, so small files show the streaming in several Outputs."""
    from arcforge.runtime.io import formats, rows

    monkeypatch.setattr(rows, "MAX_ROWS", 1024)
    monkeypatch.setattr(formats, "MAX_ROWS", 1024)


def test_gzip_and_zstd_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_outputs(monkeypatch)
    rows = fineweb_rows(3000)
    data = b"".join(json.dumps(x).encode() + b"\n" for x in rows)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    with pa.CompressedOutputStream(str(tmp_path / "b.jsonl.zst"), "zstd") as out:
        out.write(data)
    (tmp_path / "c.jsonl.bz2").write_bytes(bz2.compress(data))
    (tmp_path / "d.ndjson.xz").write_bytes(lzma.compress(data))
    for name in ("a.jsonl.gz", "b.jsonl.zst", "c.jsonl.bz2", "d.ndjson.xz"):
        r = read_all([tmp_path / name], partition_mb=0.01)
        assert len(r.splits) == 1  # compressed files are not split
        assert r.texts == [x["text"] for x in rows] and r.rejected is None
        assert r.outputs >= 3  # streamed in bounded batches


def test_bad_jsonl_lines_are_quarantined_with_their_offset(tmp_path: Path) -> None:
    lines = [
        b'{"text": "good one", "id": "g1"}',
        b"this is not json",
        b'{"title": "no text here", "id": "x"}',
        b'{"text": 42, "id": "num"}',
        b'{"text": "caf\xe9 latin-1", "id": "latin"}',
        b"",
        b'{"text": "", "id": "empty"}',
        b'[1, 2]',
        b'{"text": "good two", "id": "g2"}',
    ]
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "bad.jsonl").write_bytes(data)
    offsets = {}
    pos = 0
    for line in lines:
        offsets[line] = pos
        pos += len(line) + 1
    r = read_all([tmp_path / "bad.jsonl"])
    assert r.texts == ["good one", "good two"]
    got = r.reasons()
    expect = [
        ("bad_json", lines[1]),
        ("missing_text", lines[2]),
        ("bad_type", lines[3]),
        ("bad_utf8", lines[4]),
        ("empty_text", lines[6]),
        ("bad_json", lines[7]),
    ]
    assert sorted(reason for reason, _ in got) == sorted(reason for reason, _ in expect)
    for reason, line in expect:
        assert any(rr == reason and f"byte offset {offsets[line]} of bad.jsonl" in d for rr, d in got), (reason, got)
    assert r.kept.num_rows + r.rejected.num_rows == 8  # every non-blank line is a row
    assert r.stat("read.blank_lines") == 1


def _compress(codec: str, data: bytes) -> bytes:
    if codec == "gz":
        return gzip.compress(data)
    half = len(data) // 2  # two frames or streams, as `cat a.zst b.zst` makes
    one = {"zst": zstandard.ZstdCompressor(level=3).compress, "bz2": lambda x: bz2.compress(x, 1), "xz": lzma.compress}[codec]  # bz2 -1: 100 KB blocks
    return one(data[:half]) + one(data[half:])


def _decodable(codec: str, part: bytes) -> bytes:
    """What the codec's own library decodes from a cut file (the oracle): every frame in turn."""
    if codec == "gz":
        return zlib.decompressobj(31).decompress(part)
    new = {"zst": lambda: zstandard.ZstdDecompressor().decompressobj(), "bz2": bz2.BZ2Decompressor,
           "xz": lzma.LZMADecompressor}[codec]
    out = []
    while part:
        d = new()
        out.append(d.decompress(part))
        part = d.unused_data if d.eof else b""
    return b"".join(out)


@pytest.mark.parametrize("codec", ["gz", "zst", "bz2", "xz"])
@pytest.mark.parametrize("cut", [0.3, 0.5, 0.9, 0.999])
def test_truncated_compressed_jsonl_keeps_every_complete_line(tmp_path: Path, cut: float, codec: str) -> None:
    """A cut .jsonl.gz, .zst, .bz2 or .xz keeps every line that ends before the cut: as many as
    the lines the codec's library (the oracle) decodes in full from the same bytes, whatever
    the read sizes (for zstd, bz2 and xz, all but the block the cut falls in)."""
    rows = [{"text": f"row {i} " + os.urandom(40).hex()} for i in range(20000)]
    packed = _compress(codec, b"".join(json.dumps(x).encode() + b"\n" for x in rows))
    part = packed[: int(len(packed) * cut)]
    name = f"cut.jsonl.{codec}"
    (tmp_path / name).write_bytes(part)
    decodable = _decodable(codec, part).count(b"\n")
    r = read_all([tmp_path / name])
    assert 0 < decodable < len(rows) and r.kept.num_rows == decodable
    assert r.texts == [x["text"] for x in rows[:decodable]]
    [(reason, detail)] = r.reasons()
    assert reason == "truncated_file" and name in detail and "byte offset" in detail
    assert any("truncated_file" in e for c in r.ctxs for e in c.errors)


@pytest.mark.parametrize("codec", ["gz", "zst"])
def test_a_cut_compressed_csv_keeps_every_complete_row(tmp_path: Path, codec: str) -> None:
    """The CSV reader reads compressed files through the same streams: a cut .csv.gz/.csv.zst
    keeps every row the oracle decodes in full, and the cut row is quarantined."""
    rows = [f"row {i} " + os.urandom(40).hex() for i in range(20000)]
    packed = _compress(codec, ("text,n\n" + "".join(f"{t},{i}\n" for i, t in enumerate(rows))).encode())
    part = packed[: int(len(packed) * 0.6)]
    name = f"cut.csv.{codec}"
    (tmp_path / name).write_bytes(part)
    complete = _decodable(codec, part).count(b"\n") - 1  # the header line
    r = read_all([tmp_path / name])
    assert 1000 < complete < len(rows)
    assert r.texts == rows[:complete]
    (cut_row, cut_file) = r.reasons()  # the row the cut falls in has one column of two
    assert cut_row[0] == "bad_row" and "expected 2 columns, got 1" in cut_row[1]
    assert cut_file[0] == "truncated_file" and f"(after data row {complete})" in cut_file[1]


def test_gzip_members_padding_and_damage(tmp_path: Path) -> None:
    """Concatenated members (``cat a.gz b.gz``) are one file, trailing zeros are ignored (as
    ``gzip -d`` does), and a damaged member keeps the lines before the damage."""
    rng = random.Random(5)
    a = [{"text": f"a{i}"} for i in range(300)]
    b = [{"text": f"b{i} " + rng.randbytes(30).hex()} for i in range(3000)]
    member = [gzip.compress(b"".join(json.dumps(x).encode() + b"\n" for x in rows)) for rows in (a, b)]
    (tmp_path / "two.jsonl.gz").write_bytes(member[0] + member[1] + b"\0" * 512)
    r = read_all([tmp_path / "two.jsonl.gz"])
    assert r.texts == [x["text"] for x in a + b] and r.reasons() == []
    damaged = bytearray(member[0] + member[1])
    at = len(member[0]) + len(member[1]) // 2
    damaged[at : at + 64] = bytes(64)  # a run of zeros inside the second member's deflate data
    (tmp_path / "bad.jsonl.gz").write_bytes(bytes(damaged))
    r = read_all([tmp_path / "bad.jsonl.gz"])
    want = [x["text"] for x in a + b]
    intact = next((i for i, (got, w) in enumerate(zip(r.texts, want)) if got != w), len(r.texts))
    # deflate has no checksum before a member's end, so rows decoded just before zlib notices the
    # damage may be garbled; those before it come out intact (about 1,500 of b's rows here, less
    # at most one 16 KB feed of compressed bytes)
    assert len(a) + 1000 <= intact < len(want)
    [detail] = [d for reason, d in r.reasons() if reason == "corrupt_file"]
    assert "corrupt gzip data" in detail and "bad.jsonl.gz" in detail


def test_datatrove_metadata_object_is_merged(tmp_path: Path) -> None:
    rows = [{"text": "a", "id": "1", "metadata": {"url": "u", "dump": "d1"}, "dump": "top"}]
    write_jsonl(tmp_path / "dt.jsonl", rows)
    r = read_all([tmp_path / "dt.jsonl"])
    assert json.loads(r.kept["metadata"][0].as_py()) == {"url": "u", "dump": "top"}
    r = read_all([tmp_path / "dt.jsonl"], metadata_keys=["dump"])
    assert json.loads(r.kept["metadata"][0].as_py()) == {"dump": "top"}
    r = read_all([tmp_path / "dt.jsonl"], metadata_keys=[])
    assert r.kept["metadata"].to_pylist() == ["{}"]


def test_types_that_disagree_between_lines_still_come_out(tmp_path: Path) -> None:
    rows = [{"text": "a", "n": 1, "extra": "x"}, {"text": "b", "n": "two", "extra": 3}, {"text": "c", "n": 3}]
    write_jsonl(tmp_path / "mixed.jsonl", rows)
    r = read_all([tmp_path / "mixed.jsonl"], keep=["n"])
    assert r.texts == ["a", "c"] and r.kept["n"].to_pylist() == [1, 3]
    [(reason, detail)] = r.reasons()
    assert reason == "bad_type" and "'n'" in detail
    r = read_all([tmp_path / "mixed.jsonl"])  # in metadata any JSON value goes
    assert [json.loads(m) for m in r.kept["metadata"].to_pylist()] == [{"extra": "x", "n": 1}, {"extra": 3, "n": "two"}, {"n": 3}]


def test_keys_after_the_head_reach_the_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl_mod, "HEAD_BYTES", 64)  # the schema comes from the first line only
    rows = [{"text": "a", "date": "2024-01-02"}, *({"text": f"t{i}", "late": i, "date": "2024-01-03T04:05:06Z"} for i in range(3))]
    write_jsonl(tmp_path / "late.jsonl", rows)
    r = read_all([tmp_path / "late.jsonl"])
    metas = [json.loads(m) for m in r.kept["metadata"].to_pylist()]
    # a key absent from some rows of a parsed block is null there, as in a table
    assert metas[0] == {"date": "2024-01-02", "late": None} and metas[3] == {"date": "2024-01-03T04:05:06Z", "late": 2}


# ---------------------------------------------------------------------------- Parquet


def test_polars_parquet_row_group_splits(tmp_path: Path) -> None:
    import polars as pl

    rows = fineweb_rows(2000)
    pl.DataFrame(rows).write_parquet(tmp_path / "fw.parquet", row_group_size=200)
    assert pq.ParquetFile(tmp_path / "fw.parquet").num_row_groups == 10
    r = read_all([tmp_path / "fw.parquet"], partition_mb=0.05, keep=["language_score", "dump"])
    groups = [s.spec["row_groups"] for s in r.splits]
    assert len(groups) > 1 and groups[0][0] == 0 and groups[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert r.texts == [x["text"] for x in rows]
    assert r.kept["id"].to_pylist() == [x["id"] for x in rows]
    assert r.kept["language_score"].to_pylist() == [x["language_score"] for x in rows]
    assert json.loads(r.kept["metadata"][0].as_py()) == {"date": rows[0]["date"], "file_path": rows[0]["file_path"], "token_count": 10}


def test_parquet_with_another_schema_or_corrupt_is_quarantined(tmp_path: Path) -> None:
    good = pa.table({"text": ["a", "b", None, "c"], "n": [1, 2, 3, 4]})
    pq.write_table(good, tmp_path / "a_good.parquet")
    pq.write_table(pa.table({"content": ["x", "y"], "n": [5, 6]}), tmp_path / "b_other.parquet")
    (tmp_path / "c_corrupt.parquet").write_bytes(b"PAR1" + os.urandom(300))
    pq.write_table(pa.table({"text": ["d"], "n": [7]}), tmp_path / "d_good.parquet")
    r = read_all(sorted(tmp_path.glob("*.parquet")), keep=["n"])
    assert r.texts == ["a", "b", "c", "d"] and r.kept["n"].to_pylist() == [1, 2, 4, 7]
    got = dict((reason, detail) for reason, detail in r.reasons())
    assert set(got) == {"missing_text", "schema_mismatch", "corrupt_file"}
    assert "row 2 of a_good.parquet" in got["missing_text"]
    assert "b_other.parquet" in got["schema_mismatch"] and "'text'" in got["schema_mismatch"]
    assert "c_corrupt.parquet" in got["corrupt_file"]
    # ids of rows without an id column: (file name, row number)
    assert r.kept["id"][3].as_py() == doc_id("d_good.parquet", "0")


def test_parquet_binary_text_and_numeric_ids(tmp_path: Path) -> None:
    t = pa.table({"text": pa.array([b"ok", b"caf\xe9", b"fine"], pa.binary()), "id": [10, 11, None]})
    pq.write_table(t, tmp_path / "bin.parquet")
    r = read_all([tmp_path / "bin.parquet"])
    assert r.texts == ["ok", "fine"]
    assert r.kept["id"].to_pylist() == ["10", doc_id("bin.parquet", "2")]  # a missing id is hashed
    [(reason, detail)] = r.reasons()
    assert reason == "bad_utf8" and "row 1 of bin.parquet" in detail


def test_pyarrow_parquet_folder_and_binary_columns(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for k in range(3):
        t = pa.table({"text": [f"t{k}{i}" for i in range(5)], "image": [b"\x00\xff"] * 5, "lang": ["de"] * 5})
        pq.write_table(t, tmp_path / "data" / f"part-{k}.parquet")
    (tmp_path / "data" / "_SUCCESS").write_bytes(b"")
    (tmp_path / "data" / "README.md").write_text("not data")
    r = read_all([tmp_path / "data"], language_key="lang")
    assert r.texts == [f"t{k}{i}" for k in range(3) for i in range(5)]
    assert set(r.kept["language"].to_pylist()) == {"de"}
    assert set(r.kept["metadata"].to_pylist()) == {"{}"}  # binary columns stay out of metadata
    assert r.kept["id"][0].as_py() == doc_id("part-0.parquet", "0")


# ---------------------------------------------------------------------------- Hugging Face


def test_hf_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    data = {"text": [f"hf doc {i}" for i in range(30)], "label": list(range(30)), "title": [f"t{i}" for i in range(30)]}
    ds = datasets.Dataset.from_dict(data)
    ds.save_to_disk(str(tmp_path / "ds"), num_shards=3)
    r = read_all([tmp_path / "ds"], keep=["label"])
    assert len(r.splits) > 1 and all(s.spec["format"] == "hf" for s in r.splits)
    assert r.texts == data["text"] and r.kept["label"].to_pylist() == data["label"]
    assert json.loads(r.kept["metadata"][4].as_py()) == {"title": "t4"}

    dd = datasets.DatasetDict({"train": ds.select(range(20)), "test": ds.select(range(20, 30))})
    dd.save_to_disk(str(tmp_path / "dd"))
    r = read_all([tmp_path / "dd"])
    assert sorted(r.texts) == sorted(data["text"])
    splits = [json.loads(m)["split"] for m in r.kept["metadata"].to_pylist()]
    assert splits == ["train"] * 20 + ["test"] * 10
    assert r.kept["id"][0].as_py() == doc_id("train/data-00000-of-00001.arrow", "0")


# ---------------------------------------------------------------------------- CSV


def test_csv_and_tsv(tmp_path: Path) -> None:
    csv = (
        b'text,id,score\n"multi\nline, quoted",a,1.5\nplain,b,2\ntoo,many,cells,here\n"caf\xe9",c,3\n,d,4\nlast,e,5\n'
    )
    (tmp_path / "t.csv").write_bytes(csv)
    r = read_all([tmp_path / "t.csv"], keep=["score"])
    assert r.texts == ["multi\nline, quoted", "plain", "last"]
    assert r.kept["id"].to_pylist() == ["a", "b", "e"] and r.kept["score"].to_pylist() == [1.5, 2.0, 5.0]
    reasons = dict(r.reasons())
    assert set(reasons) == {"bad_row", "bad_utf8", "empty_text"}
    assert "expected 3 columns, got 4" in reasons["bad_row"]
    assert "row 2 of t.csv" in reasons["bad_utf8"] and "row 3 of t.csv" in reasons["empty_text"]
    (tmp_path / "t.tsv.gz").write_bytes(gzip.compress(b"text\tn\nx\t1\ny\t2\n"))
    r = read_all([tmp_path / "t.tsv.gz"])
    assert r.texts == ["x", "y"] and [json.loads(m) for m in r.kept["metadata"].to_pylist()] == [{"n": "1"}, {"n": "2"}]


# ---------------------------------------------------------------------------- text folders


def test_text_folder(tmp_path: Path) -> None:
    root = tmp_path / "books"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("First book.\n")
    (root / "sub" / "b.md").write_text("# Second\n\nbook")
    (root / "sub" / "empty.txt").write_text("  \n")
    (root / "sub" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / ".hidden.txt").write_text("skipped")
    for i in range(20):
        (root / f"n{i:02d}.txt").write_text(f"note {i} " * 20)
    r = read_all([root], partition_mb=0.001)
    assert len(r.splits) > 3 and all("files" in s.spec for s in r.splits)
    by_url = dict(zip(r.kept["url"].to_pylist(), r.texts))
    assert by_url["a.txt"] == "First book.\n" and by_url["sub/b.md"] == "# Second\n\nbook"
    assert len(by_url) == 22 and ".hidden.txt" not in by_url
    assert r.kept["id"][0].as_py() == doc_id("a.txt")
    reasons = dict(r.reasons())
    assert set(reasons) == {"empty_text", "bad_utf8"} and "sub/latin1.txt" in reasons["bad_utf8"]
    r = read_all([root], glob="sub/*", encoding="latin-1")
    assert sorted(r.texts) == ["# Second\n\nbook", "café"]
    r = read_all([root], glob="sub/*", keep_empty=True)  # source code: an empty __init__.py is a document
    assert dict(zip(r.kept["url"].to_pylist(), r.texts))["sub/empty.txt"] == "  \n"
    assert set(dict(r.reasons())) == {"bad_utf8"}


def test_keep_empty_keeps_empty_rows(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": ""}, {"id": "y", "text": "print(1)\n"}, {"id": "z"}])
    assert dict(read_all([tmp_path / "a.jsonl"]).reasons()).keys() == {"empty_text", "missing_text"}
    r = read_all([tmp_path / "a.jsonl"], keep_empty=True)
    assert r.kept["id"].to_pylist() == ["x", "y"] and r.texts == ["", "print(1)\n"]
    assert dict(r.reasons()).keys() == {"missing_text"}  # no text at all is still an error


def test_ids_are_stable_across_folders(tmp_path: Path) -> None:
    rows = [{"text": f"no id {i}"} for i in range(10)]
    first = tmp_path / "one" / "corpus"
    first.mkdir(parents=True)
    write_jsonl(first / "x.jsonl", rows)
    (first / "notes").mkdir()
    (first / "notes" / "n.txt").write_text("a note")
    second = tmp_path / "elsewhere" / "deeper" / "copy"
    shutil.copytree(first, second)
    a, b = read_all([first / "x.jsonl"]), read_all([second / "x.jsonl"])
    assert a.kept["id"].to_pylist() == b.kept["id"].to_pylist()
    assert a.kept["id"].to_pylist() == read_all([first]).kept["id"].to_pylist()
    a, b = read_all([first / "notes"]), read_all([second / "notes"])
    assert a.kept["id"].to_pylist() == b.kept["id"].to_pylist() == [doc_id("n.txt")]
    assert a.kept["url"].to_pylist() == ["n.txt"]


# ---------------------------------------------------------------------------- schema errors


@pytest.mark.parametrize(
    "params, message",
    [
        ({"text_key": "body"}, "text_key 'body' is not a column of f.jsonl"),
        ({"id_key": "doc_id"}, "id_key 'doc_id' is not a column"),
        ({"url_key": "link"}, "url_key 'link' is not a column"),
        ({"keep": ["nope"]}, "keep: 'nope' is not a column"),
        ({"metadata_keys": ["nope"]}, "metadata_keys: 'nope' is not a column"),
        ({"text_key": "n"}, "is int64, not a string column"),
    ],
)
def test_schema_errors_are_one_line(tmp_path: Path, params: dict[str, Any], message: str) -> None:
    write_jsonl(tmp_path / "f.jsonl", [{"text": "a", "n": 1}])
    with pytest.raises(ValueError) as info:
        infer_schema([str(tmp_path / "f.jsonl")], S3, ReadParams(**params))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_default_keys_may_be_absent(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "f.jsonl", [{"text": "a"}])
    assert infer_schema([str(tmp_path / "f.jsonl")], S3, ReadParams()) == DOC_SCHEMA


def test_input_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"??")
    (tmp_path / "arr.json").write_text('[{"text": "a"}]')
    write_jsonl(tmp_path / "ok.jsonl", [{"text": "a"}])
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "ok.parquet")
    (tmp_path / "hf").mkdir()
    cases = [
        ([tmp_path / "x.bin"], {}, "cannot tell the format of x.bin"),
        ([tmp_path / "arr.json"], {}, "is a JSON array"),
        ([tmp_path / "ok.jsonl", tmp_path / "ok.parquet"], {}, "mix jsonl and parquet"),
        ([tmp_path / "hf"], {"format": "hf"}, "not a Hugging Face save_to_disk folder"),
        ([tmp_path / "ok.jsonl"], {"format": "text", "keep": ["n"]}, "do not apply to text files"),
    ]
    for inputs, params, message in cases:
        with pytest.raises(ValueError) as info:
            infer_schema([str(p) for p in inputs], S3, ReadParams(**params))
        assert message in str(info.value) and "\n" not in str(info.value), info.value


# ---------------------------------------------------------------------------- S3


def test_s3_inputs_read_like_local_ones(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    import datasets

    opts = S3Options(endpoint_url=s3_endpoint)
    monkeypatch.setattr(storage, "_ACTIVE", opts)  # what execute_task configures on a worker
    local = tmp_path / "local"
    (local / "notes").mkdir(parents=True)
    write_jsonl(local / "a.jsonl", [{"text": f"line {i} " + "x" * (i % 13)} for i in range(300)])
    pq.write_table(pa.table({"text": [f"p{i}" for i in range(100)]}), local / "b.parquet", row_group_size=10)
    datasets.Dataset.from_dict({"text": ["h1", "h2"]}).save_to_disk(str(local / "hf"))
    for i in range(5):
        (local / "notes" / f"{i}.txt").write_text(f"note {i}")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="io-read")
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(f), "io-read", f"in/{f.relative_to(local).as_posix()}")
    for name, params in (("a.jsonl", {"partition_mb": 0.002}), ("b.parquet", {"partition_mb": 0.0003}), ("hf", {}), ("notes", {"partition_mb": 0.00001})):
        remote = read_all([f"s3://io-read/in/{name}"], s3=opts, **params)
        here = read_all([local / name], **params)
        assert len(remote.splits) == len(here.splits)
        assert remote.kept.equals(here.kept) and remote.kept.num_rows > 0, name


# ---------------------------------------------------------------------------- odds and ends


def test_outputs_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_outputs(monkeypatch)
    write_jsonl(tmp_path / "many.jsonl", [{"text": f"t{i}"} for i in range(5000)])
    r = read_all([tmp_path / "many.jsonl"])
    assert r.kept.num_rows == 5000 and r.outputs >= 5


def test_read_without_a_split_plans_the_file_itself(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "whole.jsonl", [{"text": f"t{i}"} for i in range(10)])
    outs = list(read(str(tmp_path / "whole.jsonl"), FS, ReadParams(partition_mb=0.0001), TaskContext()))
    assert [t for o in outs for t in o.kept["text"].to_pylist()] == [f"t{i}" for i in range(10)]


def test_python_metadata_encoder_matches_polars(monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime

    table = pa.table(
        {
            "b": [1, None],
            "a": ["é\"\n", None],
            "f": [0.25, float("nan")],
            "d": [datetime.date(2024, 1, 2), None],
            "l": [[1, 2], []],
            "s": [{"x": 1, "y": "z"}, None],
            "t": [True, False],
        }
    )
    lay = rows_mod.Layout("text", None, None, None, (), "rest", "io")
    fast = rows_mod.encode_metadata(table, lay).to_pylist()
    monkeypatch.setattr(rows_mod, "_pl", None)
    slow = rows_mod.encode_metadata(table, lay).to_pylist()
    assert fast == slow
    assert json.loads(slow[1]) == {"a": None, "b": None, "d": None, "f": None, "l": [], "s": None, "t": False}
