"""The full heuristic chain, arcforge's fused stages vs datatrove's four filters, per CPU-second.

* **Data**: the oracle's real documents (``oracle_filters.oracle_documents``: the demo
  corpus's docs, book paragraphs and Wikipedia articles, whole and cut into 1-, 3- and
  8-paragraph pieces, so short, long, clean and list-like text all occur), repeated with a
  unique id per copy into FineWeb-style JSONL; by default each document once (``--copies``), since
  arcforge's word cache (a whitespace run is tokenized once per process) would profit from
  repeated text.
* **arcforge**: ``arcforge run`` of one stage, ``io.read`` with fused ``steps``
  ``web.gopher_quality`` -> ``web.gopher_repetition`` -> ``web.c4_quality`` ->
  ``web.fineweb_quality``, local engine; kept rows and rejects written as Parquet.
* **datatrove** (0.10.1, the same venv): ``JsonlReader`` -> ``GopherQualityFilter`` ->
  ``GopherRepetitionFilter`` -> ``C4QualityFilter`` -> ``FineWebQualityFilter``, each with
  its exclusion writer -> ``ParquetWriter``, one task (``peers/datatrove_heuristics.py``).
* **Per core**: both under ``taskset -c 0``, in turns; docs per CPU-second (user + system
  of the child, start-up included) over every input document. The kept ids are compared.

    .venv/bin/python benchmarks/bench_heuristics.py            # 31k documents, 17 MB of text
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_filters import parquet_rows, timed  # noqa: E402
from bench_read import MB, write_jsonl  # noqa: E402
from oracle_filters import RULES, oracle_documents  # noqa: E402

from arcforge.pipelines.demo.corpus import fetch_demo_corpus  # noqa: E402
from arcforge.runtime.dataset import DatasetRef, read_dataset  # noqa: E402


def arcforge_config(src: Path, root: Path) -> str:
    steps = [f"      - {{name: {r.stage.split('.')[-1]}, uses: {r.stage}}}" for r in RULES]
    return "\n".join([
        "name: bench", f"storage: {{root: {json.dumps(str(root))}}}", "stages:",
        "  - name: docs", "    uses: io.read", f"    input: {{files: [{json.dumps(str(src))}]}}", "    engine: local",
        "    steps:", *steps, "",
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=1, help="copies of every document (unique ids)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each side counts")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    corpus = fetch_demo_corpus(quiet=True)
    docs = [("", t) for t in oracle_documents(corpus)]
    tmp = Path(tempfile.mkdtemp(prefix="bench_heuristics-"))
    try:
        src = tmp / "in" / "docs.jsonl"
        src.parent.mkdir()
        once = sum(len(t.encode("utf-8")) for _, t in docs)
        data = write_jsonl(docs, src, once * (args.copies - 1) + 1)
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
                    cmd = [*pin, sys.executable, "-m", "arcforge.cli", "run", str(cfg)]
                else:
                    cmd = [*pin, sys.executable, str(HERE / "peers" / "datatrove_heuristics.py"), str(src.parent), "*.jsonl", str(out)]
                wall, cpu, _ = timed(cmd, env)
                print(f"round {r} {side:9s} {wall:8.2f} s wall {cpu:8.2f} s cpu", flush=True)
                if side not in best or cpu < best[side][1]:
                    best[side] = (wall, cpu)
        a_ids = sorted(read_dataset(DatasetRef(str(tmp / "arcforge" / "bench" / "docs")), ["id"]).column("id").to_pylist())
        d_ids = sorted(parquet_rows(tmp / "datatrove" / "kept", "id"))
        result = {
            "rows": data["rows"],
            "text_MB": round(data["text_bytes"] / MB, 1),
            "kept": {"arcforge": len(a_ids), "datatrove": len(d_ids), "same_ids": a_ids == d_ids,
                     "ids_kept_by_only_one": len(set(a_ids) ^ set(d_ids))},
        }
        for side, (wall, cpu) in best.items():
            result[side] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "docs_per_cpu_s": round(data["rows"] / cpu)}
        result["arcforge_vs_datatrove_docs_per_cpu_s"] = round(best["datatrove"][1] / best["arcforge"][1], 2)
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
