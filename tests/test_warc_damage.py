"""web.extract_warc on damaged WARC files: real records written with warcio, then broken by byte surgery.

Every test checks the three things a damaged crawl must not cost: good records
before and after the damage still come out, the bad bytes are quarantined with
a precise reason (a rejected row, never a kept document with cut text), and the
same file always reads to the same rows.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import textwrap
import uuid
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from arcforge.runtime.documents import doc_id
from arcforge.runtime.stage import TaskContext
from arcforge.pipelines.web.warc import REJECTED_SCHEMA, ExtractParams, read_warc
from arcforge.pipelines.web.warc_content import html_depth, rough_depth, too_deep

FS = pafs.LocalFileSystem()
TOPICS = ["river", "harbour", "orchard", "library", "glacier", "market", "observatory", "vineyard", "lighthouse", "bakery"]


def page(topic: str, paragraphs: int = 6) -> bytes:
    """A realistic article page: navigation, a headline, several paragraphs, a footer."""
    body = "".join(
        f"<p>Paragraph {i} about the {topic}: visitors who walk along the {topic} in the early morning often "
        f"describe the light, the quiet and the people they meet there, and the local guide adds notes on its "
        f"history, which goes back several centuries and is told differently by every family in town.</p>"
        for i in range(paragraphs)
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>The {topic}</title></head><body>"
        f"<nav><ul><li><a href='/'>Home</a></li><li><a href='/about'>About</a></li></ul></nav>"
        f"<main><article><h1>A morning at the {topic}</h1>{body}</article></main>"
        f"<footer><p>Copyright the {topic} society</p></footer></body></html>"
    ).encode()


def url(topic: str) -> str:
    return f"http://example.test/{topic}"


def fixed(target: str, rec_type: str) -> dict[str, str]:
    """Record id and date from the record itself, so that a test's files are the same on every run."""
    record_id = f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, rec_type + target)}>"
    return {"WARC-Record-ID": record_id, "WARC-Date": "2024-05-01T00:00:00Z"}


def record(
    target: str,
    body: bytes,
    *,
    status: str = "200 OK",
    ctype: str = "text/html; charset=utf-8",
    extra: list | None = None,
    rec_type: str = "response",
) -> bytes:
    """One uncompressed WARC record, as warcio's WARCWriter writes it."""
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=False)
    if rec_type == "request":
        http = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.test")], is_http_request=True)
        rec = w.create_warc_record(target, "request", http_headers=http, warc_headers_dict=fixed(target, rec_type))
    else:
        http = StatusAndHeaders(status, [("Content-Type", ctype), *(extra or [])], protocol="HTTP/1.1")
        payload = io.BytesIO(body)
        rec = w.create_warc_record(target, rec_type, payload=payload, http_headers=http, warc_headers_dict=fixed(target, rec_type))
    w.write_record(rec)
    return buf.getvalue()


def raw_record(target: str, block: bytes, ctype: str = "application/http; msgtype=response") -> bytes:
    """A response record written by hand, for blocks WARCWriter refuses (no HTTP message)."""
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {target}\r\nWARC-Date: 2024-05-01T00:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, target)}>\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(block)}\r\n\r\n"
    )
    return head.encode() + block + b"\r\n\r\n"


def set_length(rec: bytes, delta: int) -> bytes:
    """The record with its Content-Length changed by ``delta`` (the block left as it is)."""
    m = re.search(rb"Content-Length: (\d+)\r\n", rec)
    return rec[: m.start(1)] + str(int(m.group(1)) + delta).encode() + rec[m.end(1) :]


def members(recs: list[bytes]) -> list[bytes]:
    """Per-record gzip, as WARC files are written."""
    return [gzip.compress(r, mtime=0) for r in recs]


def layout(parts: list[bytes]) -> list[int]:
    """Offset of each part once concatenated."""
    offsets, pos = [], 0
    for p in parts:
        offsets.append(pos)
        pos += len(p)
    return offsets


def write(path: Path, parts: list[bytes]) -> Path:
    path.write_bytes(b"".join(parts))
    return path


def run(path: Path, **params: object) -> tuple[pa.Table, pa.Table, dict, list[str]]:
    ctx = TaskContext()
    outs = list(read_warc(str(path), FS, ExtractParams(**{"timeout_s": 0, **params}), ctx))
    kept = pa.concat_tables([o.kept for o in outs])
    rejected = pa.concat_tables([o.rejected for o in outs if o.rejected is not None] or [REJECTED_SCHEMA.empty_table()])
    return kept, rejected, ctx.stats.as_dict(), ctx.errors


def by_reason(rejected: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rejected.to_pylist():
        out.setdefault(row["reason"], []).append(row)
    return out


def ranges(rejected: pa.Table) -> list[tuple[str, str]]:
    return [tuple(r["detail"].split(":", 1)[0].rsplit("-", 1)) for r in by_reason(rejected).get("damaged_range", [])]


def assert_accounted(
    path: Path, kept: pa.Table, rejected: pa.Table, stats: dict, urls: list[str], offsets: list[int]
) -> None:
    """Nothing is lost silently: each written record is kept, rejected, or inside a reported damaged range."""
    assert kept.num_rows + rejected.num_rows == stats.get("warc.responses", 0) + stats.get("warc.damaged_ranges", 0)
    seen = set(kept.column("url").to_pylist()) | {r["url"] for r in rejected.to_pylist() if r["reason"] != "damaged_range"}
    spans = [(int(a.split("+")[0]), int(b.split("+")[0])) for a, b in ranges(rejected)]
    for u, off in zip(urls, offsets):
        assert u in seen or any(a <= off < b for a, b in spans), (u, off, spans)
    assert all(t.strip() for t in kept.column("text").to_pylist())
    first = run(path)
    again = run(path)
    assert first[0].equals(again[0]) and first[1].equals(again[1])  # same file, same rows


def kept_urls(kept: pa.Table) -> list[str]:
    return kept.column("url").to_pylist()


# ----------------------------------------------------------------------- lengths


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("delta", [+40, -120], ids=["too_long", "too_short"])
def test_wrong_content_length_costs_one_record(tmp_path: Path, compressed: bool, delta: int) -> None:
    topics = TOPICS[:6]
    recs = [record(url(t), page(t)) for t in topics]
    recs[2] = set_length(recs[2], delta)
    parts = members(recs) if compressed else recs
    path = write(tmp_path / ("f.warc.gz" if compressed else "f.warc"), parts)
    kept, rej, stats, errors = run(path)
    assert kept_urls(kept) == [url(t) for i, t in enumerate(topics) if i != 2]
    (bad,) = rej.to_pylist()
    assert bad["reason"] == "length_mismatch" and bad["url"] == url(topics[2])
    assert bad["id"] == doc_id("f.warc.gz" if compressed else "f.warc", str(layout(parts)[2]))
    if delta > 0:
        assert "runs into the next record, whose header starts" in bad["detail"]
    else:  # WARCWriter writes digests, and the cut block no longer matches its own
        declared = int(re.search(rb"Content-Length: (\d+)", recs[2]).group(1))
        assert bad["detail"] == f"Content-Length {declared} is too short: the block digest does not match"
    assert bad["text"].startswith("<!DOCTYPE html>")  # the start of the payload, for a look; never a document
    assert stats["warc.corrupt_files"] == 1 and "warc.damaged_ranges" not in stats
    assert len(errors) == 1 and "length mismatch" in errors[0] and url(topics[2]) in errors[0]
    assert_accounted(path, kept, rej, stats, [url(t) for t in topics], layout(parts))


def test_short_length_without_a_digest(tmp_path: Path) -> None:
    recs = [raw_record(url(t), b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + page(t)) for t in TOPICS[:3]]
    recs[1] = set_length(recs[1], -100)
    path = write(tmp_path / "f.warc", recs)
    kept, rej, _, _ = run(path)
    assert kept_urls(kept) == [url(TOPICS[0]), url(TOPICS[2])]
    (bad,) = rej.to_pylist()
    assert bad["reason"] == "length_mismatch" and bad["detail"].endswith("(Content-Length too short?)")
    assert bad["detail"].startswith(f"the Content-Length {len(recs[1]) - recs[1].index(b'HTTP/') - 104} block is followed by")


def test_last_record_longer_than_the_file(tmp_path: Path) -> None:
    recs = [record(url(t), page(t)) for t in TOPICS[:3]]
    recs[2] = set_length(recs[2], 5000)
    path = write(tmp_path / "f.warc", recs)
    kept, rej, stats, _ = run(path)
    assert kept_urls(kept) == [url(t) for t in TOPICS[:2]]
    (bad,) = rej.to_pylist()
    assert bad["reason"] == "length_mismatch" and "file ends" in bad["detail"] and bad["url"] == url(TOPICS[2])


def test_short_length_ending_on_a_blank_line_is_caught_by_the_digest(tmp_path: Path) -> None:
    """A block cut right before a \\r\\n\\r\\n of its own content looks terminated; its digest shows the cut."""
    crlf_page = page("crlf").replace(b"</p><p>", b"</p>\r\n\r\n<p>")
    recs = [record(url(t), page(t)) for t in TOPICS[:3]]
    recs[1] = record(url("crlf"), crlf_page)
    block_start = recs[1].index(b"HTTP/1.1")
    cut = recs[1].index(b"\r\n\r\n<p>Paragraph 3") - block_start  # the block would end after paragraph 2
    recs[1] = set_length(recs[1], cut - int(re.search(rb"Content-Length: (\d+)", recs[1]).group(1)))
    path = write(tmp_path / "f.warc", recs)
    kept, rej, stats, _ = run(path)
    assert kept_urls(kept) == [url(TOPICS[0]), url(TOPICS[2])]
    (bad,) = rej.to_pylist()
    assert (bad["reason"], bad["url"]) == ("length_mismatch", url("crlf"))
    assert bad["detail"] == f"Content-Length {cut} is too short: the block digest does not match"
    assert_accounted(path, kept, rej, stats, [url(TOPICS[0]), url("crlf"), url(TOPICS[2])], layout(recs))


def test_a_short_length_in_a_request_record_is_a_damaged_range(tmp_path: Path) -> None:
    request = set_length(record(url("a"), b"", rec_type="request"), -10)
    recs = [record(url("a"), page("a")), request, record(url("b"), page("b"))]
    path = write(tmp_path / "f.warc", recs)
    kept, rej, stats, _ = run(path)
    assert kept_urls(kept) == [url("a"), url("b")]
    (row,) = rej.to_pylist()
    start, end = layout(recs)[1], layout(recs)[2]
    assert row["reason"] == "damaged_range" and row["detail"].startswith(f"{start}-{end}: request record:")
    assert stats["warc.damaged_ranges"] == 1 and "warc.records.request" not in stats


# ------------------------------------------------------------------ resync


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_garbage_between_records_is_one_damaged_range(tmp_path: Path, compressed: bool) -> None:
    topics = TOPICS[:5]
    recs = [record(url(t), page(t)) for t in topics]
    parts = members(recs) if compressed else recs
    garbage = bytes(range(256)) * 20 + b"WARC/1.0\r\nnot a header at all\r\n\r\n" + b"\x00" * 300
    parts = parts[:2] + [garbage] + parts[2:]
    path = write(tmp_path / "f.warc", parts)
    kept, rej, stats, errors = run(path)
    assert kept_urls(kept) == [url(t) for t in topics]
    offsets = layout(parts)
    assert ranges(rej) == [(str(offsets[2]), str(offsets[3]))]
    assert stats["warc.damaged_ranges"] == 1 and stats["warc.corrupt_files"] == 1
    assert errors == [f"damaged bytes {rej.column('detail')[0].as_py()}"]
    (row,) = rej.to_pylist()
    assert row["id"] == doc_id("f.warc", "damaged", str(offsets[2])) and row["text"] == ""


def test_garbage_before_the_first_record(tmp_path: Path) -> None:
    recs = [record(url(t), page(t)) for t in TOPICS[:2]]
    path = write(tmp_path / "f.warc", [b"<html>not a warc</html>\n" * 10, *recs])
    kept, rej, _, _ = run(path)
    assert kept_urls(kept) == [url(t) for t in TOPICS[:2]]
    assert ranges(rej) == [("0", "240")]


def test_cut_gzip_member_is_skipped_to_the_next_member(tmp_path: Path) -> None:
    topics = TOPICS[:6]
    parts = members([record(url(t), page(t)) for t in topics])
    parts[3] = parts[3][: len(parts[3]) // 2]  # the member's second half is gone
    path = write(tmp_path / "f.warc.gz", parts)
    kept, rej, stats, _ = run(path)
    assert kept_urls(kept) == [url(t) for i, t in enumerate(topics) if i != 3]
    offsets = layout(parts)
    (row,) = rej.to_pylist()
    assert row["reason"] == "damaged_range" and row["url"] == url(topics[3])
    assert row["detail"].startswith(f"{offsets[3]}-{offsets[4]}: response record cut off; the gzip member at {offsets[3]}")
    assert_accounted(path, kept, rej, stats, [url(t) for t in topics], offsets)


def test_corrupted_bytes_inside_a_gzip_member(tmp_path: Path) -> None:
    """Wherever 16 bytes of a member are zeroed (zlib may inflate garbage until the CRC check), that member
    is one damaged range and every other record is kept."""
    topics = TOPICS[:4]
    clean = members([record(url(t), page(t, 30)) for t in topics])
    offsets = layout(clean)
    for at in range(20, len(clean[1]) - 8, max(1, (len(clean[1]) - 28) // 24)):
        broken = bytearray(clean[1])
        broken[at : at + 16] = bytes(16)
        parts = [clean[0], bytes(broken), *clean[2:]]
        path = write(tmp_path / "f.warc.gz", parts)
        kept, rej, stats, _ = run(path)
        assert kept_urls(kept) == [url(t) for i, t in enumerate(topics) if i != 1], at
        assert ranges(rej) == [(str(offsets[1]), str(offsets[2]))], at
        assert rej.column("reason").to_pylist() == ["damaged_range"], at
        assert "damaged" in rej.column("detail")[0].as_py() or "cut off" in rej.column("detail")[0].as_py()
    assert_accounted(path, kept, rej, stats, [url(t) for t in topics], offsets)


def test_large_members_between_small_ones(tmp_path: Path) -> None:
    """Members that inflate in many pieces (3 MiB of image data each) end where the next one starts."""
    recs = []
    for i, t in enumerate(TOPICS[:4]):
        recs += [record(url(t), page(t)), record(url(f"{t}.png"), bytes(3 << 20) + bytes([i]), ctype="image/png")]
    parts = members(recs)
    path = write(tmp_path / "f.warc.gz", parts)
    kept, rej, stats, errors = run(path)
    assert kept_urls(kept) == [url(t) for t in TOPICS[:4]]
    assert rej.column("reason").to_pylist() == ["non_html"] * 4 and errors == []
    offsets = layout(parts)
    assert [json.loads(m)["offset"] for m in rej.column("metadata").to_pylist()] == offsets[1::2]


def test_whole_file_gzip_reads_every_record(tmp_path: Path) -> None:
    topics = TOPICS[:8]
    recs = [record(url(t), page(t)) for t in topics]
    plain = write(tmp_path / "f.warc", recs)
    whole = tmp_path / "f.warc.gz"
    whole.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))  # `gzip file.warc`: one member
    kept, rej, stats, _ = run(whole)
    assert kept_urls(kept) == [url(t) for t in topics] and rej.num_rows == 0
    assert kept.column("text").equals(run(plain)[0].column("text"))
    offsets = layout(recs)
    metas = [json.loads(m) for m in kept.column("metadata").to_pylist()]
    assert [m["offset"] for m in metas] == [0] * len(topics)
    assert [m.get("offset_in_member", 0) for m in metas] == offsets
    ids = [doc_id("f.warc.gz", f"0+{o}" if o else "0") for o in offsets]
    assert kept.column("id").to_pylist() == ids and len(set(ids)) == len(ids)


def test_whole_file_gzip_damage_that_zlib_notices_only_at_the_end(tmp_path: Path) -> None:
    """Stored (level 0) deflate blocks inflate changed bytes without complaint until the final CRC:
    the block digest shows which record they hit, and the records it vouches for are kept."""
    topics = TOPICS[:5]
    recs = [record(url(t), page(t)) for t in topics]
    plain = b"".join(recs)
    headline = f"<h1>A morning at the {topics[2]}</h1>".encode()  # in the third page only
    c = zlib.compressobj(0, zlib.DEFLATED, 31)
    data = bytearray(c.compress(plain) + c.flush())
    at = data.index(headline)  # stored blocks keep the bytes as they are
    data[at + 5] ^= 0x20
    path = tmp_path / "f.warc.gz"
    path.write_bytes(bytes(data))
    kept, rej, stats, _ = run(path)
    assert kept_urls(kept) == [url(t) for i, t in enumerate(topics) if i != 2]
    offsets = layout(recs)
    end_of_data = len(plain)
    assert ranges(rej) == [(f"0+{offsets[2]}", f"0+{offsets[3]}"), (f"0+{end_of_data}", str(len(data)))]
    first, last = by_reason(rej)["damaged_range"]
    assert first["url"] == url(topics[2]) and "record in a damaged gzip member" in first["detail"]
    assert "incorrect data check" in last["detail"]


def test_whole_file_gzip_with_a_bad_length_inside(tmp_path: Path) -> None:
    topics = TOPICS[:5]
    recs = [record(url(t), page(t)) for t in topics]
    recs[1] = set_length(recs[1], -300)
    path = tmp_path / "f.warc.gz"
    path.write_bytes(gzip.compress(b"".join(recs), mtime=0))
    kept, rej, stats, _ = run(path)
    assert kept_urls(kept) == [url(t) for i, t in enumerate(topics) if i != 1]
    (bad,) = rej.to_pylist()
    assert bad["reason"] == "length_mismatch" and bad["id"] == doc_id("f.warc.gz", f"0+{len(recs[0])}")


# -------------------------------------------------------------------- bombs

_BOMB_CHILD = textwrap.dedent(
    """
    import json, sys
    import pyarrow.fs as pafs

    def peak_kib():  # VmHWM: this process's peak since exec (ru_maxrss would count the forking parent too)
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

    from arcforge.runtime.stage import TaskContext
    from arcforge.pipelines.web.warc import ExtractParams, read_warc
    import trafilatura  # paid before the baseline: only the reader's own memory counts
    trafilatura.extract("<html><body><p>warm up the extractor</p></body></html>")
    before = peak_kib()
    ctx = TaskContext()
    rows = []
    for out in read_warc(sys.argv[1], pafs.LocalFileSystem(), ExtractParams(timeout_s=0), ctx):
        rows += [(r["url"], None, None) for r in out.kept.to_pylist()]
        if out.rejected is not None:
            rows += [(r["url"], r["reason"], r["detail"]) for r in out.rejected.to_pylist()]
    after = peak_kib()
    print(json.dumps({"rows": rows, "peak_growth_kib": after - before, "peak_kib": after, "stats": ctx.stats.as_dict()}))
    """
)


def gzip_member(pieces: list[tuple[bytes, int]]) -> bytes:
    """One gzip member of ``data * times`` for each piece, cheap however large.

    Each piece is compressed once after a full flush (which resets the
    compressor), so its compressed bytes can be repeated; the trailer's CRC and
    ISIZE are computed by hand. A 1 GiB record costs the test about 1 MB.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out, crc, size = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"], 0, 0
    for data, times in pieces:
        out.append((c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)) * times)
        for _ in range(times):
            crc = zlib.crc32(data, crc)
        size += len(data) * times
    out.append(c.flush())
    out.append(crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little"))
    return b"".join(out)


BOMB_HTTP = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"


def bomb_pieces(target: str, zeros_mib: int, declared: int | None = None) -> list[tuple[bytes, int]]:
    """A response whose HTML is ``zeros_mib`` MiB of NUL bytes (its Content-Length ``declared`` if given)."""
    length = len(BOMB_HTTP) + (zeros_mib << 20)
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {target}\r\nWARC-Date: 2024-05-01T00:00:00Z\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {declared or length}\r\n\r\n"
    ).encode()
    return [(head + BOMB_HTTP, 1), (bytes(1 << 20), zeros_mib), (b"\r\n\r\n", 1)]


def run_bounded(path: Path) -> dict:
    cmd = [sys.executable, "-c", _BOMB_CHILD, str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("where", ["own_member", "lying_length", "whole_file"])
def test_gzip_bomb_is_capped_with_bounded_memory(tmp_path: Path, where: str) -> None:
    """A record inflating to 1.1 GiB of NULs: record_too_large, good neighbours kept, memory bounded."""
    good = [record(url(t), page(t)) for t in TOPICS[:3]]
    bomb = bomb_pieces(url("bomb"), 1100, declared=2000 if where == "lying_length" else None)
    if where == "whole_file":  # one gzip stream: the reader must inflate through the bomb to reach the rest
        parts = [gzip_member([(good[0], 1), *bomb, (good[1] + good[2], 1)])]
    else:
        parts = [*members(good[:1]), gzip_member(bomb), *members(good[1:])]
    assert sum(map(len, parts)) < 2 << 20
    path = write(tmp_path / "bomb.warc.gz", parts)
    result = run_bounded(path)
    rows = {u: (reason, detail) for u, reason, detail in result["rows"]}
    assert {u: r for u, (r, _) in rows.items()} == {
        url(TOPICS[0]): None,
        url(TOPICS[1]): None,
        url(TOPICS[2]): None,
        url("bomb"): "length_mismatch" if where == "lying_length" else "record_too_large",
    }
    if where != "lying_length":
        assert rows[url("bomb")][1] == f"Content-Length {(1100 << 20) + len(BOMB_HTTP)} > max_record_bytes {16 << 20}"
    print(f"{where} bomb: peak RSS {result['peak_kib'] >> 10} MiB, growth while reading {result['peak_growth_kib'] >> 10} MiB")
    assert result["peak_growth_kib"] < 256 << 10  # the record alone would be 1.1 GiB; ~40 MiB measured
    assert result["peak_kib"] < 1 << 20  # the whole process, trafilatura included, under 1 GiB (~175 MiB)


def test_http_gzip_bomb_inside_a_page(tmp_path: Path) -> None:
    """Content-Encoding: gzip of 46 MiB: inflated only to max_html_bytes, rejected as html_too_large."""
    chunk = b"<p>again and again</p>\n" * (1 << 15)  # 736 KiB of markup
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = c.compress(b"<html><body>") + b"".join(c.compress(chunk) for _ in range(64)) + c.flush()
    assert len(body) < 1 << 20
    zipped = record(url("zip"), body, extra=[("Content-Encoding", "gzip")])
    recs = [record(url("a"), page("a")), zipped, record(url("b"), page("b"))]
    path = write(tmp_path / "f.warc", recs)
    kept, rej, _, _ = run(path)
    assert kept_urls(kept) == [url("a"), url("b")]
    (row,) = rej.to_pylist()
    assert (row["reason"], row["detail"]) == ("html_too_large", f"over max_html_bytes {4 << 20} after content decoding")


# ---------------------------------------------------------------------- caps


def test_huge_page_is_rejected_before_extraction(tmp_path: Path) -> None:
    huge = page("huge", paragraphs=20_000)  # ~6 MiB of real markup: over the 4 MiB default
    assert len(huge) > 4 << 20
    recs = [record(url("a"), page("a")), record(url("huge"), huge), record(url("b"), page("b"))]
    path = write(tmp_path / "f.warc", recs)
    kept, rej, stats, _ = run(path)
    assert kept_urls(kept) == [url("a"), url("b")]
    (row,) = rej.to_pylist()
    assert row["reason"] == "html_too_large" and row["url"] == url("huge")
    assert len(row["text"]) == 1 << 16 and huge.decode().startswith(row["text"])  # capped, not 6 MiB
    meta = json.loads(row["metadata"])
    assert meta["payload_bytes"] == len(huge) and meta["payload_sha256"] == hashlib.sha256(huge).hexdigest()
    kept2, rej2, _, _ = run(path, max_html_bytes=8 << 20)
    assert url("huge") in kept_urls(kept2)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_record_over_max_record_bytes(tmp_path: Path, compressed: bool) -> None:
    recs = [record(url(t), page(t, paragraphs=n)) for t, n in zip(TOPICS[:4], (4, 2000, 4, 4))]
    parts = members(recs) if compressed else recs
    path = write(tmp_path / "f.warc.gz", parts)
    kept, rej, stats, _ = run(path, max_record_bytes=256 << 10)
    assert kept_urls(kept) == [url(TOPICS[i]) for i in (0, 2, 3)]
    (row,) = rej.to_pylist()
    assert row["reason"] == "record_too_large" and row["url"] == url(TOPICS[1]) and row["text"] == ""
    assert row["detail"] == f"Content-Length {len(recs[1]) - recs[1].index(b'HTTP/1.1') - 4} > max_record_bytes {256 << 10}"
    assert "warc.corrupt_files" not in stats
    assert_accounted(path, kept, rej, stats, [url(t) for t in TOPICS[:4]], layout(parts))


def test_deep_nesting_is_rejected_shallow_unclosed_markup_is_not(tmp_path: Path) -> None:
    deep = b"<html><body>" + b"<div>" * 600 + b"<p>" + page("deep")[200:400] + b"</p>" + b"</div>" * 600 + b"</body></html>"
    items = "".join(f"<li><p>item {i} of the {TOPICS[i % 10]} list, with a few words" for i in range(2000))
    unclosed = page("lists").replace(b"</article>", f"<ul>{items}</ul></article>".encode())
    recs = [record(url("deep"), deep), record(url("lists"), unclosed), record(url("a"), page("a"))]
    path = write(tmp_path / "f.warc", recs)
    kept, rej, _, _ = run(path)
    assert kept_urls(kept) == [url("lists"), url("a")]
    (row,) = rej.to_pylist()
    assert (row["reason"], row["detail"]) == ("html_too_deep", "elements nested deeper than max_html_depth 512")
    assert "html_too_deep" not in run(path, max_html_depth=1000)[1].column("reason").to_pylist()
    assert html_depth(deep, 10_000) == 603 and html_depth(unclosed, 10_000) < 12


def test_depth_estimate_gates_the_exact_walk() -> None:
    page = b"<html><body>" + b"<div><p>text<br><img src=x></p></div>" * 2000 + b"</body></html>"
    assert rough_depth(page) < 10 and not too_deep(page, 20)
    deep = b"<div>" * 30 + b"x" + b"</div>" * 30
    assert rough_depth(deep) == 30 and too_deep(deep, 20) and not too_deep(deep, 30)
    # unclosed paragraphs run the estimate high; the exact walk then decides
    paras = b"<body>" + b"<p>para" * 100
    assert rough_depth(paras) == 101 and html_depth(paras, 1000) == 2 and not too_deep(paras, 100)


def test_html_depth_model() -> None:
    assert html_depth(b"<html><body><p>a<p>b<p>c</body></html>", 100) == 3
    assert html_depth(b"<div><br><img src=x><input><hr></div>", 100) == 1
    assert html_depth(b"<script>if (a<b) { x = '<div><div><div>' }</script><div></div>", 100) == 1
    assert html_depth(b"<!-- <div><div><div> --><table><tr><td>a<td>b<tr><td>c</table>", 100) == 3
    assert html_depth(b"<svg><g/><g/><g/></svg>", 100) == 1
    assert html_depth(b"</div></div><b><i>x</b></i>", 100) == 2
    assert html_depth(b"<div>" * 100_000, 512) == 513  # stops counting past the limit


# ------------------------------------------------------------- content checks


def test_binary_content_whatever_the_content_type(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n" * 20
    nul = b"<html>" + bytes(2000)
    double_gzip = gzip.compress(page("gz"), mtime=0)  # compressed twice over, no Content-Encoding
    recs = [
        record(url("png"), png),
        record(url("pdf"), pdf),
        record(url("nul"), nul),
        record(url("gz"), double_gzip),
        record(url("a"), page("a")),
    ]
    path = write(tmp_path / "f.warc", recs)
    kept, rej, _, _ = run(path)
    assert kept_urls(kept) == [url("a")]
    found = {r["url"]: (r["reason"], r["detail"], r["text"]) for r in rej.to_pylist()}
    assert found == {
        url("png"): ("binary_content", "png", ""),
        url("pdf"): ("binary_content", "pdf", ""),
        url("nul"): ("binary_content", "control bytes 99%", ""),
        url("gz"): ("binary_content", "gzip", ""),
    }


def test_reasons_say_what_happened(tmp_path: Path) -> None:
    big404 = page("gone", paragraphs=600)
    recs = [
        raw_record(url("nohttp"), page("nohttp")),  # HTML straight in an application/http block
        raw_record(url("empty"), b""),
        record(url("404"), big404, status="404 Not Found"),
        record(url("weird"), page("weird"), status="OK fine"),
        record(url("json"), b'{"a": 1}', ctype="application/json"),
        raw_record("dns:example.test", b"20240501000000\nexample.test. 300 IN A 192.0.2.1\n", ctype="text/dns"),
        record(url("br"), b"\x1b\x00\x00\x00" * 40, extra=[("Content-Encoding", "br")]),
        record(url("ok"), page("ok")),
    ]
    path = write(tmp_path / "f.warc", recs)
    kept, rej, stats, _ = run(path)
    assert kept_urls(kept) == [url("ok")]
    found = {r["url"]: (r["reason"], r["detail"]) for r in rej.to_pylist()}
    assert found == {
        url("nohttp"): ("no_http_headers", "block starts b'<!DOCTYPE html><html lan'"),
        url("empty"): ("no_http_headers", "empty block"),
        url("404"): ("http_status", "404"),
        url("weird"): ("malformed_http", "status line HTTP/1.1 OK fine"),
        url("json"): ("non_html", "application/json"),
        "dns:example.test": ("non_html", "text/dns"),
        url("br"): ("content_decode_error", "PayloadDecodeError: unsupported content-encoding br"),
    }
    rows = {r["url"]: r for r in rej.to_pylist()}
    # a rejected page keeps the first 64 KiB of its payload; its metadata says how long it was and its hash
    assert len(big404) > 1 << 17 and rows[url("404")]["text"] == big404[: 1 << 16].decode()
    meta = json.loads(rows[url("404")]["metadata"])
    assert meta["payload_bytes"] == len(big404) and meta["payload_sha256"] == hashlib.sha256(big404).hexdigest()
    assert rows[url("nohttp")]["text"].startswith("<!DOCTYPE html>")
    assert rows[url("json")]["text"] == ""
    assert stats["warc.responses"] == 8 and "warc.corrupt_files" not in stats


def test_cut_utf8_character_is_not_garbled(tmp_path: Path) -> None:
    text = ("Caf\u00e9 \u00e0 l'\u00e9glise, " * 5000).encode()
    body = b"<html><body><p>" + text + b"</p></body></html>"
    path = write(tmp_path / "f.warc", [record(url("fr"), body, status="500 Internal Server Error")])
    (row,) = run(path)[1].to_pylist()
    assert row["text"].startswith("<html><body><p>Caf\u00e9 \u00e0") and "\u00c3" not in row["text"]
    assert len(row["text"].encode()) <= 1 << 16


# ------------------------------------------------------------- the whole story


def test_many_kinds_of_damage_in_one_file(tmp_path: Path) -> None:
    """One file, every kind of damage: each record accounted for, same rows on every read."""
    topics = TOPICS
    recs = [record(url(t), page(t)) for t in topics]
    recs[1] = set_length(recs[1], -50)
    recs[4] = set_length(recs[4], +30)
    parts = members(recs)
    parts[6] = parts[6][:100]  # a cut member
    parts.insert(8, b"\x00garbage\xff" * 30)
    urls = [url(t) for t in topics]
    offsets = [o for i, o in enumerate(layout(parts)) if i != 8]
    path = write(tmp_path / "f.warc.gz", parts)
    kept, rej, stats, errors = run(path)
    assert kept_urls(kept) == [urls[i] for i in (0, 2, 3, 5, 7, 8, 9)]
    assert Counter(rej.column("reason").to_pylist()) == {"length_mismatch": 2, "damaged_range": 2}
    assert stats["warc.damaged_ranges"] == 2 and stats["warc.corrupt_files"] == 1 and len(errors) == 4
    assert_accounted(path, kept, rej, stats, urls, offsets)


def test_unopenable_file_raises_for_the_runtime(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        list(read_warc(str(tmp_path / "missing.warc.gz"), FS, ExtractParams(timeout_s=0), TaskContext()))


def test_empty_file_yields_one_empty_table(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.warc.gz", [b""])
    kept, rej, stats, errors = run(path)
    assert kept.num_rows == rej.num_rows == 0 and stats == {} and errors == []
