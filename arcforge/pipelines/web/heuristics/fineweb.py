"""``web.fineweb_quality``: FineWeb's extra quality rules (Penedo et al. 2024), as datatrove
0.10.1's ``FineWebQualityFilter`` applies them, as one map stage.

Lines are ``text.split("\\n")`` without the blank ones (``line.strip() == ""``); in order:

* ``empty``: no non-blank line;
* ``line_punct_ratio``: the share of lines ending in a terminal punctuation mark of any
  script (``stop_chars``, datatrove's ``TERMINAL_PUNCTUATION``; the line is not stripped)
  is under ``line_punct_thr`` (unless it is 0 and ``line_punct_exclude_zero``);
* ``short_line_ratio``: the share of lines of at most ``short_line_length`` characters
  is over ``short_line_thr``;
* ``char_dup_ratio``: characters in lines that repeat an earlier line, over the
  characters of the text without ``\\n``, is over ``char_duplicates_ratio``;
* ``list_ratio``: ``\\n`` characters per word (``words.tokenize``) over ``new_line_ratio``.

All vectorised with Arrow and numpy. Words are counted only where they can decide: a
text has at least as many words as whitespace-separated runs, so a row whose newlines
per run are already under the threshold passes without being tokenized.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.pipelines.web.heuristics import (
    WS_CLASS, duplicates, for_language, groups, override_model, prepare, py_strip, rules_stage,
)
from arcforge.runtime.rules import Checks, flag, num, ratio
from arcforge.pipelines.web.heuristics.words import TERMINAL_PUNCTUATION, tokenize, tokenizer_mode
from arcforge.runtime.stage import StageParams


class FineWebThresholds(StageParams):
    """datatrove's defaults; ``stop_chars`` None means ``TERMINAL_PUNCTUATION``."""

    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    stop_chars: tuple[str, ...] | None = None
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


FineWebOverride = override_model(FineWebThresholds)


class FineWebQualityParams(FineWebThresholds):
    # spaCy's words are the only mode (datatrove 0.10.1's); the field stays so configs and fingerprints do
    word_tokenizer: Literal["spacy"] = "spacy"
    language_overrides: dict[str, FineWebOverride] = {}  # type: ignore[valid-type]


def _ends_with_any(lines: pa.Array, stop_chars: tuple[str, ...] | None) -> np.ndarray:
    chars = sorted(TERMINAL_PUNCTUATION) if stop_chars is None else list(stop_chars)
    single = "".join(re.escape(c) if c not in "\\]^-[" else "\\" + c for c in chars if len(c) == 1)
    hit = flag(pc.match_substring_regex(lines, f"[{single}]$")) if single else np.zeros(len(lines), bool)
    for s in (c for c in chars if len(c) > 1):
        hit |= flag(pc.ends_with(lines, s))
    return hit


def fineweb_reasons(text: pa.Array, params: FineWebQualityParams, language: pa.Array | None = None) -> tuple[list, list]:
    text, langs, reasons, details = prepare(text, language)
    n = len(text)
    split = pc.split_pattern(text, "\n")
    flat, parents = pc.list_flatten(split), pc.list_parent_indices(split).to_numpy()
    real = flag(pc.greater(pc.utf8_length(py_strip(flat)), 0))
    lines, parents = flat.filter(pa.array(real)), parents[real]
    n_lines = np.bincount(parents, minlength=n).astype(np.float64)
    line_len = num(pc.utf8_length(lines))
    _, dup_chars = duplicates(parents, lines, n)
    newlines = num(pc.count_substring(text, "\n"))
    body = num(pc.utf8_length(text)) - newlines
    runs = num(pc.count_substring_regex(text, "[^" + WS_CLASS[1:] + "+"))
    for key, idx in groups(langs, params).items():
        p = for_language(params, key)
        c = Checks(idx, reasons, details)
        c.check("empty", n_lines[idx] == 0, n_lines[idx], "lines", 0)
        punct = ratio(np.bincount(parents, weights=_ends_with_any(lines, p.stop_chars), minlength=n), n_lines)[idx]
        c.check("line_punct_ratio", (punct < p.line_punct_thr) & ~((punct == 0) & p.line_punct_exclude_zero),
                punct, "line_punct_ratio", p.line_punct_thr)
        short = ratio(np.bincount(parents, weights=line_len <= p.short_line_length, minlength=n), n_lines)[idx]
        c.check("short_line_ratio", short > p.short_line_thr, short, "short_line_ratio", p.short_line_thr)
        dup = ratio(dup_chars, body)[idx]
        c.check("char_dup_ratio", dup > p.char_duplicates_ratio, dup, "char_dup_ratio", p.char_duplicates_ratio)
        with np.errstate(divide="ignore", invalid="ignore"):
            maybe = c.open & (newlines[idx] / np.maximum(runs[idx], 1) > p.new_line_ratio)  # words >= runs
        n_words = runs[idx].copy()
        if maybe.any():
            sub = idx[maybe]
            words = tokenize(text.take(pa.array(sub)), [tokenizer_mode(langs[i]) for i in sub])
            n_words[maybe] = words.counts
        per_word = ratio(newlines[idx], n_words)
        c.check("list_ratio", per_word > p.new_line_ratio, per_word, "newlines_per_word", p.new_line_ratio)
    return reasons.tolist(), details.tolist()


FINEWEB_QUALITY = rules_stage(
    "web.fineweb_quality",
    FineWebQualityParams,
    fineweb_reasons,
    "FineWeb's quality rules as datatrove 0.10.1's FineWebQualityFilter applies them.",
)
