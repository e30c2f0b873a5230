"""Peak memory of the dataset readers: a 2 GB JSONL file through ``io.read`` and a map stage,
and a gzip bomb through the WARC reader. Each case runs in a child process and its peak RSS
is the kernel's ``ru_maxrss`` for that child (``os.wait4``), so every figure is attributable.

    .venv/bin/python benchmarks/bench_memory.py [--small] [--json out.json] [--only jsonl|bomb]

* **JSONL**: FineWeb-style rows made from the demo corpus's real text exactly as
  ``bench_read.py`` makes them, repeated to about ``--jsonl-mb`` (2 GiB; ``--small``: 200 MiB)
  of plain ``.jsonl``. A run config with two local-engine stages --
  ``io.read`` (defaults: ``partition_mb`` 128) and ``bench.length_filter``, a trivial map
  stage defined in this file (referenced as ``bench_memory:LENGTH_FILTER``, importable because
  the children get this folder on ``PYTHONPATH``) -- is run with ``arcforge run <cfg> --only
  read`` and then ``--only filter``, each in its own child, so each stage's peak is its own.
  Peers, each in a child: ``pyarrow.json.read_json(path)`` (the whole file in one table) and
  ``pyarrow.json.open_json(path)`` consumed batch by batch (streaming). A child that only
  imports what ``arcforge run`` imports gives the floor.
* **Gzip bomb**: WARC files whose response record inflates to ``--bomb-mb`` (2 GiB;
  ``--small``: 256 MiB) of zeros, written with zlib streaming (a few MB on disk), each
  followed by one ordinary HTML record in its own gzip member, read by
  ``web.warc.read_warc(path, LocalFileSystem(), ExtractParams(timeout_s=0), TaskContext())``
  (no sandbox child: extraction in-process) in a child. Variants: ``honest_length`` (the
  record's Content-Length says the 2 GiB), ``shared_member`` (the same, with the ordinary
  record inside the bomb's gzip member, so the member cannot be skipped unread),
  ``lying_length`` (Content-Length says 512 bytes; the same gzip member goes on inflating
  to 2 GiB of zeros) and ``http_gzip`` (a 4 KB record whose HTTP payload has ``Content-Encoding: gzip`` and inflates to 2 GiB). Peer: the usual
  warcio loop, ``ArchiveIterator`` + ``record.content_stream().read()`` on response records
  (what datatrove's ``WarcReader`` does before decoding the bytes). Floor: the same WARC with
  only the ordinary record. The peer's children run under an address-space cap
  (``--warcio-cap-mb``, 8 GiB) so that a reader that would take tens of GB fails with a
  MemoryError instead of starving the shared machine.

Children are started by a small launcher process made before this one grows: a forked
child's ``ru_maxrss`` includes the memory it inherited from its parent until exec, so
launching from a parent holding data would put the parent's size into every figure.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from arcforge.runtime.stage import MapStage, Output, Resources, StageParams, TaskContext, split_rejected


# ---------------------------------------------------------------------------- the map stage


class LengthParams(StageParams):
    min_chars: int = 200


def _length_filter(batch: pa.RecordBatch, params: LengthParams, ctx: TaskContext) -> Output:
    short = pc.less(pc.utf8_length(batch.column("text")), params.min_chars).to_pylist()
    return split_rejected(batch, ["too_short" if s else None for s in short])


LENGTH_FILTER = MapStage(
    "bench.length_filter",
    LengthParams,
    _length_filter,
    resources=Resources(cpus=1),
    engine="local",
    doc="Benchmark stage: rejects documents shorter than min_chars characters.",
)


# ---------------------------------------------------------------------------- harness

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
MiB = 1 << 20


# A fork copies the parent's memory map and the kernel counts that copy's high-water mark
# in the child's ru_maxrss (exec keeps it), so children are started by a small launcher
# process made before the parent grows: a child's figure is then its own peak (or the
# launcher's ~10 MB, never more).
LAUNCHER = """
import json, os, subprocess, sys, time
for line in sys.stdin:
    job = json.loads(line)
    t0 = time.perf_counter()
    with open(job["out"], "wb") as o, open(job["err"], "wb") as e:
        p = subprocess.Popen(job["argv"], stdout=o, stderr=e, env=job["env"])
        _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    print(json.dumps({"maxrss_kb": ru.ru_maxrss, "wall_s": time.perf_counter() - t0, "rc": p.returncode}), flush=True)
"""


class Launcher:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def peak(self, code_or_argv: str | list[str], workdir: Path, env: dict[str, str] | None = None) -> dict:
        """Run a child (python code, or an argv); its peak RSS (wait4), wall time and last stdout line."""
        argv = [sys.executable, "-c", code_or_argv] if isinstance(code_or_argv, str) else code_or_argv
        out_path, err_path = workdir / "child.out", workdir / "child.err"
        job = {"argv": argv, "env": {**os.environ, **(env or {})}, "out": str(out_path), "err": str(err_path)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        got = json.loads(self.proc.stdout.readline())
        res = {"peak_rss_mb": round(got["maxrss_kb"] / 1024, 1), "wall_s": round(got["wall_s"], 1), "rc": got["rc"]}
        lines = out_path.read_text(errors="replace").strip().splitlines()
        if lines:
            try:
                res["out"] = json.loads(lines[-1])
            except ValueError:
                res["out"] = lines[-1][:300]
        if got["rc"] != 0:
            res["stderr"] = err_path.read_text(errors="replace")[-1500:]
        return res

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# ---------------------------------------------------------------------------- JSONL

IMPORTS_ONLY = "import arcforge.cli, arcforge.run_cli, arcforge.runtime.runner, arcforge.runtime.io.read, polars, pyarrow.parquet, pyarrow.json"

READ_JSON = """
import json, sys, pyarrow.json as j
t = j.read_json(sys.argv[1])
print(json.dumps({"rows": t.num_rows, "table_mb": round(t.nbytes / 2**20)}))
"""

OPEN_JSON = """
import json, sys, pyarrow.json as j
print(json.dumps({"rows": sum(b.num_rows for b in j.open_json(sys.argv[1]))}))
"""

CONFIG = """name: bench-memory
storage: {{root: "{root}"}}
stages:
  - name: read
    uses: io.read
    input: {{files: ["{path}"]}}
    engine: local
  - name: filter
    uses: bench_memory:LENGTH_FILTER
    input: read
    engine: local
    params: {{min_chars: 200}}
"""


def part_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet"))


def bench_jsonl(run: Launcher, tmp: Path, target_mb: float) -> dict:
    from bench_read import corpus_docs, write_jsonl

    from arcforge.pipelines.demo.corpus import fetch_demo_corpus
    from arcforge.runtime.io.read import READ, ReadParams

    path = tmp / "fineweb-big.jsonl"
    t0 = time.perf_counter()
    data = write_jsonl(corpus_docs(fetch_demo_corpus(quiet=True)), path, int(target_mb * MiB))
    data["write_s"] = round(time.perf_counter() - t0, 1)
    data["partitions"] = len(READ.plan([str(path)], None, ReadParams()))
    data["MiB"] = round(data["bytes"] / MiB)
    print(json.dumps({"jsonl": data}), flush=True)
    cfg = tmp / "bench-memory.yaml"
    runs = tmp / "runs"
    cfg.write_text(CONFIG.format(root=runs, path=path))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    cli = [sys.executable, "-m", "arcforge.cli", "run", str(cfg)]
    res: dict = {"data": data}
    res["floor (imports only)"] = run.peak(IMPORTS_ONLY, tmp, env)
    res["arcforge io.read"] = run.peak([*cli, "--only", "read"], tmp, env)
    res["arcforge io.read"]["rows_out"] = part_rows(runs / "bench-memory" / "read")
    res["arcforge map (bench.length_filter)"] = run.peak([*cli, "--only", "filter"], tmp, env)
    res["arcforge map (bench.length_filter)"]["rows_out"] = part_rows(runs / "bench-memory" / "filter")
    res["pyarrow read_json"] = run.peak([sys.executable, "-c", READ_JSON, str(path)], tmp)
    res["pyarrow open_json (streaming)"] = run.peak([sys.executable, "-c", OPEN_JSON, str(path)], tmp)
    peer = res["pyarrow read_json"]["peak_rss_mb"]
    for k in ("arcforge io.read", "arcforge map (bench.length_filter)", "pyarrow open_json (streaming)"):
        res[k]["ratio_vs_read_json"] = round(res[k]["peak_rss_mb"] / peer, 3)
    path.unlink()
    return res


# ---------------------------------------------------------------------------- gzip bomb

HTML = (
    b"<html><head><title>An ordinary page</title></head><body><article><h1>An ordinary page</h1>"
    + b"<p>It was the first thing the schoolmaster said when he came to the house, and nobody listened.</p>" * 20
    + b"</article></body></html>"
)


def _warc_head(length: int, uri: str) -> bytes:
    return (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{abs(hash(uri)) % 10**12:012d}>\r\n"
        "WARC-Date: 2026-11-26T00:00:00Z\r\n"
        f"WARC-Target-URI: {uri}\r\n"
        "Content-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _gzip_member(pieces) -> bytes:  # noqa: ANN001 - an iterable of bytes
    import zlib

    z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join([*(z.compress(p) for p in pieces), z.flush()])


def _zeros(n: int):  # noqa: ANN202
    chunk = bytes(MiB)
    for _ in range(n // MiB):
        yield chunk
    if n % MiB:
        yield bytes(n % MiB)


def _ordinary_record() -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n" + f"Content-Length: {len(HTML)}\r\n\r\n".encode()
    block = http + HTML
    return _warc_head(len(block), "http://example.org/ordinary") + block + b"\r\n\r\n"


def write_bombs(tmp: Path, bomb_bytes: int) -> dict[str, Path]:
    ordinary = _gzip_member([_ordinary_record()])
    files = {}
    # honest_length: Content-Length covers the whole inflated block
    http = f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {bomb_bytes}\r\n\r\n".encode()
    member = _gzip_member([_warc_head(len(http) + bomb_bytes, "http://bomb.example/honest"), http, *_zeros(bomb_bytes), b"\r\n\r\n"])
    files["honest_length"] = member + ordinary
    # shared_member: the same record and the ordinary one in one gzip member (its ISIZE is not the
    # record's, so the reader cannot skip the member unread: the bomb must be inflated and dropped)
    member = _gzip_member(
        [_warc_head(len(http) + bomb_bytes, "http://bomb.example/shared"), http, *_zeros(bomb_bytes), b"\r\n\r\n", _ordinary_record()]
    )
    files["shared_member"] = member
    # lying_length: the header says 512 bytes; the member inflates to bomb_bytes of zeros anyway
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 512\r\n\r\n"
    member = _gzip_member([_warc_head(len(http) + 512, "http://bomb.example/lying"), http, *_zeros(bomb_bytes)])
    files["lying_length"] = member + ordinary
    # http_gzip: a small record whose HTTP payload is Content-Encoding: gzip of bomb_bytes zeros
    payload = _gzip_member(_zeros(bomb_bytes))
    http = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    member = _gzip_member([_warc_head(len(http) + len(payload), "http://bomb.example/http-gzip"), http, payload, b"\r\n\r\n"])
    files["http_gzip"] = member + ordinary
    files["floor (ordinary record only)"] = ordinary
    paths = {}
    for name, data in files.items():
        paths[name] = tmp / f"{name.split()[0]}.warc.gz"
        paths[name].write_bytes(data)
    return paths


READ_WARC = """
import collections, json, sys, time
import pyarrow.fs as pafs
from arcforge.runtime.stage import TaskContext
from arcforge.pipelines.web.warc import ExtractParams, read_warc
ctx, kept, reasons = TaskContext(), 0, collections.Counter()
for out in read_warc(sys.argv[1], pafs.LocalFileSystem(), ExtractParams(timeout_s=0), ctx):
    kept += out.kept.num_rows
    if out.rejected is not None:
        reasons.update(out.rejected.column("reason").to_pylist())
print(json.dumps({"kept": kept, "rejected": dict(reasons), "errors": len(ctx.errors)}))
"""

WARCIO_READ = """
import json, resource, sys
cap = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # this reader can take many times the bomb; spare the shared machine
from warcio.archiveiterator import ArchiveIterator
n = records = 0
err = None
try:
    with open(sys.argv[1], "rb") as f:
        for rec in ArchiveIterator(f):
            if rec.rec_type == "response":
                records += 1
                n += len(rec.content_stream().read())  # datatrove's WarcReader: content_stream().read(), then decode
except (Exception, MemoryError) as exc:
    err = f"{type(exc).__name__}: {exc}"[:200]
print(json.dumps({"responses": records, "payload_bytes": n, "error": err}))
"""


def bench_bomb(run: Launcher, tmp: Path, bomb_mb: float, cap_mb: int = 8192) -> dict:
    bomb_bytes = int(bomb_mb * MiB)
    t0 = time.perf_counter()
    paths = write_bombs(tmp, bomb_bytes)
    res: dict = {"data": {"inflated_MiB": round(bomb_bytes / MiB), "write_s": round(time.perf_counter() - t0, 1),
                          "file_bytes": {k: p.stat().st_size for k, p in paths.items()}}}
    print(json.dumps({"bomb": res["data"]}), flush=True)
    for name, path in paths.items():
        res[f"arcforge read_warc: {name}"] = run.peak([sys.executable, "-c", READ_WARC, str(path)], tmp)
        res[f"warcio content_stream().read(): {name}"] = run.peak([sys.executable, "-c", WARCIO_READ, str(path), str(cap_mb)], tmp)
        print(json.dumps({name: [res[f"arcforge read_warc: {name}"], res[f"warcio content_stream().read(): {name}"]]}), flush=True)
    return res


def main() -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="a quick smoke run: 200 MB of JSONL, a 256 MiB bomb")
    ap.add_argument("--jsonl-mb", type=float, help="JSONL size in MiB (default 2048; --small 200)")
    ap.add_argument("--bomb-mb", type=float, help="inflated size of the bomb in MiB (default 2048; --small 256)")
    ap.add_argument("--only", choices=("jsonl", "bomb"))
    ap.add_argument("--warcio-cap-mb", type=int, default=8192, help="address-space cap of the warcio peer's children")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    jsonl_mb = args.jsonl_mb or (200 if args.small else 2048)
    bomb_mb = args.bomb_mb or (256 if args.small else 2048)
    result: dict = {"small": args.small}
    run = Launcher()  # first, while this process is small
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        result["floor (python -c pass)"] = run.peak("pass", Path(tmp))
        if args.only in (None, "jsonl"):
            result["jsonl"] = bench_jsonl(run, Path(tmp), jsonl_mb)
        if args.only in (None, "bomb"):
            result["bomb"] = bench_bomb(run, Path(tmp), bomb_mb, args.warcio_cap_mb)
    run.close()
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
