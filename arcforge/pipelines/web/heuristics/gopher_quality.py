"""``web.gopher_quality``: Gopher's quality rules (Rae et al. 2021), as datatrove 0.10.1's
``GopherQualityFilter`` applies them, as one map stage.

Rules, order, defaults and reason names are datatrove's; the first failing rule rejects
the row and its ``detail`` gives the measured value. Since datatrove 0.2.0 three things
changed, and this stage follows 0.10.1 (version 2 of the stage):

* words come from spaCy's tokenizer (``spacy.blank("en")``), not NLTK's ``word_tokenize``
  (see ``words`` for CJK and other languages);
* ``min_stop_words`` counts *distinct* stop words (``len(stop_words & set(words))``), not
  occurrences; the stop words follow the row's language (``words.stop_words``) unless
  ``stop_words`` is set;
* a symbol word is one made only of ``PUNCTUATION`` *or terminal punctuation* of any
  script (``。``, ``।``, ``؟`` ...).

A rule whose threshold is ``None`` or 0 is off (datatrove tests truthiness). Where
datatrove divides by zero (no words or no lines with the length rule off) the ratio here
is undefined and the rule passes.

Per row in Python: nothing but the tokenization of runs not seen before (``words``).
Vectorised (Arrow / numpy): word measures from the vocabulary arrays, the ``#``, ``...``
and ``…`` counts, line splitting, bullet and end-ellipsis lines, every comparison.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.pipelines.web.heuristics import (
    for_language, groups, override_model, prepare, py_strip, rules_stage, splitlines,
)
from arcforge.runtime.rules import Checks, flag, num, ratio
from arcforge.pipelines.web.heuristics.words import (  # noqa: F401 - re-exported for callers of the 0.2.0 module
    GOPHER_STOP_WORDS, PUNCTUATION, PUNCTUATION_SET, Words, stop_words, tokenize, tokenizer_mode,
)
from arcforge.runtime.stage import StageParams

STOP_WORDS = tuple(sorted(GOPHER_STOP_WORDS))


class GopherThresholds(StageParams):
    """datatrove's defaults; ``None`` (or 0, as datatrove tests truthiness) disables a rule."""

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] | None = None  # None: the row language's (words.stop_words)


GopherOverride = override_model(GopherThresholds)


class GopherQualityParams(GopherThresholds):
    # spaCy's words are the only mode (datatrove 0.10.1's); the field stays so configs and fingerprints do
    word_tokenizer: Literal["spacy"] = "spacy"
    language_overrides: dict[str, GopherOverride] = {}  # type: ignore[valid-type]


def _line_measures(text: pa.Array) -> dict[str, np.ndarray]:
    n = len(text)
    lines, parents = splitlines(text)
    left, right = py_strip(lines, "left"), py_strip(lines, "right")
    bullet = flag(pc.starts_with(left, "•")) | flag(pc.starts_with(left, "-"))
    ell = flag(pc.ends_with(right, "...")) | flag(pc.ends_with(right, "…"))
    return {
        "hashes": num(pc.count_substring(text, "#")),
        "ellipsis": num(pc.count_substring(text, "...")) + num(pc.count_substring(text, "…")),
        "n_lines": np.bincount(parents, minlength=n).astype(np.float64),
        "bullet_lines": np.bincount(parents, weights=bullet, minlength=n),
        "ellipsis_lines": np.bincount(parents, weights=ell, minlength=n),
    }


def distinct_stop_words(words: Words, sets: list[frozenset[str]]) -> np.ndarray:
    """Per row: how many different words of the row are in the row's stop-word set."""
    n = len(words.counts)
    keys = {s: k for k, s in enumerate(dict.fromkeys(sets))}
    row_set = np.asarray([keys[s] for s in sets], dtype=np.int64)
    hit = np.zeros(len(words.ids), dtype=bool)
    for s, k in keys.items():
        hit |= (row_set[words.parents] == k) & words.vocab.stop_mask(s)[words.ids]
    pairs = np.unique(words.parents[hit] * (len(words.vocab.words) + 1) + words.ids[hit])
    return np.bincount(pairs // (len(words.vocab.words) + 1), minlength=n).astype(np.float64)


def word_measures(words: Words, sets: list[frozenset[str]]) -> dict[str, np.ndarray]:
    symbol = words.vocab.symbol.view[words.ids]
    n_ns = words.per_row(~symbol)
    return {
        "n_words": words.counts.astype(np.float64),
        "n_non_symbol": n_ns,
        "avg_len": ratio(words.per_row(np.where(symbol, 0, words.lengths())), n_ns),
        "alpha": words.per_row(words.vocab.alpha.view[words.ids]),
        "stops": distinct_stop_words(words, sets),
    }


def gopher_reasons(text: pa.Array, params: GopherQualityParams, language: pa.Array | list | None = None) -> tuple[list, list]:
    """(reason or None, detail or None) per row, datatrove's rules in datatrove's order.
    ``language``: each row's language (None: detected from the script, see ``words``)."""
    if language is not None and not isinstance(language, (pa.Array, pa.ChunkedArray)):
        language = pa.array(language, pa.string())
    text, langs, reasons, details = prepare(text, language)
    words = tokenize(text, [tokenizer_mode(lang) for lang in langs])
    lines = _line_measures(text)
    for key, idx in groups(langs, params).items():
        p = for_language(params, key)
        sets = [frozenset(p.stop_words) if p.stop_words is not None else stop_words(langs[i]) for i in idx]
        wm = word_measures(words.select(idx), sets)
        lm = {k: v[idx] for k, v in lines.items()}
        n_ns, avg, n_words = wm["n_non_symbol"], wm["avg_len"], wm["n_words"]
        c = Checks(idx, reasons, details)
        rules = [
            ("gopher_short_doc", p.min_doc_words, lambda t: n_ns < t, n_ns, "non_symbol_words"),
            ("gopher_long_doc", p.max_doc_words, lambda t: n_ns > t, n_ns, "non_symbol_words"),
            ("gopher_below_avg_threshold", p.min_avg_word_length, lambda t: avg < t, avg, "avg_word_length"),
            ("gopher_above_avg_threshold", p.max_avg_word_length, lambda t: avg > t, avg, "avg_word_length"),
            ("gopher_too_many_hashes", p.max_symbol_word_ratio, lambda t: ratio(lm["hashes"], n_words) > t,
             ratio(lm["hashes"], n_words), "hash_word_ratio"),
            ("gopher_too_many_ellipsis", p.max_symbol_word_ratio, lambda t: ratio(lm["ellipsis"], n_words) > t,
             ratio(lm["ellipsis"], n_words), "ellipsis_word_ratio"),
            ("gopher_too_many_bullets", p.max_bullet_lines_ratio,
             lambda t: ratio(lm["bullet_lines"], lm["n_lines"]) > t, ratio(lm["bullet_lines"], lm["n_lines"]),
             "bullet_lines_ratio"),
            ("gopher_too_many_end_ellipsis", p.max_ellipsis_lines_ratio,
             lambda t: ratio(lm["ellipsis_lines"], lm["n_lines"]) > t, ratio(lm["ellipsis_lines"], lm["n_lines"]),
             "ellipsis_lines_ratio"),
            ("gopher_below_alpha_threshold", p.max_non_alpha_words_ratio,
             lambda t: ratio(wm["alpha"], n_words) < t, ratio(wm["alpha"], n_words), "alpha_word_ratio"),
            ("gopher_enough_stop_words", p.min_stop_words, lambda t: wm["stops"] < t, wm["stops"], "stop_words"),
        ]
        for why, threshold, fails, value, label in rules:
            if threshold:  # datatrove tests truthiness: None and 0 disable a rule
                with np.errstate(invalid="ignore"):
                    c.check(why, fails(threshold), value, label, threshold)
    return reasons.tolist(), details.tolist()


GOPHER_QUALITY = rules_stage(
    "web.gopher_quality",
    GopherQualityParams,
    gopher_reasons,
    "Gopher's quality rules as datatrove 0.10.1's GopherQualityFilter applies them (reasons gopher_*).", version="2",
)
