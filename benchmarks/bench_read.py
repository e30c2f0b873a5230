"""Reading datasets: arcforge's ``io.read`` against a bare pyarrow read of the same files.

    .venv/bin/python benchmarks/bench_read.py [--mb 300] [--rounds 5] [--threads 1|0] [--profile]

* **Data** (``jsonl``, ``jsonl.gz``, ``jsonl.zst``, ``parquet``): real text from the demo corpus -- the docutils documentation JSONL (54 docs),
  Botchan split into paragraphs and the Wikipedia articles of the dump sample (through
  ``text.wikipedia_dump``'s reader) -- repeated with a unique id per copy into FineWeb-style
  rows (``id, text, url, dump, date, language, language_score``) of about ``--mb`` MB, written
  once into a temp dir as (a) one plain ``.jsonl`` file, (a') the same gzipped (level 6: one
  stream, so one Split and one core for arcforge), (a'') the same as zstd (level 3, the zstd
  tool's default; one stream too) and (b) one Parquet file written by
  pyarrow (snappy, pyarrow's and datatrove's default; row groups of about 128 MB of
  uncompressed data, so the file has several).
* **arcforge**: the ``io.read`` stage exactly as a task runs it: the stage's ``plan`` cuts
  the file into Splits (``partition_mb`` 128: byte ranges of the JSONL, groups of Parquet row
  groups), then the stage's ``read(path, fs, params, TaskContext(split=spec))`` runs on each
  Split and every Output is consumed (rows counted). This is the headline figure. A second
  variant adds what the runtime does to each Output before writing it
  (``documents.conform`` to the schema ``infer_schema`` gives); writing Parquet is not timed.
* **pyarrow** (the peer): JSONL -- ``pyarrow.json.read_json(path)`` (whole file into one
  table, the natural bare read) and ``pyarrow.json.open_json(path)`` consumed batch by batch
  (streaming, bounded memory, as arcforge reads); Parquet --
  ``pyarrow.dataset.dataset(path).to_batches()`` consumed, and ``.to_table()``.
  The peer only parses: no ids, no metadata JSON, no row checks. That is the price measured.

``--threads 1`` (default) limits pyarrow's CPU and I/O pools and polars (which arcforge uses
to encode metadata JSON) to one thread each, so both sides use one core; ``--threads 0``
leaves the libraries' defaults (here 2 cores). arcforge's reader itself never uses more than
one core per task -- the engines run tasks in parallel -- while pyarrow's readers do.

Rounds are interleaved (every system once per round) and the best round of each counts.
Time is wall time; process CPU time is reported too. ``--profile`` prints cProfile's top
items for one arcforge pass over each format.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _threads_from_argv() -> int:
    """--threads must be applied before pyarrow/polars start their pools."""
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 1


if __name__ == "__main__" and _threads_from_argv() > 0:
    n = str(_threads_from_argv())
    os.environ["POLARS_MAX_THREADS"] = n
    os.environ["OMP_NUM_THREADS"] = n

import gc  # noqa: E402
import gzip  # noqa: E402
import shutil  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.json as pajson  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import zstandard  # noqa: E402

from arcforge.runtime import storage  # noqa: E402
from arcforge.pipelines.demo.corpus import fetch_demo_corpus  # noqa: E402
from arcforge.runtime.documents import conform  # noqa: E402
from arcforge.runtime.io.read import READ, ReadParams  # noqa: E402
from arcforge.runtime.stage import TaskContext  # noqa: E402

MB = 1_000_000
DUMPS = ("CC-MAIN-2024-10", "CC-MAIN-2023-50", "CC-MAIN-2024-18", "CC-MAIN-2023-23")


# ---------------------------------------------------------------------------- data


def corpus_docs(corpus: Path) -> list[tuple[str, str]]:
    """(url, text) of the demo corpus's real documents: docs JSONL, Botchan's paragraphs, Wikipedia."""
    import gzip

    from arcforge.pipelines.web.sources import WikiParams, read_wikipedia_dump, split_paragraphs

    out: list[tuple[str, str]] = []
    with gzip.open(corpus / "jsonl" / "docutils-docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.append((f"https://docutils.sourceforge.io/docs/{row['id']}", row["text"]))
    paragraphs = split_paragraphs((corpus / "books" / "botchan.txt").read_text(encoding="utf-8"))
    out += [(f"https://www.gutenberg.org/ebooks/8868#p{i}", p) for i, p in enumerate(paragraphs)]
    wiki = next((corpus / "wiki").glob("*.bz2"))
    for o in read_wikipedia_dump(str(wiki), pafs.LocalFileSystem(), WikiParams(), TaskContext()):
        kept = o.kept
        out += list(zip(kept.column("url").to_pylist(), kept.column("text").to_pylist()))
    return out


def write_jsonl(docs: list[tuple[str, str]], path: Path, target_bytes: int) -> dict[str, int]:
    """FineWeb-style JSON Lines of about ``target_bytes``: the documents repeated, a unique id per copy."""
    text_json = [json.dumps(t, ensure_ascii=False) for _, t in docs]
    text_bytes_one = sum(len(t.encode("utf-8")) for _, t in docs)
    rows = copies = text_bytes = written = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        while written < target_bytes:
            lines = []
            dump = DUMPS[copies % len(DUMPS)]
            for i, ((url, _), tj) in enumerate(zip(docs, text_json)):
                uid = uuid.UUID(int=(copies << 64) | i)
                score = 0.80 + ((i * 7919 + copies) % 200) / 1000
                date = f"2024-{1 + copies % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{copies % 60:02d}Z"
                lines.append(
                    f'{{"id":"<urn:uuid:{uid}>","text":{tj},"url":{json.dumps(f"{url}?copy={copies}")},'
                    f'"dump":"{dump}","date":"{date}","language":"en","language_score":{score:.4f}}}\n'
                )
            chunk = "".join(lines)
            f.write(chunk)
            written += len(chunk.encode("utf-8"))
            rows += len(docs)
            text_bytes += text_bytes_one
            copies += 1
    return {"rows": rows, "copies": copies, "text_bytes": text_bytes, "bytes": path.stat().st_size}


def write_parquet(jsonl: Path, path: Path, row_group_mb: int = 128) -> dict[str, int]:
    """The same rows as Parquet (pyarrow, snappy), row groups of about ``row_group_mb`` MB uncompressed."""
    schema = pa.schema(
        [("id", pa.string()), ("text", pa.string()), ("url", pa.string()), ("dump", pa.string()),
         ("date", pa.string()), ("language", pa.string()), ("language_score", pa.float64())]
    )
    table = pajson.read_json(jsonl, parse_options=pajson.ParseOptions(explicit_schema=schema))
    rows_per_group = max(1, int(table.num_rows * row_group_mb * (1 << 20) / table.nbytes))
    pq.write_table(table, path, row_group_size=rows_per_group, compression="snappy")
    meta = pq.read_metadata(path)
    return {"rows": table.num_rows, "row_groups": meta.num_row_groups, "bytes": path.stat().st_size,
            "uncompressed_bytes": sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))}


# ---------------------------------------------------------------------------- systems


def arcforge_outputs(path: Path, params: ReadParams) -> Iterator:
    """io.read as the runtime runs it: plan on the driver, then one task per Split."""
    for split in READ.plan([str(path)], None, params):
        fs, p = storage.filesystem(split.uri)
        yield from READ.read(p, fs, params, TaskContext(split=split.spec))


def run_arcforge(path: Path) -> int:
    params = ReadParams()
    n = 0
    for out in arcforge_outputs(path, params):
        n += out.kept.num_rows + (out.rejected.num_rows if out.rejected is not None else 0)
    return n


def run_arcforge_no_metadata(path: Path) -> int:
    """The same read without the metadata JSON (``metadata_keys: []``): what that encoding costs."""
    n = 0
    for out in arcforge_outputs(path, ReadParams(metadata_keys=[])):
        n += out.kept.num_rows + (out.rejected.num_rows if out.rejected is not None else 0)
    return n


def run_arcforge_conform(path: Path) -> int:
    params = ReadParams()
    schema = READ.source_schema([str(path)], None, params)
    n = 0
    for out in arcforge_outputs(path, params):
        n += conform(out.kept, schema).num_rows + (out.rejected.num_rows if out.rejected is not None else 0)
    return n


def run_read_json(path: Path) -> int:
    return pajson.read_json(path).num_rows


def run_open_json(path: Path) -> int:
    return sum(b.num_rows for b in pajson.open_json(path))


def run_ds_batches(path: Path) -> int:
    return sum(b.num_rows for b in pads.dataset(path, format="parquet").to_batches())


def run_ds_table(path: Path) -> int:
    return pads.dataset(path, format="parquet").to_table().num_rows


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[Path], int], path: Path) -> tuple[float, float, int]:
    gc.collect()
    c0, t0 = cpu_seconds(), time.perf_counter()
    n = fn(path)
    return time.perf_counter() - t0, cpu_seconds() - c0, n


def profile(path: Path, top: int) -> None:
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    run_arcforge(path)
    pr.disable()
    print(f"--- cProfile of one arcforge pass over {path.name} (top {top} by own time)", flush=True)
    pstats.Stats(pr, stream=sys.stdout).sort_stats("tottime").print_stats(top)
    pstats.Stats(pr, stream=sys.stdout).sort_stats("cumulative").print_stats(top)


SYSTEMS = {
    "jsonl": {
        "arcforge io.read": run_arcforge,
        "arcforge io.read + conform": run_arcforge_conform,
        "arcforge io.read, metadata_keys: []": run_arcforge_no_metadata,
        "pyarrow read_json": run_read_json,
        "pyarrow open_json (streaming)": run_open_json,
    },
    "jsonl.gz": {  # one stream, one Split: gzip decoded by Python's zlib (every decodable byte of a cut file)
        "arcforge io.read": run_arcforge,
        "pyarrow read_json": run_read_json,
        "pyarrow open_json (streaming)": run_open_json,
    },
    "jsonl.zst": {  # one stream, one Split: zstd decoded by the zstandard package (every decodable block)
        "arcforge io.read": run_arcforge,
        "pyarrow read_json": run_read_json,
        "pyarrow open_json (streaming)": run_open_json,
    },
    "parquet": {
        "arcforge io.read": run_arcforge,
        "arcforge io.read + conform": run_arcforge_conform,
        "arcforge io.read, metadata_keys: []": run_arcforge_no_metadata,
        "pyarrow dataset.to_batches": run_ds_batches,
        "pyarrow dataset.to_table": run_ds_table,
    },
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=300, help="size of the JSONL file in MB")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of each system counts")
    ap.add_argument("--threads", type=int, default=1, help="1: one thread per library; 0: the libraries' defaults")
    ap.add_argument("--profile", action="store_true", help="also cProfile one arcforge pass per format")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    if args.threads > 0:
        pa.set_cpu_count(args.threads)
        pa.set_io_thread_count(args.threads)
    docs = corpus_docs(fetch_demo_corpus(quiet=True))
    with tempfile.TemporaryDirectory(prefix="bench_read-") as tmp:
        files = {"jsonl": Path(tmp) / "fineweb.jsonl", "jsonl.gz": Path(tmp) / "fineweb.jsonl.gz",
                 "jsonl.zst": Path(tmp) / "fineweb.jsonl.zst",
                 "parquet": Path(tmp) / "fineweb.parquet"}
        data = {"jsonl": write_jsonl(docs, files["jsonl"], int(args.mb * MB))}
        with files["jsonl"].open("rb") as src, gzip.open(files["jsonl.gz"], "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        data["jsonl.gz"] = {"bytes": files["jsonl.gz"].stat().st_size}
        with files["jsonl"].open("rb") as src, files["jsonl.zst"].open("wb") as dst:
            zstandard.ZstdCompressor(level=3).copy_stream(src, dst)  # level 3: the zstd tool's default
        data["jsonl.zst"] = {"bytes": files["jsonl.zst"].stat().st_size}
        data["parquet"] = write_parquet(files["jsonl"], files["parquet"])
        data["docs_per_copy"] = len(docs)
        data["splits"] = {k: len(READ.plan([str(p)], None, ReadParams())) for k, p in files.items()}
        data["rejected"] = {  # every row must come out as a document, or the comparison is off
            k: sum(o.rejected.num_rows for o in arcforge_outputs(p, ReadParams()) if o.rejected is not None)
            for k, p in files.items()
        }
        print(json.dumps({"data": data}), flush=True)
        rows = data["jsonl"]["rows"]
        best: dict[str, dict[str, tuple[float, float]]] = {fmt: {} for fmt in SYSTEMS}
        for fmt, systems in SYSTEMS.items():  # warm-up: page cache, imports, polars' pool
            for name, fn in systems.items():
                n = fn(files[fmt])
                assert n == rows, f"{fmt} {name}: {n} rows, expected {rows}"
        for r in range(args.rounds):
            for fmt, systems in SYSTEMS.items():
                for name, fn in systems.items():
                    wall, cpu, n = timed(fn, files[fmt])
                    assert n == rows, (fmt, name, n)
                    old = best[fmt].get(name)
                    if old is None or wall < old[0]:
                        best[fmt][name] = (wall, cpu)
                    print(f"round {r} {fmt:8s} {name:32s} {wall:7.3f} s wall {cpu:7.3f} s cpu", flush=True)
        if args.profile:
            for fmt in SYSTEMS:
                profile(files[fmt], 25)
    result: dict = {"threads": args.threads or "default", "cpu_count": pa.cpu_count(), "rows": rows, "data": data}
    for fmt, systems in best.items():
        peers = {name: wall for name, (wall, _) in systems.items() if name.startswith("pyarrow")}
        size = data[fmt]["bytes"]
        result[fmt] = {
            name: {
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "file_MB_per_s": round(size / MB / wall, 1),
                "text_MB_per_s": round(data["jsonl"]["text_bytes"] / MB / wall, 1),
                "docs_per_s": round(rows / wall),
                # throughput of this system / the peer's (time of the peer / time of this system)
                "ratio_vs": {peer: round(peer_wall / wall, 3) for peer, peer_wall in peers.items()},
            }
            for name, (wall, cpu) in systems.items()
        }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
