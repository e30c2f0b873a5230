"""End-to-end fuzzy dedup: ``dedup.minhash`` against datatrove's four-stage MinHash chain,
on the same Parquet parts in the same run; and the driver's memory as the corpus grows.

    .venv/bin/python benchmarks/bench_fuzzy.py [--sizes 250000,500000,1000000]
        [--engines local,spark,ray] [--datatrove 1000000] [--json out.json]

* **Data** (``make_data``): real paragraphs (the demo corpus's docutils and Django docs,
  Botchan, Wikipedia; paragraphs of 20+ words) drawn at random into documents of 3 to 8
  paragraphs (about 2 KB), and 10% of the documents replaced by a near copy of another
  document (1% of its words deleted, true 5-gram Jaccard about 0.95). One Parquet part per
  31,250 documents. Sizes are nested: the first ``n`` documents of the same stream.
* **arcforge**: ``dedup.minhash``'s ``run(ctx)`` with its defaults (threshold 0.8, 128
  permutations, 16 bands x 8 rows, pairs verified), on the local engine (one process),
  Spark ``local[2]`` and a local Ray with 2 CPUs: the machine's two cores.
* **datatrove** 0.10.1: ``ParquetReader -> MinhashDedupSignature``, ``MinhashDedupBuckets``,
  ``MinhashDedupCluster``, ``ParquetReader -> MinhashDedupFilter -> ParquetWriter`` with
  ``LocalPipelineExecutor``, 2 workers (the cluster step is one task by design), and the same
  banding (``num_buckets=16, hashes_per_bucket=8``, 5-grams); it does not verify pairs.
* **Measure**: each run in its own child process; seconds are the run's wall time (for
  arcforge after a warm-up run on 200 documents that starts the JVM/Python workers);
  driver memory is the child's own RSS sampled every 10 ms (``bench_dedup.RssSampler``:
  not the JVM, not Ray's workers), as the peak minus the RSS before the run.
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
PER_PART = 31_250


def _paragraphs() -> list[str]:
    import gzip

    sys.path.insert(0, str(HERE))
    from bench_read import corpus_docs

    from arcforge.pipelines.demo.corpus import fetch_demo_corpus

    corpus = fetch_demo_corpus(quiet=True)
    texts = [t for _, t in corpus_docs(corpus)]
    with gzip.open(corpus / "sources" / "django-docs.jsonl.gz", "rt", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f if line.strip()]
    paras = {" ".join(p.split()) for t in texts for p in t.split("\n\n")}
    return sorted(p for p in paras if len(p.split()) >= 20)


def make_data(out: Path, n: int, seed: int = 3) -> dict:
    import random

    import pyarrow.parquet as pq

    from arcforge.runtime.documents import DOC_SCHEMA, docs_table

    pool = _paragraphs()
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows, part, planted, text_bytes = [], 0, 0, 0
    recent: list[str] = []
    for i in range(n):
        if recent and rng.random() < 0.10:
            words = rng.choice(recent).split()
            text = " ".join(w for w in words if rng.random() > 0.01)
            planted += 1
        else:
            text = "\n\n".join(rng.sample(pool, rng.randint(3, 8)))
        if len(recent) < 5000:
            recent.append(text)
        else:
            recent[rng.randrange(5000)] = text
        rows.append({"id": f"doc-{i:08d}", "text": text, "source": "bench", "url": f"https://bench.example/{i}"})
        text_bytes += len(text.encode())
        if len(rows) == PER_PART or i == n - 1:
            pq.write_table(docs_table(rows, DOC_SCHEMA), out / f"part-{part:05d}.parquet", compression="zstd")
            rows, part = [], part + 1
    return {"docs": n, "parts": part, "planted_near_copies": planted, "text_MiB": round(text_bytes / MiB, 1),
            "paragraph_pool": len(pool)}


# ---------------------------------------------------------------------------- children


def _arcforge(engine, inputs: Path, out: Path) -> list[dict]:  # noqa: ANN001
    from types import SimpleNamespace

    from arcforge.dedup.fuzzy import MINHASH_DEDUP, MinhashParams
    from arcforge.runtime.dataset import schema_to_b64
    from arcforge.runtime.documents import DOC_SCHEMA
    from arcforge.runtime.runner import GlobalContext
    from arcforge.runtime.tasks import PartitionTask

    params = MinhashParams()
    schema = MINHASH_DEDUP.schema_for(params, DOC_SCHEMA)
    tasks = [PartitionTask("dedup.minhash", {}, i, str(f), str(out), f"bench-{i}", schema_to_b64(schema))
             for i, f in enumerate(sorted(inputs.glob("part-*.parquet")))]
    ctx = GlobalContext(SimpleNamespace(params=params, name="mh"), tasks, tasks, engine, [], lambda rec: None)
    return MINHASH_DEDUP.run(ctx)


def arcforge_child(job: dict) -> dict:
    import gc

    from bench_dedup import RssSampler, _engine

    engine = _engine(job["engine"])
    work = Path(job["work"])
    _arcforge(engine, Path(job["warmup"]), work / "warmup-out")
    gc.collect()
    with RssSampler() as rss:
        t0 = time.perf_counter()
        records = _arcforge(engine, Path(job["inputs"]), work / "out")
        seconds = time.perf_counter() - t0
    engine.stop()
    stats: dict = {}
    for r in records:
        for k, v in r["stats"].items():
            if k.startswith(("minhash.", "dropped")):
                stats[k] = stats.get(k, 0) + v
    return {"seconds": round(seconds, 1), "driver_rss_before_MiB": round(rss.base / MiB, 1),
            "driver_rss_peak_delta_MiB": round((rss.peak - rss.base) / MiB, 1),
            "removed": stats.get("dropped.near_duplicate", 0),
            "rounds": stats.get("minhash.component_rounds"), "largest_component": stats.get("minhash.largest_component"),
            "candidate_pairs": stats.get("minhash.candidate_pairs"), "verified_pairs": stats.get("minhash.verified_pairs")}


def _datatrove_xxhash_on_str() -> None:
    """datatrove 0.10.1 hands ``str`` to ``xxhash.xxh64_intdigest``, which xxhash 4 refuses
    (3.x encoded it as UTF-8): encode it, as 3.x did, so datatrove keeps its default hash."""
    import xxhash
    from datatrove.utils.hashes import xxhash as dt_xxhash

    def enc(f):  # noqa: ANN001, ANN202
        return lambda data: f(data.encode("utf-8") if isinstance(data, str) else data)

    dt_xxhash.xxhash64, dt_xxhash.xxhash32 = enc(xxhash.xxh64_intdigest), enc(xxhash.xxh32_intdigest)


def datatrove_child(job: dict) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    _datatrove_xxhash_on_str()
    work = Path(job["work"])
    cfg = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8, seed=1)
    sigs, buckets, clusters = work / "sigs", work / "buckets", work / "clusters"
    steps = {
        "signatures": ([ParquetReader(job["inputs"], glob_pattern="*.parquet", text_key="text", id_key="id"),
                        MinhashDedupSignature(output_folder=str(sigs), config=cfg)], 2, 2),
        "buckets": ([MinhashDedupBuckets(input_folder=str(sigs), output_folder=str(buckets), config=cfg)], cfg.num_buckets, 2),
        "cluster": ([MinhashDedupCluster(input_folder=str(buckets), output_folder=str(clusters), config=cfg)], 1, 1),
        "filter": ([ParquetReader(job["inputs"], glob_pattern="*.parquet", text_key="text", id_key="id"),
                    MinhashDedupFilter(input_folder=str(clusters)),
                    ParquetWriter(str(work / "out"))], 2, 2),
    }
    timings, t0 = {}, time.perf_counter()
    for name, (pipeline, tasks, workers) in steps.items():
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=str(work / f"logs-{name}"),
                              skip_completed=False).run()
        timings[name] = round(time.perf_counter() - t, 1)
    import pyarrow.parquet as pq

    n_in = sum(pq.ParquetFile(f).metadata.num_rows for f in Path(job["inputs"]).glob("*.parquet"))
    n_out = sum(pq.ParquetFile(f).metadata.num_rows for f in (work / "out").rglob("*.parquet"))
    removed = n_in - n_out
    return {"seconds": round(time.perf_counter() - t0, 1), "steps": timings, "removed": removed}


# ---------------------------------------------------------------------------- parent


def _spawn(args: list[str], env: dict[str, str]) -> dict:
    sys.path.insert(0, str(HERE))
    from bench_dedup import _spawn as spawn

    return spawn(args, env, timeout=7200, script=__file__)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="250000,500000,1000000")
    ap.add_argument("--engines", default="local,spark,ray")
    ap.add_argument("--datatrove", default="1000000", help="sizes at which datatrove runs too (comma-separated, or none)")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--make-data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_data:
        spec = json.loads(args.make_data)
        print(json.dumps(make_data(Path(spec["out"]), spec["n"])))
        return
    if args.child:
        sys.path[:0] = [str(HERE / "peers"), str(HERE)]
        job = json.loads(args.child)
        print(json.dumps(datatrove_child(job) if job["system"] == "datatrove" else arcforge_child(job)))
        return
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE / "peers"), str(HERE), os.environ.get("PYTHONPATH")]))}
    sizes = [int(s) for s in args.sizes.split(",")]
    dt_sizes = [] if args.datatrove == "none" else [int(s) for s in args.datatrove.split(",")]
    result: dict = {"data": {}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench_fuzzy-", dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp_path = Path(tmp)
        warmup = tmp_path / "warmup"
        _spawn(["--make-data", json.dumps({"out": str(warmup), "n": 200})], env)
        for n in sizes:
            inputs = tmp_path / f"n{n}"
            result["data"][n] = _spawn(["--make-data", json.dumps({"out": str(inputs), "n": n})], env)
            print(json.dumps({"data": n, **result["data"][n]}), flush=True)
            systems = [("arcforge", e) for e in args.engines.split(",")] + ([("datatrove", "local")] if n in dt_sizes else [])
            for system, engine in systems:
                job = {"system": system, "engine": engine, "inputs": str(inputs), "warmup": str(warmup),
                       "work": str(tmp_path / f"{system}-{engine}-{n}")}
                res = _spawn(["--child", json.dumps(job)], env)
                result["runs"][f"{system} {engine} {n}"] = res
                print(json.dumps({"system": system, "engine": engine, "docs": n, **res}), flush=True)
                subprocess.run(["rm", "-rf", job["work"]], check=False)
            subprocess.run(["rm", "-rf", str(inputs)], check=False)
    _table(result, sizes)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def _table(result: dict, sizes: list[int]) -> None:
    print("\n| system | engine | docs | seconds | docs/s | removed | driver peak +MiB | vs datatrove |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in result["runs"].items():
        system, engine, n = key.split()
        dt = result["runs"].get(f"datatrove local {n}")
        ratio = f"{dt['seconds'] / r['seconds']:.2f}x faster" if dt and system == "arcforge" else ""
        print(f"| {system} | {engine} | {int(n):,} | {r['seconds']} | {int(n) / r['seconds']:,.0f} | {r['removed']:,} | "
              f"{r.get('driver_rss_peak_delta_MiB', '')} | {ratio} |")


if __name__ == "__main__":
    main()
