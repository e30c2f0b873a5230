"""MinHash signature speed: documents per CPU-second, arcforge against its peers.

Same documents (real demo-corpus text: docutils + Django docs + Lee news, repeated up to
``--docs``), same shingles (``arcforge.dedup.shingles``: normalised word 5-grams), same
``num_perm=128``, one process; each method timed with ``time.process_time``.

* ``arcforge signatures``: ``arcforge.dedup.minhash.signatures(texts)`` -- text to signature,
  tokenising and shingling included (xxh3 token hashes, datasketch ``affine64`` permutations);
* ``arcforge datasketch_signatures``: the bit-exact datasketch (``affine32``) path, from the
  shingle lists;
* ``datasketch update``: ``MinHash(128)`` + ``update(s.encode())`` per shingle per doc;
* ``datasketch update_batch``: one ``update_batch`` per doc;
* ``datatrove get_signature``: ``MinhashDedupSignature.get_signature`` (the method its
  ``run`` calls per document; 14x8=112 hashes by default, here 16x8=128) on the shingles hashed
  by its own ``_hash_func`` (64-bit SHA-1: its xxhash default rejects ``str`` with xxhash 4);
* ``datatrove get_shingles+get_signature``: its full per-document path, its own shingling;
* ``rensa RMinHash``: ``RMinHash(128, seed=1).update(shingles)`` then ``digest()``.

Peers start from shingle lists built once beforehand (``shingling`` row), so "peer" times
exclude tokenisation while arcforge ``signatures`` includes it; the ``+ shingling`` column
adds it back. Ratio = arcforge docs/CPU-s / peer docs/CPU-s.

    .venv/bin/python benchmarks/bench_minhash.py [--docs 5000] [--slow-docs 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "peers")]

from dedup_peers import rensa_signatures, shingle_lists  # noqa: E402

from arcforge.dedup.minhash import datasketch_signatures, signatures  # noqa: E402
from arcforge.dedup.planted import demo_documents  # noqa: E402

NUM_PERM = 128


def cpu(fn):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--slow-docs", type=int, default=1000, help="docs for the per-shingle Python peers")
    ap.add_argument("--max-words", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)

    base = [t for _, t in demo_documents(600, min_words=50, max_words=a.max_words)]
    texts = (base * (a.docs // len(base) + 1))[: a.docs]
    sh_sec, lists = cpu(lambda: shingle_lists(texts))
    n_sh = sum(map(len, lists))
    print(f"{len(texts)} docs ({len(base)} distinct), {n_sh} shingles ({n_sh / len(texts):.0f}/doc); "
          f"shingling {sh_sec:.2f} CPU-s", file=sys.stderr)

    def ds_update(lst):
        from datasketch import MinHash

        out = []
        for sh in lst:
            m = MinHash(num_perm=NUM_PERM)
            for s in sh:
                m.update(s.encode("utf8"))
            out.append(m.hashvalues)
        return out

    def ds_batch(lst):
        from datasketch import MinHash

        out = []
        for sh in lst:
            m = MinHash(num_perm=NUM_PERM)
            m.update_batch([s.encode("utf8") for s in sh])
            out.append(m.hashvalues)
        return out

    def dt_step():
        from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
        from datatrove.utils.hashing import HashConfig

        cfg = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8, seed=1,
                            hash_config=HashConfig(precision=64, hash_fc="sha1"))
        return MinhashDedupSignature(output_folder="/tmp/unused-dt-sigs", config=cfg)

    def dt_sig(lst):
        st = dt_step()
        h = st._hash_func
        return [st.get_signature(np.fromiter((h(s) for s in sh), np.uint64, len(sh)).reshape(-1, 1)) for sh in lst]

    def dt_full(txts):
        st = dt_step()
        return [st.get_signature(st.get_shingles(t)) for t in txts]

    slow = a.slow_docs
    rows = []
    arc_sec, _ = cpu(lambda: signatures(texts, num_perm=NUM_PERM))
    rows.append(("arcforge signatures (text -> sig)", len(texts), arc_sec, True))
    for name, fn, n in [
        ("arcforge datasketch_signatures", lambda: datasketch_signatures(lists, NUM_PERM), len(texts)),
        ("datasketch update (per shingle)", lambda: ds_update(lists[:slow]), slow),
        ("datasketch update_batch", lambda: ds_batch(lists[:slow]), slow),
        ("datatrove get_signature", lambda: dt_sig(lists[:slow]), slow),
        ("datatrove get_shingles+get_signature", lambda: dt_full(texts[:slow]), slow),
        ("rensa RMinHash", lambda: rensa_signatures(None, NUM_PERM, lists=lists), len(texts)),
    ]:
        sec, _ = cpu(fn)
        rows.append((name, n, sec, name.startswith("datatrove get_shingles")))
        print(f"  {name}: {sec:.2f} CPU-s for {n} docs", file=sys.stderr)

    arc_rate = len(texts) / arc_sec
    sh_per_doc = sh_sec / len(texts)
    print(f"\nMinHash signatures, num_perm={NUM_PERM}, 5-gram shingles, one process; "
          f"{len(texts)} docs of real text, {n_sh / len(texts):.0f} shingles/doc\n")
    print("| method | docs | CPU s | docs/CPU-s | docs/CPU-s + shingling | arcforge / peer (+ shingling) |")
    print("|---|---:|---:|---:|---:|---:|")
    results = []
    for name, n, sec, includes_text in rows:
        rate = n / sec
        rate_sh = rate if includes_text else n / (sec + sh_per_doc * n)
        ratio = "1.00" if name.startswith("arcforge signatures") else f"{arc_rate / rate:.2f} ({arc_rate / rate_sh:.2f})"
        print(f"| {name} | {n} | {sec:.2f} | {rate:,.0f} | {rate_sh:,.0f} | {ratio} |")
        results.append({"method": name, "docs": n, "cpu_s": sec, "docs_per_cpu_s": rate,
                        "docs_per_cpu_s_with_shingling": rate_sh})
    print(f"| shingling only (arcforge batch_shingles) | {len(texts)} | {sh_sec:.2f} | "
          f"{len(texts) / sh_sec:,.0f} | | |")
    out = {"docs": len(texts), "distinct_docs": len(base), "shingles": n_sh, "shingling_cpu_s": sh_sec,
           "results": results}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
