"""WARC -> text extraction: arcforge's `web.extract_warc` against raw trafilatura.

Same pages, same process, same trafilatura settings. The peer is a bare loop of
`trafilatura.extract` over HTML strings already in memory; arcforge additionally parses
the WARC, decodes HTTP payloads, runs every page through the timeout sandbox (a child
process, one IPC round trip per page) and builds Arrow tables. The ratio is the price of
those guarantees.

    .venv/bin/python benchmarks/bench_extract.py [--copies 8] [--datatrove-python /path/to/venv/bin/python]

With --datatrove-python, datatrove's WarcReader + Trafilatura extractor (which also runs
each page in a subprocess under a timeout) reads the same WARC in a subprocess using
that interpreter; datatrove is kept out of the project's own environment. The figure
for datatrove includes its WARC reading, like arcforge's.

Pages come from the demo corpus's WARC samples (HTML responses with status 200),
repeated --copies times into one WARC file.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import trafilatura
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from arcforge.pipelines.demo.corpus import fetch_demo_corpus
from arcforge.runtime.stage import TaskContext
from arcforge.pipelines.web.warc import ExtractParams, decode_html, read_warc


def collect_pages(corpus: Path) -> list[tuple[str, bytes]]:
    pages = []
    for path in sorted((corpus / "warcs").iterdir()):
        try:
            with path.open("rb") as fh:
                for rec in ArchiveIterator(fh, arc2warc=True):
                    if rec.rec_type != "response" or not rec.http_headers:
                        continue
                    ctype = rec.http_headers.get_header("Content-Type") or ""
                    if rec.http_headers.get_statuscode() == "200" and "html" in ctype:
                        pages.append((rec.rec_headers.get_header("WARC-Target-URI"), rec.content_stream().read()))
        except Exception:  # noqa: BLE001 - the corpus contains deliberately broken files
            continue
    return pages


def write_warc(pages: list[tuple[str, bytes]], path: Path) -> None:
    with path.open("wb") as out:
        writer = WARCWriter(out, gzip=True)
        for url, body in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.0")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))


def bench_raw(pages: list[tuple[str, bytes]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for url, body in pages:
        text = trafilatura.extract(
            decode_html(body, "utf-8"), url=url, include_comments=False, include_tables=True, deduplicate=False
        )
        n += bool(text)
    return time.perf_counter() - t0, n


def bench_arcforge(warc: Path) -> tuple[float, int]:
    ctx = TaskContext()
    t0 = time.perf_counter()
    n = sum(out.kept.num_rows for out in read_warc(str(warc), pafs.LocalFileSystem(), ExtractParams(), ctx))
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--datatrove-python", help="python of a venv with datatrove installed")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best time of each system counts")
    args = ap.parse_args()
    pages = collect_pages(fetch_demo_corpus(quiet=True)) * args.copies
    with tempfile.TemporaryDirectory() as tmp:
        warc = Path(tmp) / "bench.warc.gz"
        write_warc(pages, warc)
        bench_arcforge(warc)  # warm-up: starts the sandbox child, imports trafilatura there
        bench_raw(pages[:5])
        raw_times, arc_times, peers = [], [], []
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hurts every system alike
            raw_s, raw_n = bench_raw(pages)
            arc_s, arc_n = bench_arcforge(warc)
            raw_times.append(raw_s)
            arc_times.append(arc_s)
            if args.datatrove_python:
                script = Path(__file__).with_name("peers") / "datatrove_extract.py"
                out = subprocess.run(
                    [args.datatrove_python, str(script), tmp, "*.warc.gz"], capture_output=True, text=True, check=True
                )
                peers.append(json.loads(out.stdout.strip().splitlines()[-1]))
        raw_s, arc_s = min(raw_times), min(arc_times)
        peer = min(peers, key=lambda p: p["seconds"]) if peers else None
    result = {
        "pages": len(pages),
        "raw_trafilatura_pages_per_s": round(len(pages) / raw_s, 1),
        "arcforge_pages_per_s": round(len(pages) / arc_s, 1),
        "ratio_arcforge_vs_raw": round(raw_s / arc_s, 3),
        "docs_raw": raw_n,
        "docs_arcforge": arc_n,
    }
    if peer:
        result["datatrove_pages_per_s"] = round(peer["pages"] / peer["seconds"], 1)
        # per-page rates: datatrove's reader skips some records, so page counts differ
        result["ratio_arcforge_vs_datatrove"] = round((len(pages) / arc_s) / (peer["pages"] / peer["seconds"]), 3)
        result["docs_datatrove"] = peer["kept"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
