"""Shingles for MinHash dedup: one tokenization for a whole batch, in Arrow.

**Normalization** (``normalize=True``), in this order, per document:

1. Unicode NFKC (``pyarrow.compute.utf8_normalize``);
2. lower case (``utf8_lower``: Unicode simple lower-casing; not ``casefold``, so "ß" stays);
3. every maximal run of characters that are not letters, marks or numbers (Unicode
   categories ``L*``, ``M*``, ``N*``: whitespace, punctuation, symbols, ``_``, controls)
   becomes one word boundary.

A *word* is then a non-empty run between boundaries. With ``normalize=False`` the text is
only split at whitespace (``utf8_split_whitespace``), case and punctuation kept.

**CJK.** A document is CJK when its Han, Hiragana, Katakana and Hangul characters outnumber
its other letters (counted after normalization; ``cjk=None``, the default), or for every
document with ``cjk=True`` (``cjk=False``: never). A CJK document's tokens are the
*characters* of its words (boundaries dropped) and its shingles are character n-grams
joined with no separator; every other document's tokens are its words and shingles are
word n-grams joined by one space.

**Shingles.** A document with ``c >= ngram`` tokens has the ``c - ngram + 1`` n-grams in
order (duplicates kept); one with ``0 < c < ngram`` tokens has one shingle of all of them;
an empty (or null) document has none.

Everything is vectorised over the batch (Arrow kernels, numpy index arithmetic); Python
loops run only over CJK documents (to split them into characters) and, for the 64-bit
hashes, over the batch's *distinct* tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

_SEPARATORS = r"[^\p{L}\p{M}\p{N}]+"
_CJK_CHAR = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]"
_LETTER = r"\p{L}"
_U64 = np.uint64
_POLY = _U64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling shingle hash
_M1, _M2 = _U64(0xFF51AFD7ED558CCD), _U64(0xC4CEB9FE1A85EC53)  # MurmurHash3 fmix64


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection on uint64), element-wise, wrapping."""
    h = np.asarray(h, dtype=_U64)
    with np.errstate(over="ignore"):
        h = h ^ (h >> _U64(33))
        h = h * _M1
        h = h ^ (h >> _U64(33))
        h = h * _M2
        return h ^ (h >> _U64(33))


def as_strings(texts: Iterable[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """A batch as one Arrow string array, nulls as empty documents."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), pa.string())
    if pa.types.is_large_string(texts.type) or pa.types.is_string_view(texts.type):
        texts = texts.cast(pa.string())
    return pc.fill_null(texts, "") if texts.null_count else texts


@dataclass
class Tokens:
    """A batch's tokens: ``tokens[offsets[i]:offsets[i+1]]`` are document ``i``'s."""

    tokens: pa.Array  # flat utf8
    offsets: np.ndarray  # int64, n_docs + 1
    cjk: np.ndarray  # bool, n_docs

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def normalize(texts: pa.Array) -> pa.Array:
    """NFKC, lower case, every run of non-(letter, mark, number) characters -> one space."""
    texts = pc.utf8_lower(pc.utf8_normalize(texts, "NFKC"))
    return pc.replace_substring_regex(texts, _SEPARATORS, " ")


def cjk_mask(texts: pa.Array) -> np.ndarray:
    """Han/kana/Hangul characters outnumber the other letters."""
    out = np.zeros(len(texts), bool)
    some = np.flatnonzero(pc.match_substring_regex(texts, _CJK_CHAR).to_numpy(zero_copy_only=False))
    if len(some):  # count only in documents with any CJK character
        sub = texts.take(pa.array(some))
        cjk = pc.count_substring_regex(sub, _CJK_CHAR).to_numpy(zero_copy_only=False)
        letters = pc.count_substring_regex(sub, _LETTER).to_numpy(zero_copy_only=False)
        out[some] = 2 * cjk > letters
    return out


def tokenize(texts, normalize_text: bool = True, cjk: bool | None = None) -> Tokens:
    """The tokens of every document of a batch (module docstring for the rules)."""
    texts = as_strings(texts)
    n = len(texts)
    if normalize_text:
        texts = normalize(texts)
        words = pc.split_pattern(texts, " ")
    else:
        words = pc.utf8_split_whitespace(texts)
    lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(words)
    doc = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keep = pc.not_equal(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False)
    if cjk is None:
        is_cjk = cjk_mask(texts) if n else np.zeros(0, bool)
    else:
        is_cjk = np.full(n, bool(cjk))
    keep &= ~is_cjk[doc]
    flat, doc = flat.filter(pa.array(keep)), doc[keep]
    if is_cjk.any():  # split CJK documents' words into characters
        cjk_docs = np.flatnonzero(is_cjk)
        chars = [list("".join(texts[int(i)].as_py().split())) for i in cjk_docs]
        cjk_doc = np.repeat(cjk_docs, [len(c) for c in chars])
        flat = pa.concat_arrays([flat, pa.array([c for cs in chars for c in cs], pa.string())])
        doc = np.concatenate([doc, cjk_doc])
        order = np.argsort(doc, kind="stable")
        flat, doc = flat.take(pa.array(order)), doc[order]
    counts = np.bincount(doc, minlength=n).astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Tokens(flat, offsets, is_cjk)


@dataclass
class Windows:
    """Every shingle of a batch as a window of tokens: ``start`` (flat token index) and
    ``length`` per shingle; ``offsets`` delimit the documents' shingles."""

    start: np.ndarray  # int64, n_shingles
    length: np.ndarray  # int64, n_shingles
    offsets: np.ndarray  # int64, n_docs + 1


def windows(tok: Tokens, ngram: int) -> Windows:
    if ngram < 1:
        raise ValueError("ngram must be >= 1")
    c = tok.counts
    per_doc = np.where(c >= ngram, c - ngram + 1, np.minimum(c, 1))
    offsets = np.zeros(len(c) + 1, np.int64)
    np.cumsum(per_doc, out=offsets[1:])
    doc = np.repeat(np.arange(len(c), dtype=np.int64), per_doc)
    within = np.arange(offsets[-1], dtype=np.int64) - offsets[:-1][doc]
    return Windows(tok.offsets[:-1][doc] + within, np.minimum(c, ngram)[doc], offsets)


def batch_shingles(texts, ngram: int = 5, normalize: bool = True, cjk: bool | None = None) -> pa.ListArray:
    """Every document's shingles (strings), as a list array, in order (Arrow joins)."""
    tok = tokenize(texts, normalize, cjk)
    win = windows(tok, ngram)
    doc = np.repeat(np.arange(len(tok.cjk)), np.diff(win.offsets))
    seps = pa.array(np.where(tok.cjk[doc], "", " ").tolist() if len(doc) else [], pa.string())
    cols = []
    for k in range(ngram):
        valid = k < win.length
        idx = np.where(valid, win.start + k, 0)
        if len(tok.tokens):
            cols.append(tok.tokens.take(pa.array(idx, mask=~valid)))
        else:
            cols.append(pa.nulls(len(idx), pa.string()))
    joined = pc.binary_join_element_wise(*cols, seps, null_handling="skip") if len(doc) else pa.array([], pa.string())
    return pa.ListArray.from_arrays(pa.array(win.offsets.astype(np.int32)), joined)


def shingles(text: str, ngram: int = 5, normalize: bool = True, cjk: bool | None = None) -> list[str]:
    """One document's shingles.

    With ``normalize``: NFKC, then Unicode lower case (Arrow ``utf8_lower``), then every
    maximal run of characters outside the Unicode categories L (letters), M (marks) and N
    (numbers) -- whitespace, punctuation, symbols, ``_`` -- is a word boundary; without it,
    only whitespace is. Words are the non-empty runs between boundaries. Shingles: the word
    ``ngram``-grams joined by one space; for CJK text (Han/kana/Hangul characters outnumber
    the other letters, or ``cjk=True``) the character ``ngram``-grams of the words'
    characters (boundaries dropped), joined with no separator; a document with fewer than
    ``ngram`` tokens gives one shingle of all of them, an empty one none."""
    return batch_shingles([text], ngram, normalize, cjk)[0].as_py()


def token_hashes(tokens: pa.Array) -> np.ndarray:
    """xxh3-64 of every token's UTF-8, hashing each distinct token once."""
    if not len(tokens):
        return np.zeros(0, _U64)
    enc = pc.dictionary_encode(tokens)
    words = enc.dictionary.cast(pa.binary()).to_pylist()
    uniq = np.fromiter((xxhash.xxh3_64_intdigest(w) for w in words), dtype=_U64, count=len(words))
    return uniq[enc.indices.to_numpy(zero_copy_only=False)]


def shingle_hashes(
    texts, ngram: int = 5, normalize: bool = True, cjk: bool | None = None, *, token_counts: bool = False
) -> tuple[np.ndarray, ...]:
    """64-bit hashes of every shingle of a batch and the documents' offsets into them
    (and, with ``token_counts``, each document's number of tokens).

    A shingle of tokens ``t_0 .. t_{L-1}`` hashes to ``fmix64(poly)``, ``poly = L`` then
    ``poly = poly * K + xxh3_64(t_k)`` for each token (wrapping, ``K`` odd), and CJK
    documents mix in a flag, so the hash depends on the tokens, their order and the mode,
    never on the batch (deterministic across processes and batch splits)."""
    tok = tokenize(texts, normalize, cjk)
    win = windows(tok, ngram)
    th = np.concatenate([token_hashes(tok.tokens), np.zeros(ngram, _U64)])
    doc = np.repeat(np.arange(len(tok.cjk)), np.diff(win.offsets))
    acc = win.length.astype(_U64) + np.where(tok.cjk[doc], _U64(1 << 32), _U64(0))
    with np.errstate(over="ignore"):
        for k in range(ngram):
            acc = np.where(k < win.length, acc * _POLY + th[win.start + k], acc)
    if token_counts:
        return fmix64(acc), win.offsets, tok.counts
    return fmix64(acc), win.offsets
