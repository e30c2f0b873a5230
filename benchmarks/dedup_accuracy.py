"""Fuzzy-dedup accuracy on a planted near-duplicate set of real text.

``arcforge.dedup.planted.planted_set`` over real demo-corpus documents (docutils + Django
docs) gives originals + edited copies with the true 5-gram Jaccard of every pair. Each
method clusters the documents at thresholds 0.7 / 0.8 / 0.9 and is scored **pairwise**:
over all unordered pairs of documents, predicted positive = same cluster, true positive =
true Jaccard >= threshold. Precision, recall and F1 of that.

Methods: the connected components of the true graph (the ceiling of any clustering by
connected components), datasketch (MinHashLSH + union-find over the same shingles), datatrove (its four
MinHash stages, its own shingling, bands x rows from ``lsh_params``), and arcforge's
``dedup.minhash`` stage run from a generated YAML config on the local engine (skipped,
with a note, while that stage is not available).

    .venv/bin/python benchmarks/dedup_accuracy.py [--originals 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "peers")]

from dedup_peers import datasketch_clusters, datatrove_clusters  # noqa: E402

from arcforge.dedup.planted import demo_documents, planted_set  # noqa: E402

THRESHOLDS = (0.7, 0.8, 0.9)


def arcforge_available() -> str | None:
    """None when the ``dedup.minhash`` stage can be used, else why not."""
    from arcforge import catalog

    if "dedup.minhash" not in catalog.STAGES:
        return "dedup.minhash is not in arcforge.catalog.STAGES"
    try:
        import importlib

        mod, _, obj = catalog.STAGES["dedup.minhash"].partition(":")
        getattr(importlib.import_module(mod), obj)
    except Exception as e:  # noqa: BLE001 - a stage being written may not import yet
        return f"dedup.minhash does not import: {type(e).__name__}: {e}"
    return None


def arcforge_clusters(docs: list[tuple[str, str]], threshold: float, workdir: str | Path) -> dict[str, str]:
    """The real ``dedup.minhash`` stage through a generated config on the local engine."""
    from arcforge.runtime.config import load_plan
    from arcforge.runtime.dataset import DatasetRef, read_dataset
    from arcforge.runtime.runner import Runner

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    inp = work / "docs.jsonl"
    with open(inp, "w", encoding="utf-8") as f:
        for did, text in docs:
            f.write(json.dumps({"id": did, "text": text}) + "\n")
    root, name = work / "runs", "acc"
    cfg = work / "acc.yaml"
    cfg.write_text(f"""
name: {name}
storage: {{root: "{root}"}}
stages:
  - {{name: docs, uses: io.read, input: {{files: ["{inp}"]}}, engine: local}}
  - {{name: fuzzy, uses: dedup.minhash, input: docs, engine: local, params: {{threshold: {threshold}}}}}
""")
    Runner(load_plan(cfg)).run()
    ref = DatasetRef(str(root / name / "fuzzy"))
    labels: dict[str, str] = {}
    for r in (ref, ref.rejected):
        try:
            t = read_dataset(r, ["id", "dup_cluster"])
        except FileNotFoundError:
            continue
        if t.num_rows:
            labels.update(zip(t.column("id").to_pylist(), t.column("dup_cluster").to_pylist()))
    missing = [d for d, _ in docs if d not in labels]
    if missing:
        raise RuntimeError(f"arcforge lost {len(missing)} documents, e.g. {missing[:3]}")
    return labels


def true_components(docs: list[tuple[str, str]], truth: set[tuple[str, str]]) -> dict[str, str]:
    """The connected components of the true graph (pairs with Jaccard >= t): what an exact
    transitive clustering gives, so its F1 is the ceiling of every method that clusters by
    connected components (a chain a~b~c with a!~c costs it the pair a-c)."""
    parent = {d: d for d, _ in docs}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in truth:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {d: find(d) for d, _ in docs}


def pairwise_scores(labels: dict[str, str], truth: set[tuple[str, str]]) -> dict:
    """P/R/F1 over all unordered pairs: predicted = same cluster, true = in ``truth``."""
    groups = defaultdict(list)
    for did, c in labels.items():
        groups[c].append(did)
    predicted = {tuple(sorted(p)) for g in groups.values() if len(g) > 1 for p in combinations(g, 2)}
    tp = len(predicted & truth)
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(truth) if truth else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "tp": tp, "predicted": len(predicted), "true": len(truth),
            "clusters": sum(len(g) > 1 for g in groups.values())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--originals", type=int, default=300)
    ap.add_argument("--copies-per-doc", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="true-graph components,datasketch,datatrove,arcforge")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)

    t0 = time.time()
    ps = planted_set(demo_documents(a.originals), seed=a.seed, copies_per_doc=a.copies_per_doc)
    kinds = Counter(k for _, k, _ in ps.meta.values())
    print(f"planted set: {len(ps.docs)} docs ({dict(kinds)}), {len(ps.pairs)} pairs with J > "
          f"{ps.min_jaccard}, built in {time.time() - t0:.1f}s", file=sys.stderr)

    methods = {"true-graph components": lambda t, w: true_components(ps.docs, set(ps.true_pairs(t))),
               "datasketch": lambda t, w: datasketch_clusters(ps.docs, t),
               "datatrove": lambda t, w: datatrove_clusters(ps.docs, t, w),
               "arcforge": lambda t, w: arcforge_clusters(ps.docs, t, w)}
    wanted = [m.strip() for m in a.methods.split(",") if m.strip()]
    notes = []
    if "arcforge" in wanted and (why := arcforge_available()):
        wanted.remove("arcforge")
        notes.append(f"arcforge skipped: {why}")
        print(notes[-1], file=sys.stderr)

    results = []
    with tempfile.TemporaryDirectory(prefix="dedup-acc-") as tmp:
        for t in THRESHOLDS:
            truth = set(ps.true_pairs(t))
            for m in wanted:
                t1 = time.time()
                labels = methods[m](t, Path(tmp) / f"{m}-{t}")
                sec = time.time() - t1
                s = pairwise_scores(labels, truth)
                results.append({"method": m, "threshold": t, "seconds": sec, **s})
                print(f"  {m} t={t}: F1 {s['f1']:.3f} ({sec:.1f}s)", file=sys.stderr)

    print(f"\nPairwise P/R/F1 on {len(ps.docs)} docs ({a.originals} real originals + "
          f"{len(ps.docs) - a.originals} planted copies); true positive = 5-gram Jaccard >= t\n")
    print("| t | method | true pairs | predicted pairs | precision | recall | F1 | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['threshold']} | {r['method']} | {r['true']} | {r['predicted']} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['f1']:.3f} | {r['seconds']:.1f} |")
    for n in notes:
        print(f"\n{n}")
    out = {"docs": len(ps.docs), "originals": a.originals, "seed": a.seed, "results": results, "notes": notes}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
