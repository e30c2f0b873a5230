"""The numeric parts of ``dedup.semantic`` (SemDeDup), free of any engine: the encoder
(loaded once per worker process), int16 embeddings, the id-hash sample, k-means and the
blocked pairwise rule. ``arcforge.dedup.semantic`` wires them into a global stage.

Embeddings are L2-normalised MiniLM vectors quantised to int16 (``round(x * 32767)``,
768 bytes per document, stored as Arrow ``binary``: sortable and supported by Spark and
Ray, unlike a list column). Every dot product of two such vectors is a sum of 384 integer
products below 2**30, so it is exact in float64 whatever the BLAS, the block shape or the
summation order: cosines (``q_a . q_b / (|q_a| |q_b|)``) are the same floats on every
engine, for every chunking, blocked or not. The quantisation moves a cosine by about 1e-5.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

DIM = 384
SCALE = 32767.0
EMB_BYTES = DIM * 2  # int16
SKLEARN_BELOW = 2000  # samples smaller than this: sklearn KMeans (Lloyd), else faiss
_ENCODERS: dict[tuple[str, str], Any] = {}  # (model path, device) -> encoder, one load per worker process


# --- the model -------------------------------------------------------------------------


def default_model() -> str:
    from arcforge.classifiers.embedding_model import encoder_path

    return encoder_path()


def check_model_dir(value: str) -> str:
    """A sentence-transformers directory (``modules.json`` or ``config.json`` and a weights
    file), made absolute; raises ValueError (one line) otherwise. Reads no weights."""
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"no such model directory: {value}")
    if not path.is_dir():
        raise ValueError(f"{value} is not a directory (expected a sentence-transformers model directory)")
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ValueError(f"{value} has neither modules.json nor config.json: not a sentence-transformers model")
    if not any((path / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        raise ValueError(f"{value} has no model.safetensors or pytorch_model.bin")
    return str(path.resolve())


def load_encoder(model: str, device: str) -> Any:
    """The encoder for ``model`` on ``device`` (auto|cpu|cuda), cached per process."""
    from arcforge.classifiers.embedding_model import resolve_device

    key = (model, resolve_device(device))
    if key not in _ENCODERS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # load by path, never ask the hub
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()
        enc = SentenceTransformer(model, device=key[1])
        get_dim = getattr(enc, "get_embedding_dimension", None) or enc.get_sentence_embedding_dimension
        dim = get_dim()
        if dim != DIM:
            raise ValueError(f"dedup.semantic: {model} gives {dim}-dimensional embeddings, expected {DIM}")
        _ENCODERS[key] = enc
    return _ENCODERS[key]


def embed(texts: list[str], model: str, device: str, batch_size: int) -> np.ndarray:
    """L2-normalised float32 embeddings (n, 384)."""
    if not texts:
        return np.zeros((0, DIM), np.float32)
    enc = load_encoder(model, device)
    out = enc.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(out, np.float32)


# --- int16 embeddings as Arrow binary ----------------------------------------------------


def quantise(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, np.float64) * SCALE), -SCALE, SCALE).astype(np.int16)


def to_binary(q: np.ndarray) -> pa.Array:
    q = np.ascontiguousarray(q, dtype="<i2")
    data = pa.py_buffer(q.tobytes())
    offsets = pa.py_buffer(np.arange(len(q) + 1, dtype=np.int32) * EMB_BYTES)
    return pa.Array.from_buffers(pa.binary(), len(q), [None, offsets, data])


def from_binary(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, 384) int16 from a binary column of 768-byte values."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], pa.binary())
    n = len(col)
    if n == 0:
        return np.zeros((0, DIM), np.int16)
    if col.type != pa.binary():
        col = col.cast(pa.binary())
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + n + 1]
    if col.null_count or not np.all(np.diff(offsets) == EMB_BYTES):
        raise ValueError(f"dedup.semantic: embeddings must be {EMB_BYTES} bytes each")
    data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return data.view("<i2").reshape(n, DIM).astype(np.int16)


def unit(q: np.ndarray) -> np.ndarray:
    """float64 unit vectors of int16 embeddings (a zero vector stays zero)."""
    x = q.astype(np.float64)
    norms = np.sqrt((x * x).sum(axis=1))
    norms[norms == 0] = 1.0
    return x / norms[:, None]


# --- the deterministic sample ---------------------------------------------------------------


def sample_keys(ids: list[str | None]) -> np.ndarray:
    """int64 >= 0 per id: the first 8 bytes of blake2b(id) >> 1. The sample is the rows of
    smallest key, so it depends on the ids only, not on the partitioning or the engine."""
    out = np.empty(len(ids), np.int64)
    for i, s in enumerate(ids):
        d = hashlib.blake2b((s or "").encode(), digest_size=8).digest()
        out[i] = int.from_bytes(d, "big") >> 1
    return out


def sample_cutoff(n: int, sample_size: int) -> int | None:
    """A key bound that keeps about 1.25 * sample_size of n rows (a margin, trimmed to the
    sample_size smallest keys on the driver); None keeps every row."""
    if n <= sample_size:
        return None
    frac = min(1.0, 1.25 * sample_size / n + 64 / n)
    return int(frac * (1 << 63)) if frac < 1.0 else None


def take_sample(keys: np.ndarray, ids: list[str], sample_size: int) -> np.ndarray:
    """Indices of the ``sample_size`` rows of smallest (key, id)."""
    order = sorted(range(len(keys)), key=lambda i: (int(keys[i]), ids[i]))
    return np.asarray(order[:sample_size], np.int64)


# --- k-means ---------------------------------------------------------------------------------


def n_clusters_for(n: int, sample_rows: int, n_clusters: int | str) -> int:
    """``auto``: round(sqrt(n / 2)), at most sample_rows // 40 (faiss wants about 40 points per
    centroid) and 50,000; an int is taken as given, at most sample_rows. Always >= 1."""
    if sample_rows <= 0:
        return 1
    if n_clusters == "auto":
        k = min(round(math.sqrt(n / 2)), sample_rows // 40, 50_000)
    else:
        k = min(int(n_clusters), sample_rows)
    return max(1, int(k))


def fit_centroids(sample: np.ndarray, k: int, seed: int, niter: int = 20) -> tuple[np.ndarray, str]:
    """Unit float64 centroids (k, 384) of int16 embeddings, and the method used: sklearn's
    KMeans (Lloyd, one init, ``random_state=seed``) below SKLEARN_BELOW rows, else
    ``faiss.Kmeans(spherical=True, seed=seed)``. Deterministic on one machine."""
    x = unit(sample)
    k = max(1, min(k, len(x)))
    if k == 1:
        c = x.mean(axis=0, keepdims=True)
        method = "mean"
    elif len(x) < SKLEARN_BELOW:
        from sklearn.cluster import KMeans

        c = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed).fit(x).cluster_centers_
        method = "sklearn.KMeans"
    else:
        import faiss

        km = faiss.Kmeans(DIM, k, niter=niter, seed=seed, spherical=True, verbose=False, max_points_per_centroid=1 << 30)
        km.train(np.ascontiguousarray(x, np.float32))
        c = km.centroids.astype(np.float64)
        method = "faiss.Kmeans"
    norms = np.sqrt((c * c).sum(axis=1))
    norms[norms == 0] = 1.0
    return c / norms[:, None], method


def assign(q: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (largest cosine; the smaller index on a tie) of each row, int64.
    float64 throughout, so a chunk boundary cannot change a row's cluster in practice."""
    if len(q) == 0:
        return np.zeros(0, np.int64)
    return np.argmax(unit(q) @ centroids.T, axis=1).astype(np.int64)


# --- the pairwise rule -----------------------------------------------------------------------


def earlier_max(q: np.ndarray, block_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """For rows in keep order: each row's largest cosine to an EARLIER row and that row's
    index (NaN and -1 for the first row; the earliest on a tie).

    Memory: a block of B rows against the rows up to its end, B = block_bytes / (8 m), so
    at most ``block_bytes`` of similarities (plus the cluster's own m x 384 float64) are
    held. Exact integer dot products make the result independent of B."""
    m = len(q)
    best = np.full(m, np.nan)
    arg = np.full(m, -1, np.int64)
    if m < 2:
        return best, arg
    x = q.astype(np.float64)
    norms = np.sqrt((x * x).sum(axis=1))
    norms[norms == 0] = 1.0
    rows = max(1, block_bytes // (8 * m))
    for s in range(1, m, rows):
        e = min(m, s + rows)
        sims = np.minimum((x[s:e] @ x[:e].T) / np.outer(norms[s:e], norms[:e]), 1.0)  # a copy: 1, not 1 + 2e-16
        sims[np.arange(e - s)[:, None] <= np.arange(e)[None, :] - s] = -np.inf  # only earlier rows
        a = np.argmax(sims, axis=1)
        arg[s:e] = a
        best[s:e] = sims[np.arange(e - s), a]
    return best, arg


def earlier_max_reference(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rule written plainly, one row at a time (tests)."""
    m = len(q)
    best, arg = np.full(m, np.nan), np.full(m, -1, np.int64)
    x = q.astype(np.float64)
    norms = np.sqrt((x * x).sum(axis=1))
    norms[norms == 0] = 1.0
    for i in range(1, m):
        sims = np.minimum((x[:i] @ x[i]) / (norms[:i] * norms[i]), 1.0)
        arg[i] = int(np.argmax(sims))
        best[i] = sims[arg[i]]
    return best, arg
