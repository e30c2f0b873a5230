"""The model card next to a trained classifier, and the files' identities.

A classifier is only as trustworthy as what it was trained on, so the card written
beside the model names the exact input bytes (sha256 per file and one fingerprint
over all), the label counts, the held-out metrics, the hyperparameters and the
library versions. The inference stages read it back for what the model needs at
scoring time (positive label, text preparation), so a scored column can always be
traced to the data that taught the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from arcforge.runtime import storage
from arcforge.runtime.versions import package_versions

CARD = "model_card.json"
FULL_HASH_BYTES = 64 << 20  # model files up to this size are hashed whole; larger ones are sampled
_SAMPLE = 4 << 20
LIBRARIES = ("arcforge", "fasttext-numpy2-wheel", "scikit-learn", "sentence-transformers", "torch", "numpy", "pyarrow")


def sha256_uri(uri: str) -> tuple[str, int]:
    """sha256 and size of a local or ``s3://`` file, streamed (training data can be large)."""
    fs, path = storage.filesystem(uri)
    h = hashlib.sha256()
    size = 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def model_identity(path: str | os.PathLike[str]) -> str:
    """What the inference stages put into their fingerprint, so retraining a model at the
    same path re-scores: the sha256 of the file, or for files over 64 MiB (a DCLM-size
    fastText model) the sha256 of its size, first and last 4 MiB, which every task
    recomputes when it validates its params (a full hash of gigabytes per task is too slow)."""
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            while chunk := f.read(1 << 20):
                h.update(chunk)
            return f"sha256:{h.hexdigest()}"
        h.update(str(size).encode())
        h.update(f.read(_SAMPLE))
        f.seek(size - _SAMPLE)
        h.update(f.read(_SAMPLE))
    return f"sampled-sha256:{h.hexdigest()}"


def model_dir_identity(directory: str | os.PathLike[str]) -> str:
    """``model_identity`` for a model held as a directory (a sentence-transformers encoder: the
    weights, the tokenizer files, the pooling and module configs, any of which changes the
    embeddings): one sha256 over every file's relative path and identity, in path order.
    Hidden paths (``.git``, huggingface_hub's ``.cache`` download records) are not the model."""
    root = Path(directory)
    h = hashlib.sha256()
    files = sorted((q.relative_to(root), q) for q in root.rglob("*") if q.is_file())
    for rel, f in files:
        if not any(part.startswith(".") for part in rel.parts):
            h.update(f"{rel.as_posix()}\0{model_identity(f)}\n".encode())
    return f"dir-sha256:{h.hexdigest()}"


def pinned_identity(actual: str, pinned: str | None, what: str) -> str:
    """``actual`` (a model's identity), after checking it against the value a config pins, if
    any: a stage scoring with other weights than the config names must not run."""
    if pinned is not None and pinned != actual:
        raise ValueError(f"{what} changed: it is {actual}, the config pins {pinned}")
    return actual


def library_versions() -> dict[str, str | None]:
    return package_versions(LIBRARIES)


def read_card(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The card in ``directory``, None when there is none; a card that is not a JSON
    object is a ValueError (one line), never silently ignored."""
    path = Path(directory) / CARD
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path} is not a JSON object")
    return card


def write_card(directory: str | os.PathLike[str], card: dict[str, Any]) -> Path:
    """Write the card atomically (a reader never sees half a card)."""
    path = Path(directory) / CARD
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
