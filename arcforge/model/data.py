"""Training data for the trainer: Megatron blends -> megatron-core ``GPTDataset`` / ``BlendedDataset``.

Everything goes through megatron-core's own ``BlendedMegatronDatasetBuilder`` with a
``GPTDatasetConfig``, so sampling, shuffling, document boundaries and the index caches are
exactly Megatron's. What this module adds:

* ``ShardTokenizer``: the tokenizer object ``GPTDatasetConfig`` needs in megatron-core
  0.16.1. The datasets only read ``vocab_size`` (token dtype of the shards: uint16 up to
  65,536, else int32), ``eod`` (document boundaries for the masks), ``pad`` (labels equal to
  it get loss weight 0, and such tokens are mapped to id 0), and ``unique_identifiers`` (part
  of the hash that names the cached indices). No text is tokenized while training, so this
  small object stands in for a full ``MegatronTokenizer`` and needs no model file.
* Blend resolution: ``blend_file`` (a ``<stage>.blend.json`` written by ``arcforge mix``) or an
  inline ``[[prefix, weight], ...]`` list.
* A split *part*: ``split="99,1,0"`` with part ``train`` or ``valid`` builds only that share of
  every shard's documents, so training and a held-out validation set can come from the same
  shards without overlapping.
* ``Batches``: sample ``i`` of a run is always ``dataset[i]``, so the data order depends only
  on the number of samples consumed (what a resumed run needs).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPLIT_PARTS = {"train": 0, "valid": 1, "test": 2}


def _quiet_import_megatron_datasets():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core.tokenizers import MegatronTokenizerBase
    return BlendedMegatronDatasetBuilder, GPTDataset, GPTDatasetConfig, MegatronTokenizerBase


def _tokenizer_base():
    return _quiet_import_megatron_datasets()[3]


class ShardTokenizer(_tokenizer_base()):  # type: ignore[misc]
    """The tokenizer ``GPTDatasetConfig`` takes, for token shards that are already encoded.

    megatron-core 0.16.1's ``GPTDataset`` uses ``vocab_size``, ``eod``, ``pad`` and
    ``unique_identifiers``; ``MegatronDataset`` also probes ``special_tokens_dict``/``eos`` to
    check that ``pad`` collides with no other special token (it would silently unmask
    nothing otherwise). The encode/decode methods are not used by the datasets.
    """

    def __init__(self, vocab_size: int, eod_id: int, pad_id: int | None = None, name: str = "arcforge-shards") -> None:
        super().__init__(path=name, config={})
        self._vocab_size = int(vocab_size)
        self._eod = int(eod_id)
        self._pad = None if pad_id is None else int(pad_id)
        self.name = name

    # what the datasets read
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod

    @property
    def pad(self) -> int:
        if self._pad is None:
            raise AttributeError("no pad id")  # megatron then uses its own out-of-vocabulary pad
        return self._pad

    @property
    def special_tokens_dict(self) -> dict[str, int]:
        d = {"eos_token": self._eod}
        if self._pad is not None:
            d["pad_token"] = self._pad
        return d

    @property
    def unique_identifiers(self) -> OrderedDict:
        return OrderedDict(
            [("class", f"{type(self).__module__}.{type(self).__qualname__}"), ("name", self.name),
             ("vocab_size", self._vocab_size), ("eod", self._eod), ("pad", self._pad)]
        )

    # the abstract API (not used for pre-tokenized shards)
    def tokenize(self, text: str) -> list[int]:  # pragma: no cover - not used by GPTDataset
        raise NotImplementedError("ShardTokenizer only describes pre-tokenized shards")

    def detokenize(self, ids: list[int]) -> str:  # pragma: no cover
        raise NotImplementedError("ShardTokenizer only describes pre-tokenized shards")

    def vocab(self):  # pragma: no cover
        raise NotImplementedError

    def apply_chat_template(self, *args: Any, **kwargs: Any):  # pragma: no cover
        raise NotImplementedError


# ---- tokenizer metadata -------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerInfo:
    vocab_size: int
    eod_id: int
    pad_id: int | None
    source: str


def read_tokenizer_info(path: str) -> TokenizerInfo:
    """``vocab_size``/``eod_id``/``pad_id`` from arcforge's ``tokenizer.json`` (a file, or a
    tokenizer stage directory holding one), or from a sentencepiece ``tokenizer.model``."""
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").exists():
            p = p / "tokenizer.json"
        elif (p / "tokenizer.model").exists():
            p = p / "tokenizer.model"
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model in this directory")
    if p.suffix == ".model":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(p))
        pad = sp.pad_id()
        eod = sp.eos_id()
        if eod < 0:
            raise ValueError(f"{path}: the sentencepiece model has no eos (end-of-document) id")
        return TokenizerInfo(sp.get_piece_size(), eod, pad if pad >= 0 else None, str(p))
    meta = json.loads(p.read_text())
    if "vocab_size" not in meta or "eod_id" not in meta:
        raise ValueError(f"{path}: expected arcforge tokenizer metadata with vocab_size and eod_id")
    return TokenizerInfo(int(meta["vocab_size"]), int(meta["eod_id"]), meta.get("pad_id"), str(p))


# ---- blends -------------------------------------------------------------------------------

Blend = tuple[list[str], list[float] | None]


def load_blend_file(path: str) -> tuple[Blend, dict[str, Any]]:
    """``(prefixes, weights)`` and the whole JSON of a ``<stage>.blend.json``."""
    try:
        from arcforge.tokenize.mixture import load_blend
    except ImportError:  # the tokenize package not installed: read the documented layout
        load_blend = None
    data = json.loads(Path(path).read_text()) if "://" not in path else {}
    if load_blend is not None:
        prefixes, weights = load_blend(path)
    else:
        prefixes, weights = data["blend"]
    return (list(prefixes), None if weights is None else [float(w) for w in weights]), data


def inline_blend(pairs: Sequence[Sequence[Any]], base_dir: str | None = None) -> Blend:
    """``[[prefix, weight], ...]`` (or bare prefixes) -> ``(prefixes, weights)``."""
    prefixes, weights = [], []
    for item in pairs:
        if isinstance(item, str):
            prefix, w = item, 1.0
        else:
            prefix, w = item[0], float(item[1])
        if base_dir and "://" not in prefix and not os.path.isabs(prefix):
            prefix = os.path.normpath(os.path.join(base_dir, prefix))
        prefixes.append(prefix)
        weights.append(w)
    return prefixes, weights


def localize_prefixes(prefixes: Sequence[str], cache_dir: str) -> list[str]:
    """Local paths for every prefix: ``s3://`` shards are copied once into ``cache_dir``.

    megatron-core's readers memory-map local files, so shards on object storage are
    fetched through arcforge's storage layer (the run's endpoint and retries), each
    to ``cache_dir/shards/<hash of its URI>/``; a copy of the same size is reused."""
    from arcforge.runtime import storage

    out = []
    for prefix in prefixes:
        if not storage.is_s3(prefix):
            out.append(prefix)
            continue
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:16]
        local = os.path.join(cache_dir, "shards", digest, prefix.rstrip("/").rsplit("/", 1)[-1])
        os.makedirs(os.path.dirname(local), exist_ok=True)
        for ext in (".idx", ".bin"):
            fs, path = storage.filesystem(prefix + ext)
            size = storage.file_size(prefix + ext)
            if size < 0:
                raise FileNotFoundError(f"{prefix + ext}: no such shard file")
            if os.path.exists(local + ext) and os.path.getsize(local + ext) == size:
                continue

            def fetch(path: str = path, dest: str = local + ext) -> None:
                tmp = f"{dest}.tmp-{os.getpid()}"
                with fs.open_input_stream(path) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(8 << 20):
                        dst.write(chunk)
                os.replace(tmp, dest)

            storage.retry_transient(fetch, what=prefix + ext)
        out.append(local)
    return out


def missing_shards(prefixes: Sequence[str]) -> list[str]:
    """Local prefixes whose ``.bin`` or ``.idx`` is missing (remote ones are not checked)."""
    return [p for p in prefixes if "://" not in p and not (os.path.exists(p + ".bin") and os.path.exists(p + ".idx"))]


def max_token_id(prefix: str, chunk: int = 1 << 24) -> int:
    """Largest token id in a local shard (read in chunks through a memory map)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import _IndexReader

    reader = _IndexReader(prefix + ".idx", multimodal=False)
    dtype = reader.dtype
    del reader
    data = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    best = -1
    for start in range(0, len(data), chunk):
        best = max(best, int(data[start : start + chunk].max()))
    return best


def shard_tokens(prefix: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import _IndexReader

    reader = _IndexReader(prefix + ".idx", multimodal=False)  # its arrays live in its memory map:
    n = int(reader.sequence_lengths.sum())  # read them while it is alive
    del reader
    return n


# ---- datasets -----------------------------------------------------------------------------


def part_tokens(prefix: str, split_matrix_entry: tuple[float, float]) -> int:
    """Tokens in the documents (sequences) of one split share of a local shard, chosen the way
    megatron's builder chooses them (``round(beg * n) .. round(end * n)``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import _IndexReader

    reader = _IndexReader(prefix + ".idx", multimodal=False)
    lengths = reader.sequence_lengths
    n = len(lengths)
    beg, end = int(round(split_matrix_entry[0] * n)), int(round(split_matrix_entry[1] * n))
    tokens = int(lengths[beg:end].sum())
    del reader
    return tokens


def build_dataset(
    blend: Blend,
    *,
    num_samples: int,
    seq_length: int,
    seed: int,
    tokenizer: ShardTokenizer,
    split: str = "100,0,0",
    part: str = "train",
    cache_dir: str | None = None,
    eod_mask_loss: bool = False,
    drop_empty: bool = False,
):
    """A megatron-core dataset with at least ``num_samples`` samples of ``seq_length`` tokens
    (+1 for the labels) drawn from ``blend``, restricted to the ``part`` share of ``split``.

    A one-prefix blend gives a ``GPTDataset``, several give a ``BlendedDataset`` over them;
    both are built by ``BlendedMegatronDatasetBuilder`` (``torch.distributed`` must be
    initialised: ``cpu_compat.apply()`` does it on CPU).

    A shard whose ``part`` share holds no documents (a one-document shard has no 1% valid
    share) would make megatron-core 0.16.1 loop forever counting epochs of zero tokens: such
    a shard is an error, or, with ``drop_empty``, left out of the blend (its weight too).
    Returns ``(dataset, dropped prefixes)``.
    """
    Builder, GPTDataset, GPTDatasetConfig, _ = _quiet_import_megatron_datasets()
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    want = SPLIT_PARTS[part]
    entry = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))[want]
    if entry is None:
        raise ValueError(f"split {split!r} gives the {part} part no documents")
    prefixes, weights = list(blend[0]), None if blend[1] is None else list(blend[1])
    dropped = []
    for i in reversed(range(len(prefixes))):
        p = prefixes[i]
        if "://" in p or part_tokens(p, entry) > 0:
            continue
        if not drop_empty:
            raise ValueError(f"shard {p} has no documents in the {part} share of split {split!r}")
        dropped.insert(0, prefixes.pop(i))
        if weights is not None:
            weights.pop(i)
    if not prefixes:
        raise ValueError(f"no shard of the blend has documents in the {part} share of split {split!r}")
    if weights is not None and len(prefixes) == 1:
        weights = None  # one dataset: a plain GPTDataset sized to num_samples
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(list(prefixes), None if weights is None else list(weights)),
        split=split,
        path_to_cache=cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=False,  # one causal mask for the whole batch, made by the trainer
        mid_level_dataset_surplus=0.005,
    )
    # build only the wanted part (the others would build indices for nothing)
    config.split_matrix = [m if i == want else None for i, m in enumerate(config.split_matrix)]
    sizes = [0, 0, 0]
    sizes[want] = int(num_samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pad/eod collision warnings are checked by the trainer
        datasets = Builder(GPTDataset, sizes, lambda: True, config).build()
    ds = datasets[want]
    if ds is None or len(ds) < num_samples:
        got = 0 if ds is None else len(ds)
        raise ValueError(f"the {part} data gives {got} samples of {seq_length} tokens, {num_samples} needed")
    return ds, dropped


class Batches:
    """Micro-batches ``[b, s]`` of a megatron dataset by global sample index."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def get(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items = [self.dataset[i] for i in range(start, start + count)]
        tokens = torch.stack([it["tokens"] for it in items])
        labels = torch.stack([it["labels"] for it in items])
        loss_mask = torch.stack([torch.as_tensor(it["loss_mask"]) for it in items]).float()
        return tokens, labels, loss_mask


__all__ = [
    "Batches",
    "ShardTokenizer",
    "TokenizerInfo",
    "build_dataset",
    "inline_blend",
    "load_blend_file",
    "max_token_id",
    "missing_shards",
    "read_tokenizer_info",
    "shard_tokens",
]
