"""Connected components (large-star/small-star on the global operations): rounds and time
against the size of the largest component.

    .venv/bin/python benchmarks/bench_components.py [--engines local,spark,ray]
        [--sizes 100,1000,10000,100000] [--edges 200000] [--json out.json]

* **Graphs**: ``--edges`` random edges between 4 x ``--edges`` nodes (many small components,
  as a dedup graph is), plus one planted component of ``size`` nodes, in two shapes: a
  *chain* (the worst case for label propagation; large-star/small-star needs O(log^2 n)
  rounds) and a random tree (each node linked to an earlier one: MinHash clusters look
  like this). Node ids are shuffled so a chain's order is not the id order.
* **Check**: the labels equal scipy's ``connected_components`` (smallest id per component).
* **Measure**: wall seconds of ``connected_components`` in one process per engine (Spark
  ``local[2]`` with checkpointed rounds, Ray with 2 CPUs), after a warm-up on 100 edges.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent


def graph(shape: str, size: int, noise_edges: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n_noise = 4 * noise_edges  # mean degree 0.5: small components, as in a dedup graph
    perm = rng.permutation(n_noise + size).astype(np.int64)
    src = [rng.integers(0, n_noise, noise_edges)]
    dst = [rng.integers(0, n_noise, noise_edges)]
    planted = np.arange(n_noise, n_noise + size)
    if shape == "chain":
        src.append(planted[:-1]), dst.append(planted[1:])
    else:  # a random tree: node k links to a random earlier node
        parents = (rng.random(size - 1) * np.arange(1, size)).astype(np.int64)
        src.append(planted[1:]), dst.append(planted[parents])
    s, d = np.concatenate(src), np.concatenate(dst)
    return pa.table({"src": perm[s], "dst": perm[d]})


def reference(edges: pa.Table) -> dict[int, int]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    s, d = edges.column("src").to_numpy(), edges.column("dst").to_numpy()
    nodes, inv = np.unique(np.concatenate([s, d]), return_inverse=True)
    n = len(nodes)
    m = coo_matrix((np.ones(len(s)), (inv[: len(s)], inv[len(s):])), shape=(n, n))
    _, labels = connected_components(m, directed=False)
    smallest = np.full(labels.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(smallest, labels, nodes)
    return dict(zip(nodes.tolist(), smallest[labels].tolist()))


def run(engine_name: str, shapes: list[str], sizes: list[int], noise: int) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from bench_dedup import _engine

    from arcforge.runtime.globalops.components import connected_components

    engine = _engine(engine_name)
    out = []
    with tempfile.TemporaryDirectory(prefix="bench_cc-") as tmp:
        def once(edges: pa.Table, tag: str) -> tuple[float, object, pa.Table]:
            with engine.ops() as ops:
                t0 = time.perf_counter()
                frame, stats = connected_components(
                    ops, ops.from_arrow(edges, num_partitions=8),
                    checkpoint_dir=f"{tmp}/{tag}" if engine_name == "spark" else None)
                labels = frame.collect()
                return time.perf_counter() - t0, stats, labels

        once(graph("chain", 10, 50), "warmup")
        for shape in shapes:
            for size in sizes:
                edges = graph(shape, size, noise)
                seconds, stats, labels = once(edges, f"{shape}-{size}")
                got = dict(zip(labels.column("node").to_pylist(), labels.column("component").to_pylist()))
                row = {"engine": engine_name, "shape": shape, "largest": stats.largest_component, "edges": edges.num_rows,
                       "rounds": stats.rounds, "seconds": round(seconds, 1), "correct": got == reference(edges)}
                print(json.dumps(row), flush=True)
                out.append(row)
    engine.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="local,spark,ray")
    ap.add_argument("--shapes", default="chain,tree")
    ap.add_argument("--sizes", default="100,1000,10000,100000")
    ap.add_argument("--edges", type=int, default=200_000, help="random edges around the planted component")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for e in args.engines.split(","):
        rows += run(e, args.shapes.split(","), [int(s) for s in args.sizes.split(",")], args.edges)
    print("\n| engine | shape | largest component | edges | rounds | seconds | equals scipy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['shape']} | {r['largest']:,} | {r['edges']:,} | {r['rounds']} | {r['seconds']} | {r['correct']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
