"""Encode documents into Megatron indexed datasets (``.bin``/``.idx``).

``tokenize.megatron_shards`` is a partition stage: each input Parquet part becomes one
shard set per source (and per quality bucket when the data has a ``bucket`` column),
written by megatron-core's own ``IndexedDatasetBuilder``::

    <stage>/shards/<source>[__<bucket>]/part-00042.bin
    <stage>/shards/<source>[__<bucket>]/part-00042.idx
    <stage>/part-00042.parquet      one row per group written (counts, prefix)

Every document ends with the tokenizer's end-of-document id. Without packing, one
document is one Megatron document (a document over ``max_doc_tokens`` is cut into
pieces, each its own Megatron document, and only the last piece carries the
end-of-document token). With ``pack_seq_length``, documents are best-fit packed
(:mod:`arcforge.tokenize.packing`) and each packed sequence is one Megatron document
of exactly that length. Token ids are uint16 when the vocabulary fits, else int32. With
``fim``, documents of the named sources are fill-in-the-middle transformed first
(:mod:`arcforge.tokenize.fim`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from arcforge.runtime import storage
from arcforge.runtime.stage import Output, PartitionStage, Resources, StageParams, TaskContext
from arcforge.tokenize.fim import FimParams, encode_with_fim
from arcforge.tokenize.packing import pack_documents, split_document

SHARD_DIR = "shards"

SHARD_SCHEMA = pa.schema(
    [
        pa.field("group", pa.string(), nullable=False),  # "<source>[__<bucket>]", the shard folder
        pa.field("source", pa.string(), nullable=False),
        pa.field("bucket", pa.string()),
        pa.field("prefix", pa.string(), nullable=False),  # relative to the stage dir, no extension
        pa.field("documents", pa.int64(), nullable=False),  # input documents encoded
        pa.field("sequences", pa.int64(), nullable=False),  # Megatron documents written
        pa.field("tokens", pa.int64(), nullable=False),  # every token in the .bin (eod and pad included)
        pa.field("pad_tokens", pa.int64(), nullable=False),
        pa.field("split_docs", pa.int64(), nullable=False),  # documents cut into pieces
        pa.field("pack_seq_length", pa.int64()),  # null: whole documents
        pa.field("dtype", pa.string(), nullable=False),
    ]
)


class ShardParams(StageParams):
    text_column: str = "text"
    source_column: str = "source"
    bucket_column: str = "bucket"  # used when the input has it
    default_source: str = "unknown"  # for rows whose source is null
    max_doc_tokens: int | None = Field(None, ge=16, description="longer documents are cut into pieces")
    pack_seq_length: int | None = Field(None, ge=16, description="best-fit pack into sequences of this length")
    id_column: str = "id"  # the key of FIM's draw (the row number within the part when absent)
    fim: FimParams | None = Field(None, description="fill-in-the-middle for code sources (arcforge.tokenize.fim)")
    batch_docs: int = Field(256, ge=1, description="documents per encode call")
    num_threads: int = Field(1, ge=1, description="sentencepiece threads per task")

    @model_validator(mode="after")
    def _one_way_to_cut(self) -> ShardParams:
        if self.max_doc_tokens is not None and self.pack_seq_length is not None:
            raise ValueError("set max_doc_tokens or pack_seq_length, not both (packing cuts at pack_seq_length)")
        return self


def load_tokenizer(params: ShardParams, artifacts: dict[str, str]) -> Any:
    """Per-worker setup: the tokenizer named under ``artifacts: {tokenizer: <stage>}``."""
    if "tokenizer" not in artifacts:
        raise ValueError("tokenize.megatron_shards needs `artifacts: {tokenizer: <a tokenize.train_spm stage>}`")
    from arcforge.tokenize.spm import Tokenizer

    return Tokenizer.load(artifacts["tokenizer"])


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _safe(name: str) -> str:
    safe = _SAFE.sub("_", name)[:80]
    if safe != name:  # keep distinct names distinct after escaping
        safe += "-" + hashlib.blake2b(name.encode(), digest_size=3).hexdigest()
    return safe


def group_name(source: str, bucket: str | None) -> str:
    return _safe(source) + (f"__{_safe(bucket)}" if bucket not in (None, "") else "")


def shard_prefix(group: str, partition: int) -> str:
    return f"{SHARD_DIR}/{group}/part-{partition:05d}"


def _column(table: pa.Table, name: str) -> list[Any] | None:
    return table.column(name).to_pylist() if name in table.column_names else None


def megatron_builder() -> Any:
    """megatron-core's ``IndexedDatasetBuilder``, imported quietly (without Transformer
    Engine or Apex, megatron-core warns on import; a worker would print that per process)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    return IndexedDatasetBuilder


def write_group(
    texts: list[str], tokenizer: Any, params: ShardParams, bin_path: str, idx_path: str, stats: Any,
    keys: list[str] | None = None,
) -> dict[str, int]:
    """Encode one group's documents and write them with megatron-core's builder; with
    ``keys`` (the documents' ids), FIM-transform them by ``params.fim``."""
    IndexedDatasetBuilder = megatron_builder()

    dtype = tokenizer.dtype
    eod = tokenizer.eod_id
    builder = IndexedDatasetBuilder(bin_path, dtype=dtype)
    counts = {"documents": 0, "sequences": 0, "tokens": 0, "pad_tokens": 0, "split_docs": 0, "empty_docs": 0,
              "fim_psm": 0, "fim_spm": 0}
    packed: list[np.ndarray] = []
    t0 = time.process_time()
    for start in range(0, len(texts), params.batch_docs):
        batch = texts[start : start + params.batch_docs]
        if keys is not None and params.fim is not None:  # keys come only for the sources fim names
            encoded, fim = encode_with_fim(batch, keys[start : start + params.batch_docs], tokenizer, params.fim,
                                           params.num_threads)
            counts["fim_psm"] += fim["psm"]
            counts["fim_spm"] += fim["spm"]
        else:
            encoded = tokenizer.encode_batch(batch, num_threads=params.num_threads)
        for ids in encoded:
            if not ids:
                counts["empty_docs"] += 1
                continue
            ids.append(eod)
            counts["documents"] += 1
            if params.pack_seq_length is not None:
                packed.append(np.asarray(ids, dtype=dtype))
            elif params.max_doc_tokens is not None and len(ids) > params.max_doc_tokens:
                counts["split_docs"] += 1
                for piece in split_document(np.asarray(ids, dtype=dtype), params.max_doc_tokens):
                    builder.add_document(piece, [len(piece)])
                    counts["sequences"] += 1
                    counts["tokens"] += len(piece)
            else:
                builder.add_document(ids, [len(ids)])
                counts["sequences"] += 1
                counts["tokens"] += len(ids)
    if params.pack_seq_length is not None:
        seqs, pst = pack_documents(packed, params.pack_seq_length, tokenizer.pad_id, dtype=dtype)
        for seq in seqs:
            builder.add_document(seq, [len(seq)])
        counts["sequences"] += pst.sequences
        counts["tokens"] += pst.capacity
        counts["pad_tokens"] += pst.pad_tokens
        counts["split_docs"] += pst.split_docs
    builder.finalize(idx_path)
    stats.update("shard.encode_cpu_seconds", time.process_time() - t0)
    return counts


def write_shards(path: str, fs: Any, params: ShardParams, ctx: TaskContext) -> Iterator[Output]:
    """One input part -> one shard set per (source, bucket) and one row describing each."""
    tokenizer = ctx.state
    with fs.open_input_file(path) as f:
        names = pq.read_schema(f).names
    if params.text_column not in names:
        raise ValueError(f"{path}: no column {params.text_column!r}")
    cols = [c for c in (params.text_column, params.source_column, params.bucket_column, params.id_column) if c in names]
    table = storage.read_parquet(fs, path, cols)
    texts = table.column(params.text_column).to_pylist()
    sources = _column(table, params.source_column) or [None] * len(texts)
    buckets = _column(table, params.bucket_column) or [None] * len(texts)
    ids = _column(table, params.id_column) or [f"{ctx.partition}:{i}" for i in range(len(texts))]
    groups: dict[tuple[str, str | None], list[str]] = {}
    keys: dict[tuple[str, str | None], list[str]] = {}
    for text, src, bucket, doc in zip(texts, sources, buckets, ids):
        key = (str(src) if src is not None else params.default_source, str(bucket) if bucket is not None else None)
        groups.setdefault(key, []).append(text or "")
        keys.setdefault(key, []).append(str(doc))
    rows = []
    dtype_name = np.dtype(tokenizer.dtype).name
    tmp = tempfile.mkdtemp(prefix="arcforge-shards-")
    try:
        for (source, bucket), group_texts in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            group = group_name(source, bucket)
            prefix = shard_prefix(group, ctx.partition)
            local = os.path.join(tmp, group)
            fim = params.fim is not None and (params.fim.sources is None or source in params.fim.sources)
            counts = write_group(group_texts, tokenizer, params, local + ".bin", local + ".idx", ctx.stats,
                                 keys[(source, bucket)] if fim else None)
            ctx.publish_file(local + ".bin", prefix + ".bin")
            ctx.publish_file(local + ".idx", prefix + ".idx")
            for k in ("documents", "sequences", "tokens", "pad_tokens", "split_docs", "empty_docs"):
                ctx.stats.update(f"shard.{k}", counts[k])
            for k in ("fim_psm", "fim_spm"):
                if counts[k]:
                    ctx.stats.update(f"shard.{k}", counts[k])
            rows.append(
                {
                    "group": group,
                    "source": source,
                    "bucket": bucket,
                    "prefix": prefix,
                    "documents": counts["documents"],
                    "sequences": counts["sequences"],
                    "tokens": counts["tokens"],
                    "pad_tokens": counts["pad_tokens"],
                    "split_docs": counts["split_docs"],
                    "pack_seq_length": params.pack_seq_length,
                    "dtype": dtype_name,
                }
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    yield Output(kept=pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))


MEGATRON_SHARDS = PartitionStage(
    "tokenize.megatron_shards",
    ShardParams,
    write_shards,
    schema=SHARD_SCHEMA,
    setup=load_tokenizer,
    resources=Resources(cpus=1),
    engine="ray",
    doc="Megatron .bin/.idx per source and bucket per partition, optionally best-fit packed",
)

__all__ = ["MEGATRON_SHARDS", "SHARD_SCHEMA", "ShardParams", "group_name", "shard_prefix", "write_group", "write_shards"]
