"""``web.gopher_repetition``: Gopher's repetition rules (Rae et al. 2021, table A1), as
datatrove 0.10.1's ``GopherRepetitionFilter`` applies them, as one map stage.

In datatrove's order, the first failing rule rejecting the row (``detail``: the value):

* ``empty``: no text;
* ``dup_para_frac`` / ``dup_para_char_frac``: paragraphs (the stripped text split at
  ``\\n\\n+``) that repeat an earlier one, as a share of paragraphs / of the text's characters;
* ``dup_line_frac`` / ``dup_line_char_frac``: the same for lines (split at ``\\n+``);
* ``top_{n}_gram`` (n = 2, 3, 4): the most frequent word n-gram (the first one seen among
  equally frequent ones), its length with spaces times its count, over the text's length;
* ``duplicated_{n}_n_grams`` (n = 5 ... 10): characters (without spaces) of n-grams that
  repeat one seen before, scanning left to right and jumping over a repeat, over the length.

Words are ``words.tokenize``'s (spaCy's English rules, as datatrove 0.10.1; shared with
``web.gopher_quality`` in a chain). Everything is vectorised over the batch: duplicate
lines and paragraphs are an Arrow group-by; n-grams are 64-bit hashes of word-id windows,
grouped with numpy. The left-to-right scan of the duplicated n-grams is sequential, so it
runs (in Python) only for rows where an upper bound (the characters of every window that
repeats an earlier one) exceeds the threshold; the others cannot fail the rule. A 64-bit
hash collision between different n-grams of one document is the only way this can differ
from datatrove's strings (odds about 1e-12 per document), along with datatrove's keys
for duplicated n-grams being the words joined *without* spaces (("ab", "c") equals ("a",
"bc") there, not here).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.pipelines.web.heuristics import (
    duplicates, for_language, groups, override_model, prepare, py_strip, rules_stage,
)
from arcforge.runtime.rules import Checks, num, ratio
from arcforge.pipelines.web.heuristics.words import Words, tokenize, tokenizer_mode
from arcforge.runtime.stage import StageParams

NGramRule = tuple[tuple[int, float], ...]


class RepetitionThresholds(StageParams):
    """datatrove's defaults; ``None`` (or 0) disables a line or paragraph rule."""

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: NGramRule = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: NGramRule = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


RepetitionOverride = override_model(RepetitionThresholds)


class GopherRepetitionParams(RepetitionThresholds):
    # spaCy's words are the only mode (datatrove 0.10.1's); the field stays so configs and fingerprints do
    word_tokenizer: Literal["spacy"] = "spacy"
    language_overrides: dict[str, RepetitionOverride] = {}  # type: ignore[valid-type]


_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


class NGrams:
    """Word n-grams of a batch: hashes per start position, valid where the window stays in its row."""

    def __init__(self, words: Words) -> None:
        self.words = words
        self.ids = words.ids.astype(np.uint64) + np.uint64(1)
        self.prefix = np.concatenate([[0], np.cumsum(words.lengths())])  # characters before each word
        self.n, self.hash = 1, _mix(self.ids * _GOLD)

    def grow(self, n: int) -> None:
        while self.n < n:
            m = max(len(self.hash) - 1, 0)
            self.hash = _mix(self.hash[:m] ^ (self.ids[self.n:self.n + m] * _GOLD))
            self.n += 1

    def groups(self, n: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per valid window: its start, its key (a number per distinct n-gram of the batch),
        the start of the key's first window and the key's count."""
        self.grow(n)
        p = self.words.parents
        start = np.flatnonzero((p[: len(self.hash)] == p[n - 1: n - 1 + len(self.hash)]) & rows[p[: len(self.hash)]])
        key = self.hash[start] ^ _mix(p[start].astype(np.uint64) * _GOLD + np.uint64(7))
        codes, uniq = pd.factorize(key)  # a hash table; codes number the keys in order of first sight
        first = np.zeros(len(uniq), dtype=np.int64)
        seen_before = np.concatenate([[-1], np.maximum.accumulate(codes)[:-1]]) if len(codes) else codes
        new = codes > seen_before
        first[codes[new]] = start[new]
        return start, codes, first[codes], np.bincount(codes, minlength=len(uniq))[codes]

    def chars(self, start: np.ndarray, n: int) -> np.ndarray:
        return self.prefix[start + n] - self.prefix[start]


def top_ngram_chars(ng: NGrams, n: int, rows: np.ndarray) -> np.ndarray:
    """Per row: len(" ".join(top n-gram)) * its count (NaN without n-grams), as ``find_top_duplicate``."""
    n_rows = len(ng.words.counts)
    start, _, first, count = ng.groups(n, rows)
    out = np.full(n_rows, np.nan)
    if len(start) == 0:
        return out
    row = ng.words.parents[start]
    best = np.zeros(n_rows, dtype=np.int64)
    np.maximum.at(best, row, count)
    cand = count == best[row]
    pick = np.full(n_rows, np.iinfo(np.int64).max)
    np.minimum.at(pick, row[cand], first[cand])  # the first n-gram seen among the most frequent
    has = pick < np.iinfo(np.int64).max
    out[has] = (ng.chars(pick[has], n) + (n - 1)) * best[has]
    return out


def dup_ngram_chars(ng: NGrams, n: int, rows: np.ndarray, length: np.ndarray, frac: float) -> np.ndarray:
    """Per row: ``find_all_duplicate``'s repeated characters, exact where they can exceed
    ``frac`` of the row's ``length`` (elsewhere an upper bound that does not)."""
    words = ng.words
    start, key, first, _ = ng.groups(n, rows)
    marked = np.zeros(len(words.ids) + 1, dtype=np.int64)
    marked[start[first != start] + 1] = 1  # windows that repeat an earlier one
    c = np.cumsum(marked)  # c[j + 1] = marked windows starting at or before j
    j = np.arange(len(words.ids))
    covered = (c[j + 1] - c[np.maximum(j + 1 - n, 0)]) > 0
    bound = words.per_row(np.where(covered, words.lengths(), 0))
    out = bound.copy()
    row_of = words.parents[start]
    with np.errstate(invalid="ignore"):
        exact = np.flatnonzero((ratio(bound, length) > frac) & rows)
    for r, a, b in zip(exact, np.searchsorted(row_of, exact), np.searchsorted(row_of, exact, side="right")):
        out[r] = _scan(key[a:b].tolist(), start[a:b], ng.prefix, n)
    return out


def _scan(keys: list[int], start: np.ndarray, prefix: np.ndarray, n: int) -> int:
    seen: set[int] = set()
    idx = repeated = 0
    while idx < len(keys):
        if keys[idx] in seen:
            repeated += int(prefix[start[idx] + n] - prefix[start[idx]])
            idx += n
        else:
            seen.add(keys[idx])
            idx += 1
    return repeated


def repetition_reasons(text: pa.Array, params: GopherRepetitionParams, language: pa.Array | None = None) -> tuple[list, list]:
    text, langs, reasons, details = prepare(text, language)
    n = len(text)
    length = num(pc.utf8_length(text))
    paras = pc.split_pattern_regex(py_strip(text), "\n\n+")
    n_para = num(pc.list_value_length(paras))
    para_dups, para_chars = duplicates(pc.list_parent_indices(paras).to_numpy(), pc.list_flatten(paras), n)
    lines = pc.split_pattern_regex(text, "\n+")
    n_line = num(pc.list_value_length(lines))
    line_dups, line_chars = duplicates(pc.list_parent_indices(lines).to_numpy(), pc.list_flatten(lines), n)
    for key, idx in groups(langs, params).items():
        p = for_language(params, key)
        c = Checks(idx, reasons, details)
        c.check("empty", length[idx] == 0, length[idx], "chars", 0)
        for why, t, v, label in (
            ("dup_para_frac", p.dup_para_frac, ratio(para_dups, n_para), "dup_para_frac"),
            ("dup_para_char_frac", p.dup_para_char_frac, ratio(para_chars, length), "dup_para_char_frac"),
            ("dup_line_frac", p.dup_line_frac, ratio(line_dups, n_line), "dup_line_frac"),
            ("dup_line_char_frac", p.dup_line_char_frac, ratio(line_chars, length), "dup_line_char_frac"),
        ):
            if t:
                c.check(why, v[idx] > t, v[idx], label, t)
        if not c.open.any():
            continue
        sub = idx[c.open]
        words = tokenize(text.take(pa.array(sub)), [tokenizer_mode(langs[i]) for i in sub])
        ng, sub_len = NGrams(words), length[sub]
        sc = Checks(sub, reasons, details)
        for m, frac in p.top_n_grams:
            v = ratio(top_ngram_chars(ng, m, sc.open), sub_len)
            sc.check(f"top_{m}_gram", v > frac, v, f"top_{m}_gram_char_frac", frac)
        for m, frac in p.dup_n_grams:
            v = ratio(dup_ngram_chars(ng, m, sc.open, sub_len, frac), sub_len)
            sc.check(f"duplicated_{m}_n_grams", v > frac, v, f"duplicated_{m}_gram_char_frac", frac)
    return reasons.tolist(), details.tolist()


GOPHER_REPETITION = rules_stage(
    "web.gopher_repetition",
    GopherRepetitionParams,
    repetition_reasons,
    "Gopher's repetition rules as datatrove 0.10.1's GopherRepetitionFilter applies them.",
)
