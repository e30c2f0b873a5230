"""The per-document half of MinHash dedup: signatures, LSH parameters and band keys.

Plain functions over a batch of documents (an Arrow string array or any iterable of str):

* ``shingles`` / ``batch_shingles`` (``arcforge.dedup.shingles``): normalised word
  n-grams, character n-grams for CJK text;
* ``datasketch_signatures``: bit-for-bit ``datasketch.MinHash(num_perm, seed, scheme=...)``
  updated with every shingle's UTF-8 (SHA-1 hashes, datasketch's permutations drawn from
  ``np.random.RandomState(seed)``, its arithmetic), vectorised over the batch. datasketch
  2.0's default scheme is ``affine32`` (``sha1_hash32`` -> fmix32 -> ``a*h+b mod 2^32``);
  ``legacy`` is the pre-2.0 ``(a*h+b mod (2^61-1)) & (2^32-1)``;
* ``signatures``: the fast path. 64-bit shingle hashes built from xxh3-64 token hashes
  (``shingle_hashes``), then datasketch's ``affine64`` permutations (fmix64 ->
  ``a*h+b mod 2^64``, same ``a``/``b`` as ``MinHash(scheme="affine64", seed=seed)``) applied
  to the whole batch as 2-D numpy arrays, reduced per document with ``np.minimum.reduceat``;
* ``lsh_params``: datasketch's ``_optimal_param`` (same ``scipy.integrate.quad`` calls);
* ``band_keys``: one deterministic 64-bit key per (document, band) for the bucket step.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from arcforge.dedup.shingles import batch_shingles, fmix64, shingle_hashes, shingles

__all__ = [
    "band_keys",
    "batch_shingles",
    "datasketch_signatures",
    "jaccard",
    "lsh_params",
    "minhash",
    "permutations",
    "shingle_hashes",
    "shingles",
    "signatures",
]

MERSENNE_PRIME = (1 << 61) - 1
MAX_HASH32 = (1 << 32) - 1
MAX_HASH64 = (1 << 64) - 1
SCHEMES = ("affine32", "affine64", "legacy")
# elements of a (perms x shingles) block: 1 MiB of uint64; larger temporaries are mmap-ed
# afresh on every allocation and the page faults made blocks of 2 MiB 5x slower here
_CHUNK = 1 << 17
_STEP = 8  # permutations per block
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


@lru_cache(maxsize=64)
def permutations(num_perm: int, seed: int, scheme: str = "affine64") -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` exactly as ``datasketch.MinHash(num_perm, seed, scheme=scheme)`` draws them."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}")
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        ab = [
            (gen.randint(1, MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
            for _ in range(num_perm)
        ]
        p = np.array(ab, dtype=np.uint64).T
        a, b = p[0].copy(), p[1].copy()
    else:
        width = 32 if scheme == "affine32" else 64
        dtype = np.uint32 if width == 32 else np.uint64
        a = gen.randint(0, 1 << (width - 1), num_perm, dtype=dtype) * dtype(2) + dtype(1)
        b = gen.randint(0, 1 << width, num_perm, dtype=dtype)
    a.flags.writeable = b.flags.writeable = False
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def _permute(hv: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: str) -> np.ndarray:
    """Permuted values, shape (len(a), len(hv)); ``hv`` already pre-mixed for affine schemes."""
    with np.errstate(over="ignore"):
        if scheme == "legacy":
            return ((a[:, None] * hv[None, :] + b[:, None]) % np.uint64(MERSENNE_PRIME)) & np.uint64(MAX_HASH32)
        return a[:, None] * hv[None, :] + b[:, None]


def _minhash(hv: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int, scheme: str) -> np.ndarray:
    """(n_docs, num_perm) minima of the permuted shingle hashes ``hv`` per document."""
    a, b = permutations(num_perm, seed, scheme)
    dtype = np.uint32 if scheme == "affine32" else np.uint64
    empty = MAX_HASH64 if scheme == "affine64" else MAX_HASH32
    n = len(offsets) - 1
    out = np.full((n, num_perm), empty, dtype=dtype)
    counts = np.diff(offsets)
    nonempty = np.flatnonzero(counts > 0)
    if not len(nonempty):
        return out
    if scheme == "affine32":
        hv = _fmix32(hv.astype(np.uint32))
    elif scheme == "affine64":
        hv = fmix64(hv)
    starts = offsets[:-1][nonempty]
    # chunks of whole documents x chunks of permutations, so no block exceeds _CHUNK elements
    step = min(num_perm, _STEP)
    doc_lo = 0
    while doc_lo < len(nonempty):
        # as many documents as fit with at least `step` permutations (one document at least)
        lo = starts[doc_lo]
        budget = lo + max(1, _CHUNK // step)
        doc_hi = max(doc_lo + 1, int(np.searchsorted(offsets[1:][nonempty], budget, side="right")))
        hi = offsets[1:][nonempty[doc_hi - 1]]
        block = hv[lo:hi]
        rel = starts[doc_lo:doc_hi] - lo
        for p in range(0, num_perm, step):
            phv = _permute(block, a[p : p + step], b[p : p + step], scheme)
            out[nonempty[doc_lo:doc_hi], p : p + step] = np.minimum.reduceat(phv, rel, axis=1).T
        doc_lo = doc_hi
    return out


def minhash(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """Signatures of already-hashed shingles (uint64, ``offsets`` per document) under
    datasketch's ``affine64`` scheme: ``min over shingles of a*fmix64(h)+b mod 2^64``;
    an empty document gives all ``2^64-1``."""
    return _minhash(np.asarray(hashes, np.uint64), np.asarray(offsets, np.int64), num_perm, seed, "affine64")


def signatures(
    texts, ngram: int = 5, num_perm: int = 128, seed: int = 1, normalize: bool = True, cjk: bool | None = None
) -> np.ndarray:
    """Fast MinHash signatures of a batch, uint64 (n_docs, num_perm): ``shingle_hashes``
    (xxh3-64 based) then ``minhash`` (datasketch ``affine64`` permutations)."""
    hv, offsets = shingle_hashes(texts, ngram, normalize, cjk)
    return _minhash(hv, offsets, num_perm, seed, "affine64")


def _sha1(s: str, width: int) -> int:
    d = hashlib.sha1(s.encode("utf8")).digest()
    return int.from_bytes(d[: width // 8], "little")


def datasketch_signatures(
    shingle_lists, num_perm: int = 128, seed: int = 1, scheme: str = "affine32"
) -> np.ndarray:
    """Signatures equal to ``datasketch.MinHash(num_perm, seed, scheme=scheme)`` after
    ``update(s.encode('utf8'))`` for every shingle ``s`` of each list: uint32 for
    ``affine32`` (datasketch 2.0's default), uint64 for ``legacy`` and ``affine64``
    (``sha1_hash64``). An empty list gives datasketch's empty signature (all max hash).
    ``shingle_lists`` may be a list of lists of str or an Arrow list<string> array."""
    if hasattr(shingle_lists, "to_pylist"):
        shingle_lists = shingle_lists.to_pylist()
    shingle_lists = [s or [] for s in shingle_lists]
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}")
    width = 64 if scheme == "affine64" else 32
    cache: dict[str, int] = {}
    flat = [s for doc in shingle_lists for s in doc]
    hashes = (cache[s] if s in cache else cache.setdefault(s, _sha1(s, width)) for s in flat)
    hv = np.fromiter(hashes, dtype=np.uint64, count=len(flat))
    offsets = np.zeros(len(shingle_lists) + 1, np.int64)
    np.cumsum([len(d) for d in shingle_lists], out=offsets[1:])
    return _minhash(hv, offsets, num_perm, seed, scheme)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Estimated Jaccard similarity: the fraction of equal signature values (row-wise)."""
    eq = np.asarray(sig_a) == np.asarray(sig_b)
    return eq.mean(axis=-1)


def _fp(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)[0]


def _fn(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)[0]


@lru_cache(maxsize=256)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` minimising ``fp_weight * P(false positive) + fn_weight * P(false
    negative)`` over ``bands * rows <= num_perm``: the same search and the same numerical
    integrals as ``datasketch.lsh._optimal_param`` (first minimum in ``(b, r)`` order)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be in [0, 1]")
    if num_perm < 1:
        raise ValueError("num_perm must be positive")
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, int(num_perm / b) + 1):
            error = _fp(threshold, b, r) * fp_weight + _fn(threshold, b, r) * fn_weight
            if error < best:
                best, opt = error, (b, r)
    return opt


_BAND_MUL = np.uint64(0x9E3779B97F4A7C15)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 (n_docs, bands): band ``j`` of a document hashes its values
    ``sigs[:, j*rows:(j+1)*rows]`` (as uint64) and ``j`` itself:
    ``k = fmix64(j + 1)``, then ``k = fmix64(k * K ^ v)`` per value (wrapping, ``K`` odd).
    Pure numpy, so equal in every process; equal band values give equal keys."""
    sigs = np.asarray(sigs)
    if sigs.ndim != 2:
        raise ValueError("signatures must be 2-D (n_docs, num_perm)")
    if bands < 1 or rows < 1 or bands * rows > sigs.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} must be in [1, num_perm={sigs.shape[1]}]")
    v = sigs[:, : bands * rows].astype(np.uint64).reshape(len(sigs), bands, rows)
    keys = np.broadcast_to(fmix64(np.arange(1, bands + 1, dtype=np.uint64)), (len(sigs), bands))
    with np.errstate(over="ignore"):
        for r in range(rows):
            keys = fmix64((keys * _BAND_MUL) ^ v[:, :, r])
    return np.ascontiguousarray(keys)
