"""``tokenize.train_spm``: train arcforge's sentencepiece tokenizer as an artifact stage.

It trains on a seeded sample of its input datasets and writes, beside each other in the
stage directory::

    tokenizer.model            the sentencepiece model
    tokenizer.json             arcforge's metadata: vocab size, special-token ids,
                               the sample it was trained on, sha256 of the model
                               (not Hugging Face's tokenizer.json format)
    tokenizer_metadata.json    megatron-core's metadata, so that
                               ``MegatronTokenizer.from_pretrained(<dir>/tokenizer.model)``
                               loads it with the same eod and pad ids

The tokenizer itself (loading, encoding, the fixed special-token layout) is
``arcforge.tokenize.spm``; this module samples, trains, checks the layout and round trip,
and writes the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from arcforge.runtime import storage
from arcforge.runtime.dataset import DatasetRef, read_manifest
from arcforge.runtime.stage import ArtifactContext, ArtifactStage, Resources, StageParams
from arcforge.tokenize.spm import (
    BOS_ID,
    EOD_ID,
    FORMAT,
    MEGATRON_META_FILE,
    META_FILE,
    MODEL_FILE,
    NUM_SPECIAL,
    PAD_ID,
    SPECIALS,
    UNK_ID,
    Tokenizer,
    megatron_metadata,
    token_dtype,
)



class TrainSpmParams(StageParams):
    vocab_size: int = Field(151552, ge=NUM_SPECIAL + 256 + 16, description="151,552 for GLM-4.5; 2-8k for proxies")
    model_type: Literal["bpe", "unigram"] = "bpe"
    sample_docs: int = Field(1_000_000, ge=1, description="at most this many documents in the sample")
    sample_chars: int = Field(500_000_000, ge=1000, description="stop sampling past this many characters")
    chunk_chars: int = Field(4096, ge=64, description="documents are cut into training sentences of at most this size")
    seed: int = 0
    character_coverage: float = Field(0.9995, gt=0.0, le=1.0)
    split_by_whitespace: bool = True
    max_piece_length: int = Field(16, ge=1, le=64)
    user_symbols: tuple[str, ...] = ("\n", "\t")
    text_column: str = "text"
    num_threads: int = Field(0, ge=0, description="training threads; 0 = every CPU")
    verify_docs: int = Field(200, ge=0, description="sampled documents whose exact round trip is checked")

    @model_validator(mode="after")
    def _symbols(self) -> TrainSpmParams:
        taken = {s.token for s in SPECIALS}
        for sym in self.user_symbols:
            if not sym or sym in taken:
                raise ValueError(f"user_symbols: {sym!r} is empty or a special token")
        return self


def _doc_weight(seed: int, doc_id: str) -> float:
    h = hashlib.blake2b(f"{seed}\x00{doc_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


@dataclass
class Sample:
    texts: list[str]
    docs: int
    chars: int
    sources: dict[str, int]
    inputs: list[dict[str, Any]]
    rate: float
    parts_read: int


def sample_documents(inputs: list[DatasetRef], params: TrainSpmParams) -> Sample:
    """A seeded, reproducible sample: parts in a seeded order, documents kept by a hash of
    (seed, id) at the rate that yields ``sample_docs``, stopping at ``sample_chars``."""
    parts: list[tuple[DatasetRef, str]] = []
    described = []
    total = 0
    for ref in inputs:
        manifest = read_manifest(ref)
        if manifest is None:
            raise FileNotFoundError(f"{ref.uri}: input is not committed")
        described.append(
            # the stage, not its URI: the same input in another folder gives the same tokenizer bytes
            {"stage": manifest.get("stage"), "fingerprint": manifest["fingerprint"], "rows": manifest["rows"]}
        )
        total += manifest["rows"]
        parts += [(ref, p["name"]) for p in manifest["parts"] if p["rows"]]
    random.Random(params.seed).shuffle(parts)
    rate = min(1.0, params.sample_docs / max(total, 1))
    texts: list[str] = []
    sources: Counter[str] = Counter()
    chars = read = 0
    for ref, name in parts:
        if len(texts) >= params.sample_docs or chars >= params.sample_chars:
            break
        fs, base = ref.fs()
        path = storage.join(base, name)
        import pyarrow.parquet as pq

        with fs.open_input_file(path) as f:
            names = pq.read_schema(f).names
        cols = [c for c in ("id", params.text_column, "source") if c in names]
        if params.text_column not in cols:
            raise ValueError(f"{ref.uri}: no column {params.text_column!r} to train on")
        table = storage.read_parquet(fs, path, cols)
        read += 1
        ids = table.column("id").to_pylist() if "id" in cols else [f"{name}:{i}" for i in range(table.num_rows)]
        srcs = table.column("source").to_pylist() if "source" in cols else [None] * table.num_rows
        for doc_id, text, src in zip(ids, table.column(params.text_column).to_pylist(), srcs):
            if not text or (rate < 1.0 and _doc_weight(params.seed, str(doc_id)) >= rate):
                continue
            texts.append(text)
            sources[str(src)] += 1
            chars += len(text)
            if len(texts) >= params.sample_docs or chars >= params.sample_chars:
                break
    return Sample(texts, len(texts), chars, dict(sorted(sources.items())), described, rate, read)


def training_chunks(texts: Iterable[str], chunk_chars: int) -> Iterator[str]:
    """Cut documents into sentences sentencepiece accepts (it skips longer ones), at a
    newline or space near the limit where there is one."""
    for text in texts:
        pos = 0
        while len(text) - pos > chunk_chars:
            end = pos + chunk_chars
            cut = max(text.rfind("\n", pos + chunk_chars // 2, end), text.rfind(" ", pos + chunk_chars // 2, end))
            cut = cut + 1 if cut > pos else end
            yield text[pos:cut]
            pos = cut
        if pos < len(text):
            yield text[pos:]


def trainer_options(params: TrainSpmParams) -> dict[str, Any]:
    """Every sentencepiece trainer option that decides the model (recorded in the metadata)."""
    controls = [s.token for s in SPECIALS if s.id > PAD_ID]
    return {
        "model_type": params.model_type,
        "vocab_size": params.vocab_size,
        "character_coverage": params.character_coverage,
        "normalization_rule_name": "identity",
        "byte_fallback": True,
        "split_digits": True,
        "split_by_whitespace": params.split_by_whitespace,
        "split_by_unicode_script": True,
        "allow_whitespace_only_pieces": True,
        "remove_extra_whitespaces": False,
        "add_dummy_prefix": False,
        "max_sentencepiece_length": params.max_piece_length,
        "max_sentence_length": params.chunk_chars * 4 + 16,  # bytes; chunks never exceed it
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOD_ID,
        "pad_id": PAD_ID,
        "unk_piece": SPECIALS[UNK_ID].token,
        "bos_piece": SPECIALS[BOS_ID].token,
        "eos_piece": SPECIALS[EOD_ID].token,
        "pad_piece": SPECIALS[PAD_ID].token,
        "control_symbols": controls,
        "user_defined_symbols": list(params.user_symbols),
        "input_sentence_size": 0,
        "shuffle_input_sentence": False,
        "hard_vocab_limit": True,
    }


def train_model(texts: Iterable[str], params: TrainSpmParams) -> bytes:
    """Train and return the serialized model (nothing touches disk)."""
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_chunks(texts, params.chunk_chars),
            model_writer=model,
            num_threads=params.num_threads or os.cpu_count() or 1,
            minloglevel=2,
            **trainer_options(params),
        )
    except RuntimeError as exc:
        msg = str(exc)
        if "Vocabulary size" in msg or "vocab_size" in msg:
            raise ValueError(
                f"tokenize.train_spm: vocab_size={params.vocab_size} is too large for the sample "
                f"({msg.strip()}); lower vocab_size or raise sample_docs/sample_chars"
            ) from None
        raise
    return model.getvalue()


def check_layout(sp: Any, params: TrainSpmParams) -> dict[str, int]:
    """The ids every consumer relies on are where they are documented, or training fails."""
    for s in SPECIALS:
        if sp.id_to_piece(s.id) != s.token or (s.id > UNK_ID and not sp.is_control(s.id)):
            raise RuntimeError(f"tokenizer layout: id {s.id} is {sp.id_to_piece(s.id)!r}, expected control {s.token!r}")
    users = {}
    for i, sym in enumerate(params.user_symbols):
        if sp.id_to_piece(NUM_SPECIAL + i) != sym:
            raise RuntimeError(f"tokenizer layout: id {NUM_SPECIAL + i} is not the user symbol {sym!r}")
        users[sym] = NUM_SPECIAL + i
    first_byte = NUM_SPECIAL + len(params.user_symbols)
    if sp.id_to_piece(first_byte) != "<0x00>" or sp.id_to_piece(first_byte + 255) != "<0xFF>":
        raise RuntimeError(f"tokenizer layout: byte pieces do not start at id {first_byte}")
    return users


def build_tokenizer(params: TrainSpmParams, ctx: ArtifactContext) -> dict[str, Any]:
    import sentencepiece as spm

    sample = sample_documents(ctx.inputs, params)
    if not sample.texts:
        raise ValueError("tokenize.train_spm: the inputs hold no text to train on")
    model = train_model(sample.texts, params)
    sp = spm.SentencePieceProcessor(model_proto=model)
    users = check_layout(sp, params)
    ctx.stats.update("train_spm.sample_docs", sample.docs)
    ctx.stats.update("train_spm.sample_chars", sample.chars)
    model_sha = hashlib.sha256(model).hexdigest()
    meta = {
        "format": FORMAT,
        "model_file": MODEL_FILE,
        "model_sha256": model_sha,
        "model_type": params.model_type,
        "vocab_size": sp.get_piece_size(),
        "token_dtype": np.dtype(token_dtype(sp.get_piece_size())).name,
        "eod_id": EOD_ID,
        "pad_id": PAD_ID,
        "bos_id": BOS_ID,
        "unk_id": UNK_ID,
        "special_tokens": [{"name": s.name, "token": s.token, "id": s.id} for s in SPECIALS],
        "user_symbols": users,
        "first_byte_id": NUM_SPECIAL + len(params.user_symbols),
        "trainer": trainer_options(params),
        "sample": {
            "docs": sample.docs,
            "chars": sample.chars,
            "sources": sample.sources,
            "inputs": sample.inputs,
            "rate": sample.rate,
            "parts_read": sample.parts_read,
            "seed": params.seed,
        },
        "sentencepiece_version": spm.__version__,
    }
    fs, base = ctx.output.fs()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        with open(local, "wb") as f:
            f.write(model)
        tok = Tokenizer(local, meta)
        rng = random.Random(params.seed)
        check = rng.sample(sample.texts, min(params.verify_docs, len(sample.texts)))
        for i, text in enumerate(check):
            if tok.decode(tok.encode(text)) != text:
                raise RuntimeError(f"tokenize.train_spm: sampled document {i} does not round-trip exactly")
    meta["verified_roundtrip_docs"] = len(check)
    files = []
    for name, data in (
        (MODEL_FILE, model),
        (META_FILE, json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False).encode()),
        (MEGATRON_META_FILE, json.dumps(megatron_metadata(), indent=1).encode()),
    ):
        storage.write_bytes_atomic(fs, storage.join(base, name), data)
        files.append({"name": name, "bytes": len(data), "sha256": storage.sha256(data)})
    return {
        "files": files,
        "meta": {k: meta[k] for k in ("model_sha256", "vocab_size", "token_dtype", "eod_id", "pad_id", "sample")},
    }


TRAIN_SPM = ArtifactStage(
    "tokenize.train_spm",
    TrainSpmParams,
    build_tokenizer,
    resources=Resources(cpus=1),
    engine="local",
    doc="sentencepiece BPE on a seeded sample of the inputs; fixed special-token ids",
)

__all__ = [
    "TRAIN_SPM",
    "TrainSpmParams",
    "build_tokenizer",
    "sample_documents",
    "train_model",
    "training_chunks",
]
