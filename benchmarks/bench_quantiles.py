"""Grouped weighted percentiles, what ``quality.buckets`` computes, on Spark: arcforge's
``Frame.quantiles_by`` against Spark SQL's own exact ``percentile`` with a frequency column.

    .venv/bin/python benchmarks/bench_quantiles.py [--rows 200000] [--groups 8] [--parts 8]
        [--rounds 2] [--no-one-at-a-time] [--json out.json]

* **Data**: ``--rows`` rows of three uniform scores (``a``, ``b``, ``c``), an integer weight
  1..499 (a document's tokens) and a group of ``--groups`` values (a language), seed 0, in
  ``--parts`` cached partitions of one DataFrame on ``local[2]``; every run reads that cache.
* **arcforge**: ``quantiles_by(["a", "b", "c"], q, by="grp", groups=..., weights="w")`` at
  the 19 inner cut points of 20 buckets: numpy's weighted ``inverted_cdf``, every score and
  group in one selection (checked against numpy for one group and score).
* **spark_percentile** (the peer): ``groupBy("grp").agg(percentile(a, q, w), ...)``, Spark's
  exact percentile with an integral frequency: one aggregation that keeps a value->count map
  per group and sorts it. Its definition is linear interpolation over the repeated values,
  not ``inverted_cdf``, so its floats differ slightly (reported: the largest difference).
* **one_at_a_time**: one selection per (group, score), on the frame filtered to the group:
  how ``quality.buckets`` computed them before ``quantiles_by`` (with today's selection).
* Wall seconds, best of ``--rounds`` (the methods alternate), after a warm-up of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QS = [k / 20 for k in range(1, 20)]
SCORES = ["a", "b", "c"]


def data(rows: int, groups: int) -> pa.Table:
    rng = np.random.default_rng(0)
    cols = {s: rng.random(rows) for s in SCORES}
    return pa.table({**cols, "w": rng.integers(1, 500, rows),
                     "grp": pa.array([f"g{i:02d}" for i in rng.integers(0, groups, rows)])})


def only(table: pa.Table, group: str) -> pa.Table:
    return table.filter(pc.equal(table.column("grp"), group))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-one-at-a-time", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()

    from pyspark.sql import functions as F

    from arcforge.runtime.config import SparkConfig
    from arcforge.runtime.engines.spark_engine import SparkEngine

    table = data(args.rows, args.groups)
    groups = sorted(set(table.column("grp").to_pylist()))
    ops = SparkEngine(SparkConfig(master="local[2]")).ops()
    frame = ops.from_arrow(table, args.parts).cache()
    frame.count()
    df = frame.df  # the same cached rows for the peer

    def arcforge() -> dict:
        return frame.quantiles_by(SCORES, QS, by="grp", groups=groups, weights="w")

    def spark_percentile() -> dict:
        rows = df.groupBy("grp").agg(*[F.percentile(s, QS, F.col("w")).alias(s) for s in SCORES]).collect()
        return {(r["grp"], s): list(r[s]) for r in rows for s in SCORES}

    def one_at_a_time() -> dict:
        return {(g, s): frame.map(only, frame.schema, args=(g,)).quantiles(s, QS, weights="w")
                for g in groups for s in SCORES}

    methods = {"arcforge": arcforge, "spark_percentile": spark_percentile}
    if not args.no_one_at_a_time:
        methods["one_at_a_time"] = one_at_a_time
    results = {name: fn() for name, fn in methods.items()}  # warm-up, and the answers
    sub = only(table, groups[0])
    want = np.quantile(sub.column("b").to_numpy(), QS, weights=sub.column("w").to_numpy(), method="inverted_cdf")
    assert results["arcforge"][(groups[0], "b")] == want.tolist(), "arcforge differs from numpy"
    if "one_at_a_time" in results:
        assert results["one_at_a_time"] == results["arcforge"]
    diff = max(abs(x - y) for k, v in results["arcforge"].items() for x, y in zip(v, results["spark_percentile"][k]))
    best = {name: float("inf") for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    out = {
        "rows": args.rows, "groups": len(groups), "scores": len(SCORES), "partitions": args.parts,
        "quantiles": len(QS), "engine": "spark local[2]",
        "seconds": {k: round(v, 2) for k, v in best.items()},
        "spark_percentile_over_arcforge": round(best["spark_percentile"] / best["arcforge"], 2),
        "largest_difference_from_spark_percentile": diff,
    }
    if "one_at_a_time" in best:
        out["one_at_a_time_over_arcforge"] = round(best["one_at_a_time"] / best["arcforge"], 2)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    ops.close()


if __name__ == "__main__":
    main()
