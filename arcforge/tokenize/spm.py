"""A sentencepiece BPE tokenizer with GLM-style special tokens at fixed ids.

``Tokenizer.load(uri)`` reads what the ``tokenize.train_spm`` stage
(``arcforge.tokenize.spm_train``) writes: ``tokenizer.model`` (sentencepiece),
``tokenizer.json`` (arcforge's metadata) and ``tokenizer_metadata.json`` (megatron-core's).

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
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from arcforge.runtime import storage
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


__all__ = [
    "BOS_ID",
    "EOD_ID",
    "FORMAT",
    "META_FILE",
    "MEGATRON_META_FILE",
    "MODEL_FILE",
    "NUM_SPECIAL",
    "PAD_ID",
    "SPECIALS",
    "UNK_ID",
    "Tokenizer",
    "megatron_metadata",
    "token_dtype",
]
