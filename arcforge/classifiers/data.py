"""Labelled examples for training: read with the runtime's ``io.read``, split by a hash.

Reading goes through ``io.read`` so training data can be anything a pipeline reads
(JSONL plain or compressed, Parquet, CSV, local or ``s3://``) with the same handling
of bad rows: they are counted, by reason, in the card instead of failing the run. A
file the reader reports as damaged fails training, since the fingerprint would name
bytes the model never saw.

The held-out split is ``blake2b(text, key=seed) < holdout``: it depends on the text
and the seed only, not on file order or partitioning, and copies of one text always
land on the same side (no leakage of duplicates into the metrics).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from arcforge.classifiers.card import sha256_uri
from arcforge.classifiers.spec import DataSpec, canonical_label, read_params
from arcforge.runtime import storage
from arcforge.runtime.stage import TaskContext
from arcforge.runtime.yamlconf import ConfigError


@dataclass
class Labelled:
    texts: list[str]
    labels: list[str]  # canonical_label of each row's label
    sources: list[dict[str, Any]] = field(default_factory=list)  # file, sha256, bytes, rows
    skipped: dict[str, int] = field(default_factory=dict)  # rows not used, by reason

    @property
    def fingerprint(self) -> str:
        """sha256 over the per-file sha256s, in file order: the bytes the model learned from."""
        h = hashlib.sha256()
        for s in self.sources:
            h.update(f"{s['sha256']}\n".encode())
        return f"sha256:{h.hexdigest()}"


def read_labelled(files: list[str], spec: DataSpec, config_path: str) -> Labelled:
    """Every row's text and label from ``files`` (each read on its own, so a JSONL file
    and a Parquet file may be mixed); rows without a label are skipped and counted."""
    from arcforge.runtime.io.read import read

    params = read_params(spec)
    out = Labelled([], [])
    skipped: Counter[str] = Counter()
    for uri in files:
        fs, path = storage.filesystem(uri)
        ctx = TaskContext()
        rows = 0
        for part in read(path, fs, params, ctx):
            if part.rejected is not None and part.rejected.num_rows:
                skipped.update(f"rejected.{r}" for r in part.rejected.column("reason").to_pylist())
            kept = part.kept if isinstance(part.kept, pa.Table) else pa.Table.from_batches([part.kept])
            for text, label in zip(kept.column("text").to_pylist(), kept.column(spec.label_key).to_pylist()):
                rows += 1
                if label is None or (isinstance(label, float) and np.isnan(label)):
                    skipped["null_label"] += 1
                    continue
                out.texts.append(text)
                out.labels.append(canonical_label(label))
        if ctx.errors:
            raise ConfigError(f"{config_path}: data.files: {uri} is damaged ({' '.join(ctx.errors[0].split())[:300]})")
        digest, size = sha256_uri(uri)
        out.sources.append({"file": uri, "sha256": digest, "bytes": size, "rows": rows})
    out.skipped = dict(sorted(skipped.items()))
    return out


def holdout_mask(texts: list[str], holdout: float, seed: int) -> np.ndarray:
    """True for held-out rows: the first 8 bytes of blake2b(text, key=seed) as a fraction
    of 2**64, below ``holdout``."""
    key = str(seed).encode()
    cut = int(holdout * 2**64)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest(), "little") < cut
         for t in texts),
        bool,
        count=len(texts),
    )
