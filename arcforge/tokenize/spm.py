"""A sentencepiece BPE tokenizer with GLM-style special tokens at fixed ids.

``tokenize.train_spm`` is an artifact stage: it trains on a seeded sample of its
input datasets and writes, beside each other in the stage directory::

    tokenizer.model            the sentencepiece model
    tokenizer.json             arcforge's metadata: vocab size, special-token ids,
                               the sample it was trained on, sha256 of the model
                               (not Hugging Face's tokenizer.json format)
    tokenizer_metadata.json    megatron-core's metadata, so that
                               ``MegatronTokenizer.from_pretrained(<dir>/tokenizer.model)``
                               loads it with the same eod and pad ids

The model round-trips any text exactly (``decode(encode(x)) == x``): identity
normalisation, no dummy prefix, extra whitespace kept, whitespace-only pieces
allowed, newline and tab as their own pieces, and byte fallback for characters
outside the vocabulary. Special tokens are sentencepiece *control* symbols: text
that merely contains ``<|endoftext|>`` encodes as ordinary pieces (a web page cannot
forge a document boundary); ``encode(..., allow_special=True)`` or ``special_id``
produce the ids, and ``decode`` renders them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from arcforge.runtime import storage
from arcforge.runtime.dataset import DatasetRef, read_manifest
from arcforge.runtime.stage import ArtifactContext, ArtifactStage, Resources, StageParams
from arcforge.runtime.storage import S3Options

MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer.json"
MEGATRON_META_FILE = "tokenizer_metadata.json"
FORMAT = "arcforge.tokenizer/1"


@dataclass(frozen=True)
class Special:
    name: str
    token: str
    id: int
    role: str


# The fixed id layout. Ids 0..31 never move, whatever the vocabulary size; ids 14..31
# are reserved control symbols so that later special tokens keep earlier ids stable.
SPECIALS: tuple[Special, ...] = (
    Special("unk", "<unk>", 0, "unknown (never produced: byte fallback covers every character)"),
    Special("bos", "<s>", 1, "begin of sequence (not added by encode)"),
    Special("eod", "<|endoftext|>", 2, "end of document; sentencepiece's eos, Megatron's eod"),
    Special("pad", "<pad>", 3, "padding of packed sequences; Megatron masks its loss"),
    Special("fim_prefix", "<|fim_prefix|>", 4, "fill-in-the-middle: prefix follows"),
    Special("fim_middle", "<|fim_middle|>", 5, "fill-in-the-middle: middle follows"),
    Special("fim_suffix", "<|fim_suffix|>", 6, "fill-in-the-middle: suffix follows"),
    Special("think", "<think>", 7, "start of a reasoning trace"),
    Special("think_end", "</think>", 8, "end of a reasoning trace"),
    Special("nothink", "/nothink", 9, "asks for an answer without a reasoning trace"),
    Special("system", "<|system|>", 10, "chat role"),
    Special("user", "<|user|>", 11, "chat role"),
    Special("assistant", "<|assistant|>", 12, "chat role"),
    Special("observation", "<|observation|>", 13, "chat role: tool or environment output"),
) + tuple(Special(f"reserved_{i}", f"<|reserved_{i}|>", i, "reserved") for i in range(14, 32))

NUM_SPECIAL = 32
UNK_ID, BOS_ID, EOD_ID, PAD_ID = 0, 1, 2, 3
_BY_NAME = {s.name: s for s in SPECIALS} | {s.token: s for s in SPECIALS} | {"eos": SPECIALS[2], "endoftext": SPECIALS[2]}
_WS_META = "\u2581"  # sentencepiece's whitespace marker; text that contains it is escaped via bytes


def token_dtype(vocab_size: int) -> type[np.number]:
    """uint16 when every id fits (vocab <= 65,536), else int32: megatron-core's own rule
    (``GPTDatasetConfig.token_dtype_code``), so ``--per-dataset-sequences-path`` reads agree."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def default_cache_dir() -> str:
    root = os.environ.get("ARCFORGE_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("arcforge")
    return os.path.join(root, "tokenizers")


# -- the tokenizer --------------------------------------------------------------------------


class Tokenizer:
    """A trained model plus its metadata. Load with ``Tokenizer.load(uri)``."""

    def __init__(self, model_path: str, meta: dict[str, Any] | None = None) -> None:
        import sentencepiece as spm

        self.model_path = model_path
        self.directory = os.path.dirname(os.path.abspath(model_path))
        self.sp = spm.SentencePieceProcessor(model_file=model_path)
        self.meta = meta or {}
        self.vocab_size = self.sp.get_piece_size()
        for s in SPECIALS:
            if self.sp.id_to_piece(s.id) != s.token:
                raise ValueError(f"{model_path}: id {s.id} is {self.sp.id_to_piece(s.id)!r}, expected {s.token!r}")
        self.eod_id, self.pad_id, self.bos_id, self.unk_id = EOD_ID, PAD_ID, BOS_ID, UNK_ID
        self.dtype = token_dtype(self.vocab_size)
        self._meta_bytes = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in _WS_META.encode()]
        self._special_re = re.compile("|".join(re.escape(s.token) for s in sorted(SPECIALS, key=lambda s: -len(s.token))))

    # loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, uri: str, s3: S3Options | None = None, cache_dir: str | None = None) -> Tokenizer:
        """From a tokenizer stage directory (or its ``tokenizer.model``), local or ``s3://``.
        Remote files are copied once into a cache keyed by the model's sha256."""
        if uri.endswith(MODEL_FILE):
            uri = uri[: -len(MODEL_FILE)].rstrip("/")
        fs, base = storage.filesystem(uri, s3)
        meta_path = storage.join(base, META_FILE)
        meta = storage.read_json(fs, meta_path) if storage.exists(fs, meta_path) else {}
        if not storage.is_s3(uri):
            return cls(storage.join(base, MODEL_FILE), meta)
        sha = meta.get("model_sha256") or hashlib.sha256(storage.read_bytes(fs, storage.join(base, MODEL_FILE))).hexdigest()
        local = os.path.join(cache_dir or default_cache_dir(), sha)
        model = os.path.join(local, MODEL_FILE)
        if not (os.path.exists(model) and _sha256_file(model) == sha):
            os.makedirs(local, exist_ok=True)
            for name in (MODEL_FILE, META_FILE, MEGATRON_META_FILE):
                src = storage.join(base, name)
                if storage.exists(fs, src):
                    tmp = tempfile.NamedTemporaryFile(dir=local, delete=False, prefix=".tmp-")
                    with tmp:
                        tmp.write(storage.read_bytes(fs, src))
                    os.replace(tmp.name, os.path.join(local, name))
            if _sha256_file(model) != sha:
                raise ValueError(f"{uri}: {MODEL_FILE} does not match the sha256 in {META_FILE}")
        return cls(model, meta)

    # ids ----------------------------------------------------------------------------------

    def special_id(self, name: str) -> int:
        """The fixed id of a special token, by name (``eod``, ``fim_prefix``...) or text."""
        try:
            return _BY_NAME[name].id
        except KeyError:
            raise KeyError(f"no special token {name!r}; known: {', '.join(s.name for s in SPECIALS[:14])}") from None

    @property
    def special_tokens(self) -> dict[str, int]:
        return {s.token: s.id for s in SPECIALS}

    def is_special(self, token_id: int) -> bool:
        return 0 < token_id < NUM_SPECIAL

    # encode -------------------------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``. Special-token strings in the text are ordinary text unless
        ``allow_special`` (then each becomes its single fixed id)."""
        if allow_special and self._special_re.search(text):
            out: list[int] = []
            pos = 0
            for m in self._special_re.finditer(text):
                out += self._encode_plain(text[pos : m.start()])
                out.append(_BY_NAME[m.group(0)].id)
                pos = m.end()
            return out + self._encode_plain(text[pos:])
        return self._encode_plain(text)

    def _encode_plain(self, text: str) -> list[int]:
        if _WS_META in text:  # sentencepiece would decode U+2581 as a space: spell it in bytes
            out: list[int] = []
            for i, seg in enumerate(text.split(_WS_META)):
                if i:
                    out += self._meta_bytes
                if seg:
                    out += self.sp.encode(seg)
            return out
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 1, allow_special: bool = False) -> list[list[int]]:
        """Encode many texts; sentencepiece runs the batch on ``num_threads`` threads."""
        if allow_special:
            return [self.encode(t, allow_special=True) for t in texts]
        out = self.sp.encode(list(texts), num_threads=num_threads)
        for i, t in enumerate(texts):
            if _WS_META in t:
                out[i] = self._encode_plain(t)
        return out

    # decode -------------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of ``ids``; special tokens are rendered as their strings unless ``skip_special``."""
        ids = [int(i) for i in ids]
        if not any(0 < i < NUM_SPECIAL for i in ids):
            return self.sp.decode(ids)
        parts: list[str] = []
        start = 0
        for pos, i in enumerate(ids):
            if 0 < i < NUM_SPECIAL:
                parts.append(self.sp.decode(ids[start:pos]))
                if not skip_special:
                    parts.append(SPECIALS[i].token)
                start = pos + 1
        parts.append(self.sp.decode(ids[start:]))
        return "".join(parts)

    def id_to_piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    # megatron -----------------------------------------------------------------------------

    def megatron_tokenizer(self) -> Any:
        """megatron-core's own tokenizer object for this model (GPT, sentencepiece library):
        what ``GPTDatasetConfig(tokenizer=...)`` and training take. Its ``eod`` and ``pad``
        are read from the model, so they equal ``eod_id`` and ``pad_id``."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # megatron-core warns on import without Transformer Engine
            from megatron.core.tokenizers import MegatronTokenizer
        return MegatronTokenizer.from_pretrained(self.model_path, metadata_path=megatron_metadata())

    def __repr__(self) -> str:
        return f"<Tokenizer vocab={self.vocab_size} eod={self.eod_id} {self.model_path}>"


def megatron_metadata() -> dict[str, Any]:
    return {"library": "sentencepiece", "model_type": "gpt", "class_name": None, "class_path": None, "chat_template": None}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- training -------------------------------------------------------------------------------


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
    "EOD_ID",
    "PAD_ID",
    "SPECIALS",
    "TRAIN_SPM",
    "Tokenizer",
    "TrainSpmParams",
    "sample_documents",
    "token_dtype",
    "train_model",
    "training_chunks",
]
