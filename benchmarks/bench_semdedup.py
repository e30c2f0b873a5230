"""``dedup.semantic`` (SemDeDup) on real templated pages, against MinHash, and its speed.

* **Data**: ``arcforge.dedup.templated.templated_set()``: the demo corpus's Django and
  docutils documentation pages, 28 of them in 4 families of real templated pages
  (section index pages, "How to use Django with <server>", model relationship examples,
  docutils menu bars; 24 clones = family sizes - 1) and 299 distinct pages. (The brief's
  Django release notes are not in the corpus: its Django bundle excludes ``releases/``.)
* **Stage**: a generated run config, ``io.read`` of a JSONL then ``dedup.semantic``
  (``device: cpu``, default ``n_clusters: auto`` and keep rule), local engine, one run per
  ``eps``; the removed documents are the stage's ``rejected/`` rows. One more run at
  ``n_clusters: 1`` (every pair compared, no k-means miss) at the largest eps.
* **MinHash at 0.8**: ``arcforge.dedup.minhash`` signatures of word 5-shingles (128
  permutations), ``lsh_params(0.8, 128)`` bands, documents sharing a band key joined
  (connected components), the longest document of each component kept.
* **Speed**, CPU, this process: embeddings (``semantic_parts.embed`` over the set's
  2000-character prefixes, model load excluded), k-means (faiss on ``--km-rows`` int16
  embeddings of synthetic unit vectors, ``--km-k`` centroids, 20 iterations) and the
  pairwise rule (``earlier_max`` over one cluster of ``--pair-rows`` synthetic vectors).

    .venv/bin/python benchmarks/bench_semdedup.py            # ~4 min on 2 shared cores

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from arcforge.dedup import semantic_parts as sp
from arcforge.dedup.templated import removal_rates, templated_set

EPS = (0.02, 0.05, 0.1, 0.15, 0.2)


def run_stage(tmp: Path, docs_path: Path, params: str, tag: str) -> tuple[set[str], dict, object]:
    from arcforge.runtime import dataset
    from arcforge.runtime.config import load_plan
    from arcforge.runtime.dataset import DatasetRef
    from arcforge.runtime.runner import Runner

    cfg = tmp / f"{tag}.yaml"
    cfg.write_text(
        f'name: {tag}\nstorage: {{root: "{tmp / "runs"}"}}\nstages:\n'
        f'  - {{name: docs, uses: io.read, engine: local, input: {{files: ["{docs_path}"]}}, params: {{partition_mb: 0.25}}}}\n'
        f'  - {{name: sem, uses: dedup.semantic, engine: local, input: docs, params: {{{params}}}}}\n'
    )
    results = Runner(load_plan(cfg)).run()
    out = tmp / "runs" / tag / "sem"
    kept = dataset.read_dataset(DatasetRef(str(out)))
    rej_dir = out / "rejected"
    removed = set()
    rej = dataset.read_dataset(DatasetRef(str(rej_dir))) if rej_dir.exists() else None
    if rej is not None and rej.num_rows:
        assert set(rej.column("reason").to_pylist()) <= {"semantic_duplicate"}
        removed = set(rej.column("id").to_pylist())
    return removed, results[-1].manifest["stats"], kept


def minhash_removed(docs: list[dict], threshold: float = 0.8, num_perm: int = 128) -> tuple[set[str], float]:
    from arcforge.dedup.minhash import band_keys, lsh_params, signatures

    texts = [d["text"] for d in docs]
    t = time.perf_counter()
    sigs = signatures(texts, ngram=5, num_perm=num_perm)
    b, r = lsh_params(threshold, num_perm)
    keys = band_keys(sigs, b, r)
    parent = list(range(len(docs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for j in range(b):
        first: dict[int, int] = {}
        for i, k in enumerate(keys[:, j].tolist()):
            if k in first:
                parent[find(i)] = find(first[k])
            else:
                first[k] = i
    comps: dict[int, list[int]] = {}
    for i in range(len(docs)):
        comps.setdefault(find(i), []).append(i)
    removed = set()
    for members in comps.values():
        keep = min(members, key=lambda i: (-len(texts[i]), docs[i]["id"]))
        removed |= {docs[i]["id"] for i in members if i != keep}
    return removed, time.perf_counter() - t


def family_similarity(docs: list[dict], labels: list, emb: np.ndarray) -> list[tuple[str, int, float, float]]:
    """Per family: size, the median over members of their largest cosine to another member,
    and the same for the largest word-5-shingle Jaccard."""
    from arcforge.dedup.shingles import shingles

    x = sp.unit(sp.quantise(emb))
    out = []
    for fam in sorted({lab for lab in labels if lab}):
        idx = [i for i, lab in enumerate(labels) if lab == fam]
        sims = x[idx] @ x[idx].T
        np.fill_diagonal(sims, -1)
        sh = [set(shingles(docs[i]["text"], 5)) for i in idx]
        jac = [max(len(a & b) / max(1, len(a | b)) for jj, b in enumerate(sh) if jj != ii) for ii, a in enumerate(sh)]
        out.append((fam, len(idx), float(np.median(sims.max(axis=1))), float(np.median(jac))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--km-rows", type=int, default=20000)
    ap.add_argument("--km-k", type=int, default=100)
    ap.add_argument("--pair-rows", type=int, default=10000)
    args = ap.parse_args()
    docs, labels = templated_set()
    ids = [d["id"] for d in docs]
    tmp = Path(tempfile.mkdtemp(prefix="bench-semdedup-"))
    docs_path = tmp / "docs.jsonl"
    docs_path.write_text("".join(json.dumps(d) + "\n" for d in docs))

    # --- speed -----------------------------------------------------------------------------
    model = sp.default_model()
    t = time.perf_counter()
    sp.load_encoder(model, "cpu")
    load_s = time.perf_counter() - t
    texts = [d["text"][:2000] for d in docs]
    t = time.perf_counter()
    emb = sp.embed(texts, model, "cpu", 64)
    emb_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    synth = sp.quantise(rng.standard_normal((args.km_rows, sp.DIM)) / np.sqrt(sp.DIM))
    t = time.perf_counter()
    sp.fit_centroids(synth, args.km_k, 0)
    km_s = time.perf_counter() - t
    cluster = synth[: args.pair_rows]
    t = time.perf_counter()
    sp.earlier_max(cluster)
    pair_s = time.perf_counter() - t

    # --- quality ---------------------------------------------------------------------------
    rows = []
    base_removed, base_stats, base_kept = run_stage(tmp, docs_path, "device: cpu", "explore")
    assert not base_removed
    sim = dict(zip(base_kept.column("id").to_pylist(), base_kept.column("sem_max_sim").to_pylist()))
    for eps in EPS:
        t = time.perf_counter()
        removed, stats, _ = run_stage(tmp, docs_path, f"device: cpu, eps: {eps}", f"eps{eps}")
        secs = time.perf_counter() - t
        # the rule compares with every earlier document, so eps only moves the cut
        assert removed == {i for i, s in sim.items() if s is not None and s > 1 - eps}
        rate = removal_rates(labels, [i in removed for i in ids])
        rows.append((f"SemDeDup eps={eps} (sim > {1 - eps:.2f})", rate, stats["semantic.n_clusters"], secs))
    eps = max(EPS)
    removed, stats, _ = run_stage(tmp, docs_path, f"device: cpu, eps: {eps}, n_clusters: 1", "k1")
    rows.append((f"SemDeDup eps={eps}, n_clusters=1 (all pairs)", removal_rates(labels, [i in removed for i in ids]), 1, float("nan")))
    mh_removed, mh_s = minhash_removed(docs)
    rows.append(("MinHash 5-shingles, threshold 0.8", removal_rates(labels, [i in mh_removed for i in ids]), None, mh_s))

    n_fam = len({lab for lab in labels if lab})
    print(f"## Templated pages: {len(docs)} docs, {sum(1 for lab in labels if lab)} templated in {n_fam} families "
          f"({rows[0][1]['clones']} clones), {rows[0][1]['distinct']} distinct\n")
    print("| method | clones removed | distinct wrongly removed | clusters | seconds |")
    print("|---|---|---|---|---|")
    for name, r, k, secs in rows:
        print(f"| {name} | {r['clones_removed']:.1%} | {r['distinct_removed']:.1%} | {k if k is not None else '-'} | {secs:.1f} |")
    print("\n## Why: within-family similarity (median over members of the best match in the family)\n")
    print("| family | pages | MiniLM cosine | word-5-shingle Jaccard |")
    print("|---|---|---|---|")
    for fam, n, cos, jac in family_similarity(docs, labels, emb):
        print(f"| {fam} | {n} | {cos:.3f} | {jac:.3f} |")
    clone_sims = [s for i, s in sim.items() if s is not None and labels[ids.index(i)]]
    other_sims = [s for i, s in sim.items() if s is not None and not labels[ids.index(i)]]
    print(f"\nsem_max_sim (eps: null run, {base_stats['semantic.n_clusters']} clusters): templated median "
          f"{statistics.median(clone_sims):.3f}, distinct median {statistics.median(other_sims):.3f}; stats "
          + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in base_stats.items() if k.startswith("semantic.sim_ge")))
    print("\n## Speed (CPU, this process; 2 shared cores)\n")
    print("| step | work | seconds | rate |")
    print("|---|---|---|---|")
    print(f"| model load | all-MiniLM-L6-v2 | {load_s:.1f} | once per worker |")
    print(f"| embeddings | {len(texts)} docs, 2000-char prefix | {emb_s:.1f} | {len(texts) / emb_s:.1f} docs/s |")
    print(f"| k-means (faiss) | {args.km_rows} x 384, k={args.km_k}, 20 iter | {km_s:.1f} | {args.km_rows / km_s:,.0f} docs/s |")
    pairs = args.pair_rows * (args.pair_rows - 1) / 2
    print(f"| pairwise (blocked) | one cluster of {args.pair_rows} | {pair_s:.1f} | {args.pair_rows / pair_s:,.0f} docs/s, {pairs / pair_s / 1e6:.0f} M pairs/s |")


if __name__ == "__main__":
    main()
