"""Peer MinHash dedup implementations for the accuracy and speed benchmarks.

* ``datasketch_clusters``: datasketch ``MinHashLSH(threshold, num_perm)`` over
  ``MinHash(num_perm)`` of arcforge's 5-gram shingles (``shingles(text, 5)``, UTF-8), every
  document queried, union-find over the query results.
* ``datatrove_clusters``: datatrove's own four-stage MinHash pipeline (signature -> buckets ->
  cluster -> filter) on ``LocalPipelineExecutor``. It tokenises and shingles with its own code
  (``simplify_text`` + word tokenizer, 5-grams) -- datatrove's real behaviour, not arcforge's
  shingles. The n-gram hash is datatrove's 64-bit SHA-1 (``HashConfig(64, "sha1")``): its
  default xxhash path passes ``str`` to ``xxhash.xxh64_intdigest``, which the installed
  xxhash 4.1 rejects ("Strings must be encoded before hashing"). Bands x rows are ``arcforge.dedup.minhash.lsh_params(
  threshold, 128)`` (datasketch's optimum), so it is compared at the same operating point
  rather than with datatrove's fixed 14x8 default.
* ``rensa_signatures``: ``rensa.RMinHash`` digests of the same shingles (speed only).

Each ``*_clusters`` returns ``{doc id: cluster label}`` for every document.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

from arcforge.dedup.shingles import batch_shingles


class _UF:
    def __init__(self, n: int) -> None:
        self.p = list(range(n))

    def find(self, x: int) -> int:
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def shingle_lists(texts: list[str], ngram: int = 5) -> list[list[str]]:
    """``shingles(text, ngram)`` of every text, in one Arrow batch (same output)."""
    return batch_shingles(texts, ngram).to_pylist()


def datasketch_clusters(docs: list[tuple[str, str]], threshold: float, num_perm: int = 128) -> dict[str, str]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    mhs = []
    for k, sh in enumerate(shingle_lists([t for _, t in docs])):
        m = MinHash(num_perm=num_perm)
        m.update_batch([s.encode("utf8") for s in sh])
        lsh.insert(k, m)
        mhs.append(m)
    uf = _UF(len(docs))
    for k, m in enumerate(mhs):
        for j in lsh.query(m):
            uf.union(k, j)
    return {docs[k][0]: docs[uf.find(k)][0] for k in range(len(docs))}


def datatrove_clusters(docs: list[tuple[str, str]], threshold: float, workdir: str | os.PathLike,
                       num_perm: int = 128) -> dict[str, str]:
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.utils.hashing import HashConfig

    HASH_CONFIG = HashConfig(precision=64, hash_fc="sha1")  # noqa: N806 (see the module docstring)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from arcforge.dedup.minhash import lsh_params

    logging.getLogger("datatrove").setLevel(logging.WARNING)
    try:  # datatrove logs through loguru
        from loguru import logger

        logger.remove()
    except Exception:  # noqa: BLE001
        pass
    work = Path(workdir)
    inp = work / "input"
    inp.mkdir(parents=True, exist_ok=True)
    with open(inp / "docs.jsonl", "w", encoding="utf-8") as f:
        for did, text in docs:
            f.write(json.dumps({"id": did, "text": text}) + "\n")
    bands, rows = lsh_params(threshold, num_perm)  # datasketch's optimum for this threshold
    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1, hash_config=HASH_CONFIG)
    sigs, buckets, clusters = work / "sigs", work / "buckets", work / "clusters"

    def reader():
        return JsonlReader(str(inp), id_key="id", text_key="text")

    def run(pipeline, name, tasks=1):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name),
                              skip_completed=False).run()

    run([reader(), MinhashDedupSignature(output_folder=str(sigs), config=config)], "sig")
    run([MinhashDedupBuckets(input_folder=str(sigs), output_folder=str(buckets), config=config)], "buckets",
        tasks=config.num_buckets)
    run([MinhashDedupCluster(input_folder=str(buckets), output_folder=str(clusters), config=config,
                             save_cluster_id=True)], "cluster")
    run([reader(),
         MinhashDedupFilter(input_folder=str(clusters), load_cluster_ids=True,
                            exclusion_writer=JsonlWriter(str(work / "removed"))),
         JsonlWriter(str(work / "kept"))], "filter")
    labels: dict[str, str] = {}
    for folder in ("kept", "removed"):
        for p in sorted((work / folder).glob("*.jsonl*")):
            opener = gzip.open if p.suffix == ".gz" else open
            with opener(p, "rt", encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    cid = r.get("metadata", {}).get("minhash_cluster_id", -1)
                    labels[r["id"]] = f"c{cid}" if cid != -1 else f"d{r['id']}"  # -1: in no cluster
    missing = [d for d, _ in docs if d not in labels]
    if missing:
        raise RuntimeError(f"datatrove lost {len(missing)} documents, e.g. {missing[:3]}")
    return labels


def rensa_signatures(texts: list[str], num_perm: int = 128, seed: int = 1, lists=None) -> list[list[int]]:
    """rensa ``RMinHash(num_perm, seed)`` digests over ``shingles(text, 5)`` (``lists``:
    precomputed shingle lists, to time only the hashing)."""
    from rensa import RMinHash

    out = []
    for sh in lists if lists is not None else shingle_lists(texts):
        m = RMinHash(num_perm=num_perm, seed=seed)
        m.update(sh)
        out.append(m.digest())
    return out
