"""Tasks stream: memory follows the batch, not the partition; split files resume exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_stages import signal_after_commits

from arcforge.runtime import dataset
from arcforge.runtime.config import load_plan
from arcforge.runtime.dataset import DatasetRef, PartWriter
from arcforge.runtime.documents import DOC_SCHEMA
from arcforge.runtime.runner import Runner


def _big_parquet(path, rows: int, chars: int) -> int:
    """One file of ``rows`` documents of ``chars`` characters, written a row group at a time."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa ".split()
    text_bytes = 0
    with pq.ParquetWriter(path, DOC_SCHEMA, compression="zstd") as w:
        for start in range(0, rows, 2000):
            n = min(2000, rows - start)
            texts = [(" ".join(words[(i + j) % 10] for j in range(chars // 6)))[:chars] for i in range(start, start + n)]
            text_bytes += sum(len(t) for t in texts)
            w.write_table(pa.table({
                "id": [f"d{i}" for i in range(start, start + n)], "text": texts, "source": ["big"] * n,
                "url": [None] * n, "language": [None] * n, "metadata": [None] * n,
            }, schema=DOC_SCHEMA))
    return text_bytes


def test_a_map_stage_over_a_large_partition_keeps_memory_flat(tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    size = _big_parquet(src / "part.parquet", rows=80_000, chars=5_000)  # ~380 MB of text in one partition
    assert size >= 350e6
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
name: m
storage: {{root: "{tmp_path / 'runs'}"}}
stages:
  - {{name: filt, uses: "pipeline_stages:SLOW_FILTER", input: {{dataset: "{src}"}}, params: {{min_chars: 1}}}}
""")
    probe = textwrap.dedent(f"""
        import json, sys
        from arcforge.runtime.config import load_plan
        from arcforge.runtime.runner import Runner
        result = Runner(load_plan({str(cfg)!r})).run()[0]
        # VmHWM: this process's peak since exec (ru_maxrss would also count the forking pytest process)
        hwm = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        print(json.dumps({{"rss_mb": hwm / 1024, "rows": result.manifest["rows"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rows"] == 80_000
    # Holding the partition (~380 MB of text, read and written) would need well over 750 MB.
    assert got["rss_mb"] < 450, got


def test_part_writer_bytes_do_not_depend_on_how_batches_arrive(tmp_path):
    rows = [{"id": str(i), "text": "x" * (i % 97), "source": "s"} for i in range(5000)]
    table = pa.Table.from_pylist(rows, schema=DOC_SCHEMA)
    digests = []
    for chunk in (1, 7, 1000, 5000):
        w = PartWriter(DatasetRef(str(tmp_path / f"c{chunk}")), "part-00000.parquet", DOC_SCHEMA,
                       row_group_rows=512, row_group_bytes=20_000)
        for start in range(0, table.num_rows, chunk):
            w.write(table.slice(start, chunk))
        digests.append(w.close()["sha256"])
        meta = pq.read_metadata(tmp_path / f"c{chunk}" / "part-00000.parquet")
        assert meta.num_row_groups > 5 and meta.num_rows == 5000
    assert len(set(digests)) == 1
    assert pq.read_table(tmp_path / "c7" / "part-00000.parquet").equals(table)
    assert not [p for p in tmp_path.rglob(".tmp-*")], "no temporary file is left behind"


def test_kill_in_the_middle_of_a_split_jsonl_then_resume_is_exact(tmp_path, spark):
    data = tmp_path / "in" / "big.jsonl"
    data.parent.mkdir()
    with open(data, "w") as f:
        for i in range(30_000):
            f.write(json.dumps({"id": f"r{i}", "text": f"row {i} " + "lorem ipsum dolor " * (i % 40), "n": i}) + "\n")
    body = """
name: s
storage: {{root: "{root}"}}
engines: {{spark: {{master: "local[2]"}}}}
stages:
  - {{name: read, uses: io.read, input: {{files: ["{data}"]}}, engine: spark, params: {{partition_mb: 0.25}}}}
  - {{name: filt, uses: "pipeline_stages:SLOW_FILTER", input: read, engine: local, params: {{min_chars: 30}}}}
"""
    killed, clean = tmp_path / "killed.yaml", tmp_path / "clean.yaml"
    killed.write_text(body.format(root=tmp_path / "a", data=data))
    clean.write_text(body.format(root=tmp_path / "b", data=data))
    commits = tmp_path / "a" / "s" / "read" / "_commits"
    proc = subprocess.Popen([sys.executable, "-m", "arcforge.cli", "run", str(killed)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    signal_after_commits(proc, commits, 3, signal.SIGKILL, poll=0.05)
    proc.wait()
    n_before = len(list(commits.glob("*.json")))
    m = dataset.read_manifest(DatasetRef(str(tmp_path / "a" / "s" / "read")))
    assert m is None, "the kill must land in the middle of the split file"
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "run", str(killed)], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    Runner(load_plan(clean)).run()  # the uninterrupted run, in this process on the session's Spark
    a = dataset.read_manifest(DatasetRef(str(tmp_path / "a" / "s" / "read")))
    b = dataset.read_manifest(DatasetRef(str(tmp_path / "b" / "s" / "read")))
    assert len(a["parts"]) > n_before >= 3
    assert [(p["name"], p["sha256"]) for p in a["parts"]] == [(p["name"], p["sha256"]) for p in b["parts"]]
    assert a["rows"] == 30_000
    ids = dataset.read_dataset(DatasetRef(str(tmp_path / "a" / "s" / "read")), ["id"]).column("id").to_pylist()
    assert ids == [f"r{i}" for i in range(30_000)], "every line exactly once, in order"
