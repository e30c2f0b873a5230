"""A reader and ten cheap filters over >= 1 GB of real text: arcforge's fused chain vs datatrove.

* **Data**: the demo corpus's real text (docutils JSONL, Botchan's paragraphs, the
  Wikipedia sample), repeated with a unique id per copy into FineWeb-style JSONL rows
  (bench_read.py's builder) until the text alone passes ``--text-mb``.
* **Rules**: the ten of ``peers/filter_rules.py``, the same on both sides.
* **arcforge**: ``arcforge run`` of one stage, ``io.read`` with fused ``steps``
  (``text.stats``, then one ``filter`` step per rule), local engine: the kept rows and
  every step's rejects land in one dataset, text written once.
* **datatrove**: ``JsonlReader`` -> ten ``LambdaFilter``s, each with its
  ``ParquetWriter`` exclusion writer -> ``ParquetWriter``, one task, one worker
  (``peers/datatrove_filters.py``, run by the python of a venv that has datatrove).
* **Per core**: both run under ``taskset -c 0``: one core each, in turns, same files,
  Parquet on both sides (arcforge zstd, datatrove its default snappy). Docs per second count every input document; wall time
  includes each tool's start-up.

    .venv/bin/python benchmarks/bench_filters.py --datatrove-python /tmp/dtx/bin/python --text-mb 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

from bench_read import MB, corpus_docs, write_jsonl  # noqa: E402
from filter_rules import RULES  # noqa: E402

from arcforge.pipelines.demo.corpus import fetch_demo_corpus  # noqa: E402
from arcforge.runtime.dataset import DatasetRef, read_dataset  # noqa: E402


def arcforge_config(src: Path, root: Path) -> str:
    steps = ["      - {name: stats, uses: text.stats}"]
    for name, measure, op, value in RULES:
        steps.append(
            f'      - {{name: {name}, uses: filter, params: {{rules: [{{column: {measure}, op: "{op}", value: {value}, reason: {name}}}]}}}}'
        )
    return "\n".join([
        "name: bench", f"storage: {{root: {json.dumps(str(root))}}}", "stages:",
        "  - name: docs", "    uses: io.read", f"    input: {{files: [{json.dumps(str(src))}]}}", "    engine: local",
        "    steps:", *steps, "",
    ])  # fmt: skip


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system of the child) of one command, and its stdout."""
    before = os.times()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = os.times()
    if out.returncode:
        raise SystemExit(f"{cmd[:3]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, out.stdout


def parquet_rows(folder: Path, column: str) -> list[str]:
    return [v for f in sorted(folder.rglob("*.parquet")) for v in pq.read_table(f, columns=[column]).column(column).to_pylist()]


def text_bytes(folder: Path) -> int:
    return sum(len(t.encode()) for t in parquet_rows(folder, "text"))


def size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datatrove-python", required=True, help="python of a venv with datatrove installed")
    ap.add_argument("--text-mb", type=float, default=1000, help="MB of text in the input (not counting JSON)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each side counts")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    docs = corpus_docs(fetch_demo_corpus(quiet=True))
    tmp = Path(tempfile.mkdtemp(prefix="bench_filters-"))
    try:
        src = tmp / "in" / "fineweb.jsonl"
        src.parent.mkdir()
        data = write_jsonl(docs, src, int(args.text_mb * MB * 1.3))
        assert data["text_bytes"] >= args.text_mb * MB, data
        print(json.dumps({"data": data}), flush=True)
        pin = ["taskset", "-c", "0"]
        env = {**os.environ, "ARCFORGE_RUNS": str(tmp)}
        best: dict[str, tuple[float, float]] = {}
        for r in range(args.rounds):
            for side in ("arcforge", "datatrove"):
                out = tmp / side
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                if side == "arcforge":
                    cfg = tmp / "bench.yaml"
                    cfg.write_text(arcforge_config(src, out))
                    wall, cpu, _ = timed([*pin, sys.executable, "-m", "arcforge.cli", "run", str(cfg)], env)
                else:
                    wall, cpu, _ = timed([*pin, args.datatrove_python, str(HERE / "peers" / "datatrove_filters.py"),
                                          str(src.parent), "*.jsonl", str(out)])
                print(f"round {r} {side:9s} {wall:8.2f} s wall {cpu:8.2f} s cpu", flush=True)
                if side not in best or wall < best[side][0]:
                    best[side] = (wall, cpu)
        a_dir, d_dir = tmp / "arcforge" / "bench" / "docs", tmp / "datatrove"
        manifest = json.loads((a_dir / "_manifest.json").read_text())

        a_ids = sorted(read_dataset(DatasetRef(str(a_dir)), ["id"]).column("id").to_pylist())
        d_ids = sorted(parquet_rows(d_dir / "kept", "id"))
        a_rej = read_dataset(DatasetRef(str(a_dir / "rejected")), ["id", "reason"]).to_pylist()
        d_rej = {rule: len(parquet_rows(d_dir / "rejected" / rule, "id")) for rule, *_ in RULES if (d_dir / "rejected" / rule).exists()}
        a_rej_by = {}
        for row in a_rej:
            a_rej_by[row["reason"]] = a_rej_by.get(row["reason"], 0) + 1
        written_text = text_bytes(a_dir)
        result = {
            "rows": data["rows"],
            "text_MB": round(data["text_bytes"] / MB, 1),
            "kept": {"arcforge": len(a_ids), "datatrove": len(d_ids), "same_ids": a_ids == d_ids},
            "rejected_by_rule": {"arcforge": dict(sorted(a_rej_by.items())), "datatrove": dict(sorted(d_rej.items()))},
            "arcforge_text_written_MB": round(written_text / MB, 1),
            "arcforge_text_written_equals_input": written_text == data["text_bytes"],
            "bytes_written_MB": {"arcforge": round(size(a_dir) / MB, 1), "datatrove": round(size(d_dir) / MB, 1)},
            "arcforge_manifest_rows": manifest["rows"],
        }
        for side, (wall, cpu) in best.items():
            result[side] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "docs_per_s": round(data["rows"] / wall)}
        result["arcforge_vs_datatrove_docs_per_s"] = round(best["datatrove"][0] / best["arcforge"][0], 2)
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
