"""web.extract_warc and its sandbox on real WARC/ARC files (pywb's samples) and handmade ones."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from arcforge.runtime.documents import DOC_SCHEMA, doc_id
from arcforge.runtime.stage import TaskContext, resolve_stage
from arcforge.pipelines.web.sandbox import SandboxError, SandboxTimeout, TimeoutSandbox, get_sandbox
from arcforge.pipelines.web.warc import BATCH_RECORDS, REJECTED_SCHEMA, ExtractParams, read_warc

FS = pafs.LocalFileSystem()
CORRUPT_SAMPLE = "example-bad.warc.gz.bad"  # one gzip stream over all records, not one member per record
BAD_LENGTHS = {"bad.arc", "example.warc"}  # pywb samples with Content-Lengths that do not fit their records


@pytest.fixture(scope="module")
def pywb_warcs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pywb 2.10.0's sample_archive/warcs, from its sdist on PyPI."""
    root = tmp_path_factory.mktemp("pywb")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "pywb==2.10.0", "-d", str(root)],
        check=True,
        capture_output=True,
    )
    (sdist,) = root.glob("pywb-2.10.0.tar.gz")
    prefix = "pywb-2.10.0/sample_archive/warcs/"
    out = root / "warcs"
    out.mkdir()
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix):
                (out / member.name[len(prefix) :]).write_bytes(tar.extractfile(member).read())
    return out


def run(path: Path | str, **params: object) -> tuple[pa.Table, pa.Table, dict, list]:
    """Read one file; return all kept rows, all rejected rows, the stats and the raw outputs."""
    ctx = TaskContext()
    outs = list(read_warc(str(path), FS, ExtractParams(**params), ctx))
    kept = pa.concat_tables([o.kept for o in outs])
    rejected = pa.concat_tables([o.rejected for o in outs if o.rejected is not None] or [REJECTED_SCHEMA.empty_table()])
    return kept, rejected, ctx.stats.as_dict(), outs


def reasons(rejected: pa.Table) -> Counter:
    return Counter(zip(rejected.column("reason").to_pylist(), rejected.column("detail").to_pylist()))


# ------------------------------------------------------------------ pywb samples


def test_every_sample_is_accounted_for(pywb_warcs: Path) -> None:
    files = sorted(p for p in pywb_warcs.iterdir() if p.name != CORRUPT_SAMPLE)
    assert len(files) == 16
    total_kept = 0
    for path in files:
        kept, rejected, stats, outs = run(path)
        assert kept.schema == DOC_SCHEMA and rejected.schema == REJECTED_SCHEMA
        assert all(t.strip() for t in kept.column("text").to_pylist()), path.name
        assert None not in rejected.column("reason").to_pylist()
        # every response record is a row, kept or rejected, and so is every damaged range; nothing else is
        assert kept.num_rows + rejected.num_rows == stats.get("warc.responses", 0) + stats.get("warc.damaged_ranges", 0)
        assert ("warc.corrupt_files" in stats) == (path.name in BAD_LENGTHS), path.name
        ids = kept.column("id").to_pylist() + rejected.column("id").to_pylist()
        assert len(set(ids)) == len(ids)
        total_kept += kept.num_rows
    assert total_kept == 27


@pytest.mark.parametrize(
    ("name", "n_kept", "rejected", "skipped"),
    [
        ("example.warc.gz", 1, {("http_status", "302"): 1}, {"request": 2, "revisit": 1, "warcinfo": 1}),
        # pywb's example.warc has a request record whose Content-Length is 2 bytes short (warcio warns on stderr)
        (
            "example.warc",
            1,
            {
                ("http_status", "302"): 1,
                (
                    "damaged_range",
                    "4061-4771: request record: the Content-Length 320 block is followed by b'm\\r\\n\\r\\n\\r\\nWARC/', "
                    "not by the next record (Content-Length too short?)",
                ): 1,
            },
            {"request": 1, "revisit": 1, "warcinfo": 1},
        ),
        ("example.arc", 1, {}, {"warcinfo": 1}),
        ("example.arc.gz", 1, {}, {"warcinfo": 1}),
        (
            "bad.arc",
            0,
            {
                ("length_mismatch", "invalid length '-1' in the ARC header"): 1,
                ("length_mismatch", "invalid length 'abc' in the ARC header"): 1,
                ("no_http_headers", "empty block"): 1,  # was ("http_status", "missing")
            },
            {"warcinfo": 1},
        ),
        ("post-test.warc.gz", 0, {("non_html", "application/json"): 3}, {"request": 3}),
        ("httpbin-resource.warc.gz", 0, {}, {"resource": 1}),
    ],
)
def test_sample_outcomes(pywb_warcs: Path, name: str, n_kept: int, rejected: dict, skipped: dict) -> None:
    kept, rej, stats, _ = run(pywb_warcs / name)
    assert kept.num_rows == n_kept
    assert reasons(rej) == Counter(rejected)
    assert {k.removeprefix("warc.records."): v for k, v in stats.items() if k.startswith("warc.records.")} == skipped
    for row in kept.to_pylist():
        assert "illustrative examples" in row["text"]
        assert row["url"].startswith("http://example.com")
        meta = json.loads(row["metadata"])
        assert row["id"] == doc_id(name, str(meta["offset"]))
        assert meta["warc_file"] == name and meta["content_type"] == "text/html" and meta["date"]
        # warcio invents random record ids for ARC records: they must not leak into the output
        assert (meta["record_id"] is None) == (".arc" in name)
    for row in rej.to_pylist():
        is_html = json.loads(row["metadata"]).get("content_type") == "text/html"
        assert bool(row["text"]) == (row["reason"] == "http_status" and is_html)  # rejected HTML keeps its start


def test_iana_sample(pywb_warcs: Path) -> None:
    kept, rej, stats, _ = run(pywb_warcs / "iana.warc.gz")
    assert kept.num_rows == 16
    assert stats["warc.responses"] == 48 and stats["warc.html"] == 20
    by_reason = Counter(rej.column("reason").to_pylist())
    assert by_reason == {"non_html": 28, "http_status": 4}
    assert "https://www.iana.org/dnssec" in kept.column("url").to_pylist()


def test_whole_file_gzip_sample_reads_every_record(pywb_warcs: Path) -> None:
    """example-bad.warc.gz.bad is example.warc gzipped as one stream: warcio reads its first record only."""
    path = pywb_warcs / CORRUPT_SAMPLE
    kept, rej, stats, _ = run(path)
    assert kept.column("url").to_pylist() == ["http://example.com?example=1"]
    assert reasons(rej) == {("http_status", "302"): 1}
    assert stats["warc.records.request"] == 2 and stats["warc.records.revisit"] == 1 and stats["warc.records.warcinfo"] == 1
    assert "warc.corrupt_files" not in stats
    meta = json.loads(kept.column("metadata")[0].as_py())
    assert (meta["offset"], meta["offset_in_member"]) == (0, 460)  # a record inside the one gzip member
    assert kept.column("id")[0].as_py() == doc_id(CORRUPT_SAMPLE, "0+460")


def test_ids_and_rows_are_deterministic(pywb_warcs: Path) -> None:
    for name in ("example.arc.gz", "iana.warc.gz", "bad.arc", CORRUPT_SAMPLE):
        first, second = run(pywb_warcs / name), run(pywb_warcs / name)
        assert first[0].equals(second[0]) and first[1].equals(second[1]), name


def test_damaged_gzip_keeps_records_before_and_after_the_damage(pywb_warcs: Path, tmp_path: Path) -> None:
    """warcio only prints zlib errors; here the damaged member is a damaged range and reading goes on."""
    data = bytearray((pywb_warcs / "iana.warc.gz").read_bytes())
    data[400_000:400_100] = bytes(100)
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(bytes(data))
    kept, rej, stats, _ = run(path)
    urls = kept.column("url").to_pylist()
    assert urls[:2] == ["http://www.iana.org/", "http://www.iana.org/numbers"] and len(urls) == 16
    assert kept.num_rows == run(pywb_warcs / "iana.warc.gz")[0].num_rows  # the damaged member held no kept page
    assert stats["warc.damaged_ranges"] == stats["warc.corrupt_files"] == 1
    (damaged,) = [r for r in rej.to_pylist() if r["reason"] == "damaged_range"]
    assert damaged["detail"].startswith("329393-446034: response record")
    assert "the gzip member at 329393 is damaged" in damaged["detail"]

    path.write_bytes(bytes(data[:400_000]))  # cut short: the records before the cut, then the cut member
    kept2, rej2, stats2, _ = run(path)
    assert kept2.column("url").to_pylist() == urls[:2] and stats2["warc.damaged_ranges"] == 1
    (cut,) = [r for r in rej2.to_pylist() if r["reason"] == "damaged_range"]
    assert cut["detail"] == "329393-400000: response record cut off; the file ends inside the gzip member at 329393"


# ------------------------------------------------------------------- handmade WARC

PAGE = (
    "<html><head><title>Caf\u00e9 notes</title></head><body><article>"
    "<h1>Caf\u00e9 notes</h1>"
    + "".join(f"<p>Paragraph {i}: the espresso at the caf\u00e9 is worth the detour.</p>" for i in range(8))
    + "</article></body></html>"
)


def _response(writer: WARCWriter, url: str, status: str, ctype: str, body: bytes, extra: list | None = None):
    headers = StatusAndHeaders(status, [("Content-Type", ctype), *(extra or [])], protocol="HTTP/1.1")
    return writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)


def write_warc(path: Path, n_images: int = 0) -> Path:
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=True)
        w.write_record(_response(w, "http://a.test/", "200 OK", "text/html; charset=utf-8", PAGE.encode()))
        w.write_record(_response(w, "http://a.test/missing", "404 Not Found", "text/html", b"<html>gone</html>"))
        w.write_record(_response(w, "http://a.test/logo.png", "200 OK", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64)))
        req = StatusAndHeaders("GET / HTTP/1.1", [("Host", "a.test")], is_http_request=True)
        w.write_record(w.create_warc_record("http://a.test/", "request", http_headers=req))
        # gzip content-encoding and a cp1252 page without a declared charset
        gz = gzip.compress(PAGE.encode())
        w.write_record(_response(w, "http://a.test/gz", "200 OK", "text/html", gz, [("Content-Encoding", "gzip")]))
        w.write_record(_response(w, "http://a.test/1252", "200 OK", "application/xhtml+xml", PAGE.encode("cp1252")))
        for i in range(n_images):
            w.write_record(_response(w, f"http://a.test/{i}.png", "200 OK", "image/png", b"x"))
    return path


def test_handmade_warc(tmp_path: Path) -> None:
    path = write_warc(tmp_path / "hand.warc.gz")
    kept, rej, stats, outs = run(path)
    assert kept.column("url").to_pylist() == ["http://a.test/", "http://a.test/gz", "http://a.test/1252"]
    for text in kept.column("text").to_pylist():
        assert "Paragraph 7: the espresso at the caf\u00e9" in text
    assert reasons(rej) == {("http_status", "404"): 1, ("non_html", "image/png"): 1}
    by_url = {r["url"]: r for r in rej.to_pylist()}
    assert by_url["http://a.test/missing"]["text"] == "<html>gone</html>"
    assert by_url["http://a.test/logo.png"]["text"] == ""
    assert stats["warc.records.request"] == 1 and stats["warc.responses"] == 5 and stats["warc.html"] == 4
    assert len(outs) == 1
    assert run(path, timeout_s=0)[0].equals(kept)  # in-process extraction, no sandbox: same rows

    kept, rej, _, _ = run(path, min_text_chars=100_000, source="crawl-x")
    assert kept.num_rows == 0
    assert Counter(rej.column("reason").to_pylist()) == {"too_short": 3, "http_status": 1, "non_html": 1}
    assert set(rej.column("source").to_pylist()) == {"crawl-x"}


def test_batches_are_bounded(tmp_path: Path) -> None:
    path = write_warc(tmp_path / "many.warc.gz", n_images=2 * BATCH_RECORDS)
    kept, rej, stats, outs = run(path)
    sizes = [o.kept.num_rows + (o.rejected.num_rows if o.rejected is not None else 0) for o in outs]
    assert max(sizes) <= BATCH_RECORDS and sum(sizes) == stats["warc.responses"] == 5 + 2 * BATCH_RECORDS
    assert kept.num_rows == 3


def test_extraction_timeout_is_a_rejection(tmp_path: Path) -> None:
    path = tmp_path / "slow.warc"
    paragraphs = "".join(f"<div><p>Sentence {i} of a long page.</p></div>" for i in range(2_000))
    big = f"<html><body>{paragraphs}</body></html>"  # ~0.2 s of trafilatura
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=False)
        w.write_record(_response(w, "http://a.test/big", "200 OK", "text/html", big.encode()))
        w.write_record(_response(w, "http://a.test/", "200 OK", "text/html", PAGE.encode()))
    kept, rej, stats, _ = run(path, timeout_s=0.01)
    assert reasons(rej) == {("extract_timeout", "0.01s"): 1}
    assert stats["nondeterministic.extract_timeout"] == 1  # another machine might have made it in time
    assert rej.column("text")[0].as_py() == big[: 1 << 16]  # the start of the page is kept for a later look
    meta = json.loads(rej.column("metadata")[0].as_py())
    assert meta["payload_bytes"] == len(big) and meta["payload_sha256"] == hashlib.sha256(big.encode()).hexdigest()
    kept, rej, _, _ = run(path, timeout_s=30)  # the restarted child serves the next task
    assert kept.num_rows == 2


def test_registered_stage() -> None:
    stage = resolve_stage("web.extract_warc")
    assert stage.kind == "source" and stage.engine == "spark" and stage.resources.cpus == 1
    assert stage.params is ExtractParams and stage.read is read_warc
    with pytest.raises(ValueError):
        ExtractParams(timeout=3)  # unknown keys are errors


# ------------------------------------------------------------------------ sandbox


def test_sandbox_timeout_error_and_crash_recover() -> None:
    with TimeoutSandbox() as sb:
        assert sb.call(divmod, 7, 2, timeout=30) == (3, 1)
        first = sb.pid

        t0 = time.monotonic()
        with pytest.raises(SandboxTimeout):
            sb.call(time.sleep, 30, timeout=0.2)
        assert time.monotonic() - t0 < 10 and sb.pid is None
        assert sb.call(abs, -5, timeout=30) == 5 and sb.pid != first

        with pytest.raises(SandboxError) as err:
            sb.call(int, "x", timeout=30)
        assert err.value.exc_type == "ValueError" and "invalid literal" in err.value.message
        survivor = sb.pid
        assert sb.call(abs, -6) == 6 and sb.pid == survivor  # an exception does not cost the child

        with pytest.raises(SandboxError) as err:
            sb.call(os._exit, 3, timeout=30)
        assert err.value.exc_type == "SandboxCrash" and "exit code 3" in err.value.message
        assert sb.call(abs, -7, timeout=30) == 7

        os.kill(sb.pid, 9)  # dies between calls: restarted silently
        time.sleep(0.2)
        assert sb.call(abs, -8, timeout=30) == 8
    assert sb.pid is None


def test_get_sandbox_is_per_process() -> None:
    assert get_sandbox() is get_sandbox()
