"""Exact dedup written once on the global operations against the implementation it replaced
(one method per engine, ``benchmarks/peers/exact_dedup_v1.py``), on each engine.

    .venv/bin/python benchmarks/bench_dedup.py [--copies 16] [--parts 8] [--scales 1,4]
        [--engines local,spark,ray] [--rounds 1] [--json out.json]

* **Data**: the demo corpus's real documents (``bench_read.corpus_docs``: docutils JSONL,
  Botchan's paragraphs, Wikipedia), copied ``--copies`` times per scale unit with a unique
  id per copy and a copy tag at the end of the text (so copies are distinct documents).
  Then about 20% of the rows are made duplicates of another row of the same scale, half of
  them exactly, half with different case and spacing (same normalised text), spread over
  every part. With ``--grow parts`` (default) scale ``s`` has ``s * --parts`` Parquet parts
  of ``DOC_SCHEMA`` rows of the same size, so 4x is four times the parts and the rows; with
  ``--grow rows`` it has ``--parts`` parts, each ``s`` times larger (driver memory that
  follows the rows, not the partitions, shows there).
* **Systems**: ``dedup.exact``'s ``run(ctx)`` (``arcforge.runtime.globalops``) and the v1
  peer's ``run_local``/``run_spark``/``run_ray``, each called with a ``GlobalContext`` of
  the same tasks (every partition pending). Spark is ``local[2]``, Ray a local Ray with 2
  CPUs: the machine's two cores.
* **Measure**: every (engine, system, scale) runs in its own child process, which starts
  its engine, runs a warm-up dedup on 200 rows (JVM, Python workers), then the measured
  dedup. Seconds are the measured run's wall time. Driver memory is the child's own RSS
  (``psutil``, this process only: not Spark's JVM, not Ray's workers or raylet), sampled
  every 10 ms during the measured run, as the peak minus the RSS just before it.
  ``ru_maxrss`` of the child (whole life, engine start included) is reported too.
* **Check**: every part and rejected part (sha256 from the commit records) must be the
  same for both systems and all engines at a scale; ``identical`` says whether they are.

With ``--rounds N`` each child runs N times (interleaved v1, new) and the best time counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 1 << 20


# ---------------------------------------------------------------------------- data (in a child)


def make_data(out: Path, copies: int, parts: int, seed: int = 11) -> dict:
    import random

    import pyarrow.parquet as pq

    sys.path.insert(0, str(HERE))
    from bench_read import corpus_docs

    from arcforge.pipelines.demo.corpus import fetch_demo_corpus
    from arcforge.runtime.documents import DOC_SCHEMA, doc_id, docs_table

    docs = corpus_docs(fetch_demo_corpus(quiet=True))
    rows = [
        {"id": doc_id(url, str(c)), "text": f"{text}\n[copy {c}]", "source": "demo", "url": f"{url}?copy={c}"}
        for c in range(copies)
        for url, text in docs
    ]
    rng = random.Random(seed)
    n_dup = len(rows) // 5
    for k, i in enumerate(rng.sample(range(len(rows)), n_dup)):
        src = rows[rng.randrange(len(rows))]["text"]
        rows[i]["text"] = src if k % 2 else "  " + src.upper().replace(" ", "   ") + " "  # same once normalised
    rng.shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // parts)
    for p in range(parts):
        pq.write_table(docs_table(rows[p * per : (p + 1) * per], DOC_SCHEMA), out / f"part-{p:05d}.parquet", compression="zstd")
    return {"rows": len(rows), "parts": parts, "text_MiB": round(sum(len(r["text"].encode()) for r in rows) / MiB, 1),
            "rows_made_duplicates": n_dup}


# ---------------------------------------------------------------------------- one measured run (in a child)


def _tasks(inputs: Path, out: Path) -> list:
    from arcforge.runtime.dataset import schema_to_b64
    from arcforge.runtime.documents import DOC_SCHEMA
    from arcforge.runtime.tasks import PartitionTask

    files = sorted(inputs.glob("part-*.parquet"))
    return [
        PartitionTask("dedup.exact", {}, i, str(f), str(out), f"bench-{i}", schema_to_b64(DOC_SCHEMA))
        for i, f in enumerate(files)
    ]


def _engine(name: str):  # noqa: ANN202
    if name == "spark":
        from arcforge.runtime.config import SparkConfig
        from arcforge.runtime.engines.spark_engine import SparkEngine

        return SparkEngine(SparkConfig(master="local[2]"))
    if name == "ray":
        from arcforge.runtime.config import RayConfig
        from arcforge.runtime.engines.ray_engine import RayEngine

        return RayEngine(RayConfig(num_cpus=2))
    from arcforge.runtime.engines.local import LocalEngine

    return LocalEngine()


def _run(system: str, engine, inputs: Path, out: Path) -> list[dict]:  # noqa: ANN001
    from types import SimpleNamespace

    from exact_dedup_v1 import EXACT_DEDUP_V1

    from arcforge.dedup.exact import EXACT_DEDUP, ExactDedupParams
    from arcforge.runtime.runner import GlobalContext

    tasks = _tasks(inputs, out)
    ctx = GlobalContext(SimpleNamespace(params=ExactDedupParams()), tasks, tasks, engine, [], lambda rec: None)
    if system == "new":
        return EXACT_DEDUP.run(ctx)
    return getattr(EXACT_DEDUP_V1, f"run_{engine.name}")(ctx)


class RssSampler:
    """Peak RSS of this process while running, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.01):
        import threading

        import psutil

        self.proc, self.every = psutil.Process(), every
        self.peak = self.base = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def child(job: dict) -> dict:
    import gc
    import resource

    engine = _engine(job["engine"])
    work = Path(job["work"])
    _run(job["system"], engine, Path(job["warmup"]), work / "warmup-out")
    gc.collect()
    out = work / "out"
    with RssSampler() as rss:
        t0 = time.perf_counter()
        records = _run(job["system"], engine, Path(job["inputs"]), out)
        seconds = time.perf_counter() - t0
    engine.stop()
    records = sorted(records, key=lambda r: r["partition"])
    return {
        "seconds": round(seconds, 2),
        "driver_rss_before_MiB": round(rss.base / MiB, 1),
        "driver_rss_peak_delta_MiB": round((rss.peak - rss.base) / MiB, 1),
        "ru_maxrss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rows_out": sum(r["rows"] for r in records),
        "dropped": sum(r["stats"].get("dropped.exact_duplicate", 0) for r in records),
        "parts": [[r["partition"], r["sha256"], (r["rejected"] or {}).get("sha256")] for r in records],
    }


# ---------------------------------------------------------------------------- parent


def _spawn(args: list[str], env: dict[str, str], timeout: float = 1800, script: str = __file__) -> dict:
    """Run ``script`` (this benchmark, or another one's) with ``args`` in a child; its last JSON line."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {args[:2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=16, help="corpus copies per scale unit (16: about 71k rows, 72 MiB of text)")
    ap.add_argument("--parts", type=int, default=8, help="Parquet parts per scale unit")
    ap.add_argument("--scales", default="1,4")
    ap.add_argument("--engines", default="local,spark,ray")
    ap.add_argument("--grow", choices=("parts", "rows"), default="parts", help="what a larger scale multiplies")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--make-data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_data:
        spec = json.loads(args.make_data)
        print(json.dumps(make_data(Path(spec["out"]), spec["copies"], spec["parts"])))
        return
    if args.child:
        sys.path[:0] = [str(HERE / "peers"), str(HERE)]
        print(json.dumps(child(json.loads(args.child))))
        return

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE / "peers"), str(HERE), os.environ.get("PYTHONPATH")])),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
    scales = [int(s) for s in args.scales.split(",")]
    engines = args.engines.split(",")
    result: dict = {"copies_per_unit": args.copies, "parts_per_unit": args.parts, "grow": args.grow, "rounds": args.rounds,
                    "data": {}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench_dedup-") as tmp:
        tmp_path = Path(tmp)
        warmup = tmp_path / "warmup"
        _spawn(["--make-data", json.dumps({"out": str(warmup), "copies": 1, "parts": 2})], env)
        _shrink(warmup, 100)
        for s in scales:
            inputs = tmp_path / f"x{s}"
            result["data"][f"{s}x"] = _spawn(
                ["--make-data", json.dumps({"out": str(inputs), "copies": args.copies * s,
                                            "parts": args.parts * (s if args.grow == "parts" else 1)})], env
            )
            print(json.dumps({f"data {s}x": result["data"][f"{s}x"]}), flush=True)
            for engine in engines:
                best: dict[str, dict] = {}
                for r in range(args.rounds):
                    for system in ("v1", "new"):
                        work = tmp_path / f"{engine}-{system}-{s}x-{r}"
                        job = {"engine": engine, "system": system, "inputs": str(inputs), "warmup": str(warmup), "work": str(work)}
                        res = _spawn(["--child", json.dumps(job)], env)
                        print(json.dumps({"engine": engine, "system": system, "scale": s, "round": r,
                                          **{k: v for k, v in res.items() if k != "parts"}}), flush=True)
                        if system not in best or res["seconds"] < best[system]["seconds"]:
                            best[system] = res
                result["runs"][f"{engine} {s}x"] = best
            parts = {json.dumps(v["parts"]) for k, v in result["runs"].items() if k.endswith(f" {s}x") for v in v.values()}
            result["data"][f"{s}x"]["identical"] = len(parts) == 1
    for runs in result["runs"].values():
        for v in runs.values():
            v.pop("parts", None)
    _table(result, scales, engines)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def _shrink(directory: Path, rows: int) -> None:
    import pyarrow.parquet as pq

    for f in directory.glob("part-*.parquet"):
        pq.write_table(pq.read_table(f).slice(0, rows), f)


def _table(result: dict, scales: list[int], engines: list[str]) -> None:
    print()
    print("| engine | scale | v1 s | new s | new/v1 | v1 driver peak +MiB | new driver peak +MiB | identical parts |")
    print("|---|---|---|---|---|---|---|---|")
    for engine in engines:
        for s in scales:
            r = result["runs"][f"{engine} {s}x"]
            v1, new = r["v1"], r["new"]
            print(f"| {engine} | {s}x | {v1['seconds']} | {new['seconds']} | {new['seconds'] / v1['seconds']:.2f} | "
                  f"{v1['driver_rss_peak_delta_MiB']} | {new['driver_rss_peak_delta_MiB']} | {result['data'][f'{s}x']['identical']} |")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
