"""``split``: a fixed, seeded share of the rows by a hash of their key.

An evaluation set must be chosen before any filter sees the data, and the same document
must land on the same side in every run, on every engine, at any partitioning. So the side
of a row depends only on ``blake2b(seed, key)``: the rows whose hash falls below
``fraction`` are the sample. Two stages with the same ``fraction`` and ``seed`` and
opposite ``side`` cut a dataset in two disjoint parts that together hold every row::

    - {name: eval_pool,  uses: split, input: dedup, params: {fraction: 0.05, side: sample}}
    - {name: train_pool, uses: split, input: dedup, params: {fraction: 0.05, side: rest}}

The other side's rows are rejected with ``reason`` (counted and kept in ``rejected/``,
like every drop), so nothing is lost.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from arcforge.runtime.stage import MapStage, Output, Resources, StageParams, TaskContext, split_rejected


class SplitParams(StageParams):
    fraction: float = Field(gt=0, lt=1)  # share of rows in the sample
    seed: int = 0
    side: Literal["sample", "rest"] = "sample"  # which side this stage keeps
    key: str = "id"
    reason: str = Field("other_split", pattern=r"^[A-Za-z0-9_.:-]+$")


def hash_unit(keys: list[str | None], seed: int) -> np.ndarray:
    """A number in [0, 1) per key, from the first 8 bytes of blake2b(seed, key)."""
    salt = f"{seed}\x00".encode()
    out = np.empty(len(keys), dtype=np.float64)
    for i, k in enumerate(keys):
        digest = hashlib.blake2b(salt + ("" if k is None else str(k)).encode("utf-8", "surrogatepass"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def split_rows(batch: pa.RecordBatch, params: SplitParams, ctx: TaskContext) -> Output:
    in_sample = hash_unit(batch.column(params.key).to_pylist(), params.seed) < params.fraction
    keep = in_sample if params.side == "sample" else ~in_sample
    ctx.stats.update(f"split.{params.side}", int(keep.sum()))
    other = "rest" if params.side == "sample" else "sample"
    return split_rejected(batch, [None if k else params.reason for k in keep], [None if k else f"in the {other}" for k in keep])


SPLIT = MapStage(
    "split",
    SplitParams,
    split_rows,
    requires=(),
    reads=lambda params: [params.key],
    resources=Resources(cpus=1),
    engine="local",
    doc="Keep a fixed, seeded share of the rows (or the rest) by a hash of their key.",
)
