"""``dedup.semantic`` (SemDeDup) on real templated pages, against ``dedup.minhash``, and its speed.

* **Data**: ``arcforge.dedup.templated.templated_set()``: Django 5.2.8's release notes
  (bugfix / security / security+bugfix patch-release pages, one template each with other
  fill, labelled by a rule on the intro sentence; the feature releases, index and
  security archive distinct) plus the Django and docutils documentation pages as extra
  distinct pages (their four small templated families kept as families). Counts are
  printed; see the module's docstring for the rule.
* **Stages**: a generated run config, ``io.read`` of a JSONL then the stage under test,
  local engine; the removed documents are the stage's ``rejected/`` rows.
  ``dedup.semantic``: ``device: cpu``, ``max_chars: 1000`` (all-MiniLM-L6-v2 truncates at
  256 tokens, about 1,000 characters of English and fewer of reST, whose ``====`` heading
  underlines cost a token per few characters: the printed share of pages whose
  1000-character prefix already fills 256 tokens says how much the stage default of 2000
  would add), default ``n_clusters: auto`` and keep rule, one run with ``eps: null``
  (the ``sem_max_sim`` distribution) and one per ``eps``; one more at ``n_clusters: 1``
  (every pair compared, no k-means miss) at the largest eps. ``dedup.minhash``:
  ``threshold: 0.8`` and its defaults (word 5-shingles, 128 permutations, verified pairs,
  connected components, the longest page of a component kept).
* **Similarity within a family**: per family, the median over members of the largest
  MiniLM cosine (the same 1000-character prefix, int16-quantised as in the stage) and of
  the largest word-5-shingle Jaccard (whole page) to another member.
* **Speed**, CPU, this process: embeddings (``semantic_parts.embed`` over the set's
  1000-character prefixes, model load excluded), k-means (faiss on ``--km-rows`` int16
  embeddings of synthetic unit vectors, ``--km-k`` centroids, 20 iterations) and the
  pairwise rule (``earlier_max`` over one cluster of ``--pair-rows`` synthetic vectors).

    .venv/bin/python benchmarks/bench_semdedup.py            # ~4.5 min on 2 shared cores

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
MAX_CHARS = 1000


def run_stage(tmp: Path, docs_path: Path, uses: str, params: str, tag: str, reason: str) -> tuple[set[str], dict, object, float]:
    """``(removed ids, stage stats, kept table, seconds)`` of ``io.read`` then ``uses``."""
    from arcforge.runtime import dataset
    from arcforge.runtime.config import load_plan
    from arcforge.runtime.dataset import DatasetRef
    from arcforge.runtime.runner import Runner

    cfg = tmp / f"{tag}.yaml"
    cfg.write_text(
        f'name: {tag}\nstorage: {{root: "{tmp / "runs"}"}}\nstages:\n'
        f'  - {{name: docs, uses: io.read, engine: local, input: {{files: ["{docs_path}"]}}, params: {{partition_mb: 0.25}}}}\n'
        f'  - {{name: dd, uses: {uses}, engine: local, input: docs, params: {{{params}}}}}\n'
    )
    t = time.perf_counter()
    results = Runner(load_plan(cfg)).run()
    secs = time.perf_counter() - t
    out = tmp / "runs" / tag / "dd"
    kept = dataset.read_dataset(DatasetRef(str(out)))
    rej_dir = out / "rejected"
    removed = set()
    rej = dataset.read_dataset(DatasetRef(str(rej_dir))) if rej_dir.exists() else None
    if rej is not None and rej.num_rows:
        assert set(rej.column("reason").to_pylist()) <= {reason}
        removed = set(rej.column("id").to_pylist())
    return removed, results[-1].manifest["stats"], kept, secs


def family_similarity(docs: list[dict], labels: list, emb: np.ndarray) -> list[tuple[str, int, float, float]]:
    """Per family: size, the median over members of their largest cosine to another member,
    and the same for the largest word-5-shingle Jaccard."""
    from arcforge.dedup.shingles import shingles

    x = sp.unit(sp.quantise(emb))
    out = []
    for fam in sorted({lab for lab in labels if lab}, key=lambda f: -labels.count(f)):
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
    t_all = time.perf_counter()
    docs, labels = templated_set()
    ids = [d["id"] for d in docs]
    group = {d["id"]: ("release notes" if d["source"] == "django-releases" else "docs") for d in docs}
    tmp = Path(tempfile.mkdtemp(prefix="bench-semdedup-"))
    docs_path = tmp / "docs.jsonl"
    docs_path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    families = sorted({lab for lab in labels if lab}, key=lambda f: -labels.count(f))

    # --- speed -----------------------------------------------------------------------------
    model = sp.default_model()
    t = time.perf_counter()
    enc = sp.load_encoder(model, "cpu")
    load_s = time.perf_counter() - t
    texts = [d["text"][:MAX_CHARS] for d in docs]
    t = time.perf_counter()
    emb = sp.embed(texts, model, "cpu", 64)
    emb_s = time.perf_counter() - t
    full = sum(len(enc.tokenizer(s, add_special_tokens=True, verbose=False)["input_ids"]) >= enc.max_seq_length for s in texts)
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
    sem = f"device: cpu, max_chars: {MAX_CHARS}"
    rows = []  # (name, removed ids, clusters, seconds)
    mh_removed, _, _, mh_s = run_stage(tmp, docs_path, "dedup.minhash", "threshold: 0.8", "minhash", "near_duplicate")
    base_removed, base_stats, base_kept, base_s = run_stage(tmp, docs_path, "dedup.semantic", sem, "explore", "semantic_duplicate")
    assert not base_removed
    sim = dict(zip(base_kept.column("id").to_pylist(), base_kept.column("sem_max_sim").to_pylist()))
    for eps in EPS:
        removed, stats, _, secs = run_stage(tmp, docs_path, "dedup.semantic", f"{sem}, eps: {eps}", f"eps{eps}", "semantic_duplicate")
        # the rule compares with every earlier document, so eps only moves the cut
        assert removed == {i for i, s in sim.items() if s is not None and s > 1 - eps}
        rows.append((f"SemDeDup eps={eps} (sim > {1 - eps:.2f})", removed, stats["semantic.n_clusters"], secs))
    eps = max(EPS)
    removed, _, _, secs = run_stage(tmp, docs_path, "dedup.semantic", f"{sem}, eps: {eps}, n_clusters: 1", "k1", "semantic_duplicate")
    rows.append((f"SemDeDup eps={eps}, n_clusters=1 (all pairs)", removed, 1, secs))
    rows.append(("dedup.minhash, threshold 0.8", mh_removed, None, mh_s))

    n_templ = sum(1 for lab in labels if lab)
    n_rel = sum(1 for d in docs if group[d["id"]] == "release notes")
    rate0 = removal_rates(labels, [False] * len(labels))
    dist_rel = sum(1 for i, lab in zip(ids, labels) if lab is None and group[i] == "release notes")
    print(f"## Templated pages: {len(docs)} docs ({n_rel} Django release notes, {len(docs) - n_rel} Django/docutils docs), "
          f"{n_templ} templated in {len(families)} families ({rate0['clones']} clones), {rate0['distinct']} distinct "
          f"({dist_rel} release pages, {rate0['distinct'] - dist_rel} docs pages)\n")
    print("| method | clones removed | distinct wrongly removed | of which release pages | of which docs pages | clusters | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, removed, k, secs in rows:
        r = removal_rates(labels, [i in removed for i in ids])
        wrong = [i for i, lab in zip(ids, labels) if lab is None and i in removed]
        n_wrong_rel = sum(group[i] == "release notes" for i in wrong)
        print(f"| {name} | {r['clones_removed']:.1%} | {r['distinct_removed']:.1%} ({len(wrong)}) | {n_wrong_rel} | "
              f"{len(wrong) - n_wrong_rel} | {k if k is not None else '-'} | {secs:.1f} |")
    print("\n## Clones removed per family (family size - 1 clones each)\n")
    print("| method | " + " | ".join(f"{f} ({labels.count(f) - 1})" for f in families) + " |")
    print("|---|" + "---|" * len(families))
    for name, removed, _, _ in rows:
        cells = []
        for f in families:
            n = sum(1 for i, lab in zip(ids, labels) if lab == f and i in removed)
            cells.append(f"{min(n, labels.count(f) - 1) / (labels.count(f) - 1):.0%}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n## Why: within-family similarity (median over members of the best match in the family; "
          f"cosine on the {MAX_CHARS}-char prefix, Jaccard on the whole page)\n")
    print("| family | pages | MiniLM cosine | word-5-shingle Jaccard |")
    print("|---|---|---|---|")
    for fam, n, cos, jac in family_similarity(docs, labels, emb):
        print(f"| {fam} | {n} | {cos:.3f} | {jac:.3f} |")
    lab_of = dict(zip(ids, labels))
    med = {}
    for name, pick in (("templated", lambda i: lab_of[i] is not None),
                       ("distinct release pages", lambda i: lab_of[i] is None and group[i] == "release notes"),
                       ("distinct docs pages", lambda i: lab_of[i] is None and group[i] == "docs")):
        vals = [s for i, s in sim.items() if s is not None and pick(i)]
        med[name] = f"{statistics.median(vals):.3f}" if vals else "-"
    print(f"\nsem_max_sim (eps: null run, {base_stats['semantic.n_clusters']} clusters, {base_s:.1f} s), medians: "
          + ", ".join(f"{k} {v}" for k, v in med.items()) + "; stats "
          + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in base_stats.items() if k.startswith("semantic.sim_ge")))
    print(f"\n{full} of {len(texts)} pages ({full / len(texts):.0%}) fill MiniLM's {enc.max_seq_length} tokens within "
          f"their first {MAX_CHARS} characters (for those a longer max_chars changes nothing).")
    print("\n## Speed (CPU, this process; 2 shared cores)\n")
    print("| step | work | seconds | rate |")
    print("|---|---|---|---|")
    print(f"| model load | all-MiniLM-L6-v2 | {load_s:.1f} | once per worker |")
    print(f"| embeddings | {len(texts)} docs, {MAX_CHARS}-char prefix | {emb_s:.1f} | {len(texts) / emb_s:.1f} docs/s |")
    print(f"| k-means (faiss) | {args.km_rows} x 384, k={args.km_k}, 20 iter | {km_s:.1f} | {args.km_rows / km_s:,.0f} docs/s |")
    pairs = args.pair_rows * (args.pair_rows - 1) / 2
    print(f"| pairwise (blocked) | one cluster of {args.pair_rows} | {pair_s:.1f} | {args.pair_rows / pair_s:,.0f} docs/s, {pairs / pair_s / 1e6:.0f} M pairs/s |")
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
