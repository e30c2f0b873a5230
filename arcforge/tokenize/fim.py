"""Fill-in-the-middle for code documents, applied where documents become tokens.

GLM-4.5 applies FIM to all source code (its report's pre-training data section); the rate and order
follow StarCoder and the FIM paper (Bavarian et al. 2022): half of the documents are
transformed, half of those in SPM order. The transform is bigcode-Megatron's ``permute``:
two cut points drawn uniformly over the document's characters split it into prefix, middle
and suffix, each encoded on its own, then arranged as

* PSM: ``<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle``
* SPM (the paper's variant 2, as StarCoder): ``<|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle``

followed by the end-of-document id. Where bigcode draws at training time from the sample's
position, arcforge draws once per document from ``blake2b(seed, id)``, so a shard is a pure
function of its partition (the runtime's resume and byte-identity rules) and the same
document gets the same cut wherever it lands. An upsampled document is therefore repeated
with the same cut; re-run the stage with another ``seed`` for a different draw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class FimParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(0.5, ge=0, le=1, description="share of documents transformed")
    spm_rate: float = Field(0.5, ge=0, le=1, description="share of the transformed ones in SPM order")
    sources: list[str] | None = Field(None, description="the sources transformed (None: every source)")
    seed: int = 0


@dataclass(frozen=True)
class FimCut:
    prefix_end: int  # characters
    suffix_start: int
    spm: bool

    def pieces(self, text: str) -> tuple[str, str, str]:
        """(prefix, middle, suffix)."""
        return text[: self.prefix_end], text[self.prefix_end : self.suffix_start], text[self.suffix_start :]


def fim_cut(doc_key: str, text: str, params: FimParams) -> FimCut | None:
    """The document's cut, or None when it stays as it is (an empty text always does); depends
    only on the seed, the key (the document's id) and the text's length."""
    if not text:
        return None
    digest = hashlib.blake2b(f"{params.seed}\0{doc_key}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    if rng.random() >= params.rate:
        return None
    a, b = sorted(int(x) for x in rng.integers(0, len(text) + 1, size=2))
    return FimCut(a, b, bool(rng.random() < params.spm_rate))


def arrange(cut: FimCut, prefix: list[int], middle: list[int], suffix: list[int], ids: dict[str, int]) -> list[int]:
    """The token ids of a transformed document (without the end-of-document id)."""
    p, m, s = ids["fim_prefix"], ids["fim_middle"], ids["fim_suffix"]
    if cut.spm:
        return [p, s, *suffix, m, *prefix, *middle]
    return [p, *prefix, s, *suffix, m, *middle]


def encode_with_fim(
    texts: list[str], keys: list[str], tokenizer: object, params: FimParams, num_threads: int = 1,
) -> tuple[list[list[int]], dict[str, int]]:
    """Every document's ids: as they are, or transformed where its draw says so. One
    ``encode_batch`` call for all the pieces. Counts ``psm`` and ``spm`` documents."""
    cuts = [fim_cut(k, t, params) for t, k in zip(texts, keys)]
    flat: list[str] = []
    for t, c in zip(texts, cuts):
        flat += [t] if c is None else list(c.pieces(t))
    encoded = tokenizer.encode_batch(flat, num_threads=num_threads)
    special = {n: tokenizer.special_id(n) for n in ("fim_prefix", "fim_middle", "fim_suffix")}
    out, at, counts = [], 0, {"psm": 0, "spm": 0}
    for c in cuts:
        if c is None:
            out.append(encoded[at])
            at += 1
            continue
        out.append(arrange(c, encoded[at], encoded[at + 1], encoded[at + 2], special))
        counts["spm" if c.spm else "psm"] += 1
        at += 3
    return out, counts


__all__ = ["FimCut", "FimParams", "arrange", "encode_with_fim", "fim_cut"]
