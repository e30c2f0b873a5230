"""``web.c4_quality``: C4's line cleaning and document rules (Raffel et al. 2020), as
datatrove 0.10.1's ``C4QualityFilter`` applies them, as one map stage that rewrites ``text``.

Each line (``str.splitlines()``, stripped) meets, in this order, the first rule it fails:

* ``too_long_word`` (dropped): a word (``str.split()``) over ``max_word_length`` characters;
* citations ``[1]``, ``[edit]``, ``[citation needed]`` are removed (``remove_citations``);
* ``no_terminal_punc`` (dropped): it does not end in ``. ? ! " '``, or ends in ``...``;
* ``too_few_words`` (dropped): fewer than ``min_words_per_line`` words (counted before the
  citations went);
* ``lorem_ipsum`` (the *document* is rejected): it contains "lorem ipsum" (any case);
* ``javascript`` (dropped): it contains "javascript" (any case);
* ``curly_bracket`` (the document is rejected): it contains ``{``;
* ``policy`` (dropped): "terms of use", "privacy policy", "cookie policy", "uses cookies",
  "use of cookies" or "use cookies" (any case);
* otherwise kept, and its sentences counted.

A document with fewer than ``min_num_sentences`` sentences in its kept lines is rejected
as ``too_few_sentences``; any other keeps the kept lines joined by ``\\n`` (stripped) as its
new ``text``. Rejected rows keep their original text. Counters (datatrove's names):
``line-total``, ``line-filter-<rule>`` per dropped line, ``line-kept``; a rejected
document's lines after the one that rejected it are not counted, as in datatrove.

Vectorised: line splitting, every line rule (Arrow string kernels), the document decision
and the rewrite (a list join). Sentences are counted only where they can decide: a kept
line holds at least one sentence, so a document with ``min_num_sentences`` kept lines
passes uncounted; the others' lines go through spaCy's sentencizer, as datatrove's do
(``split_paragraph: false``, C4's sentence mode, is not offered).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.pipelines.web.heuristics import (
    WS_CLASS, for_language, groups, override_model, prepare, py_strip, splitlines,
)
from arcforge.runtime.rules import detail, finish, flag
from arcforge.pipelines.web.heuristics.words import tokenize, tokenizer_mode
from arcforge.runtime.stage import MapStage, Output, Resources, StageParams, TaskContext

POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
CITATION = r"\[\p{Nd}*\]|\[edit\]|\[citation needed\]"  # Python's \d is Unicode's Nd
LINE_REASONS = ("kept", "too_long_word", "no_terminal_punc", "too_few_words", "lorem_ipsum", "javascript",
                "curly_bracket", "policy")
KEPT, TOO_LONG, NO_PUNCT, FEW, LOREM, JS, CURLY, POLICY = range(len(LINE_REASONS))


class C4Thresholds(StageParams):
    """datatrove's defaults; -1 disables a count rule."""

    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


C4Override = override_model(C4Thresholds)


class C4QualityParams(C4Thresholds):
    language_overrides: dict[str, C4Override] = {}  # type: ignore[valid-type]


def _longest_word(lines: pa.Array, over: int) -> np.ndarray:
    """Per line: the longest ``str.split()`` word, looked at only in lines longer than ``over``."""
    out = np.zeros(len(lines), dtype=np.int64)
    long = np.flatnonzero(np.asarray(pc.utf8_length(lines).to_numpy(zero_copy_only=False)) > over)
    if len(long):
        pieces = pc.utf8_split_whitespace(lines.take(pa.array(long)))
        lengths = np.asarray(pc.utf8_length(pc.list_flatten(pieces)).to_numpy(zero_copy_only=False))
        np.maximum.at(out, long[pc.list_parent_indices(pieces).to_numpy()], lengths)
    return out


def line_status(lines: pa.Array, p: C4Thresholds) -> tuple[np.ndarray, pa.Array]:
    """Per stripped line: the first rule it meets (``LINE_REASONS`` index), and the line
    after citation removal."""
    n_words = np.asarray(pc.count_substring_regex(lines, "[^" + WS_CLASS[1:] + "+").to_numpy(zero_copy_only=False))
    cleaned = pc.replace_substring_regex(lines, CITATION, "") if p.remove_citations else lines
    lower = pc.utf8_lower(cleaned)
    status = np.full(len(lines), KEPT, dtype=np.int8)
    rules = [
        (POLICY, p.filter_policy, lambda: np.any([flag(pc.match_substring(lower, s)) for s in POLICY_SUBSTRINGS], axis=0)),
        (CURLY, p.filter_curly_bracket, lambda: flag(pc.match_substring(cleaned, "{"))),
        (JS, p.filter_javascript, lambda: flag(pc.match_substring(lower, "javascript"))),
        (LOREM, p.filter_lorem_ipsum, lambda: flag(pc.match_substring(lower, "lorem ipsum"))),
        (FEW, True, lambda: n_words < p.min_words_per_line),
        (NO_PUNCT, p.filter_no_terminal_punct,
         lambda: ~flag(pc.match_substring_regex(cleaned, "[.?!\"']$")) | flag(pc.ends_with(cleaned, "..."))),
        (TOO_LONG, p.max_word_length != -1, lambda: _longest_word(lines, p.max_word_length) > p.max_word_length),
    ]
    for code, on, fails in rules:  # last applied wins: the earliest rule in datatrove's order
        if on:
            status[np.asarray(fails(), dtype=bool)] = code
    return status, cleaned


@lru_cache(maxsize=1)
def _sentence_flags() -> tuple[frozenset[str], object, object]:
    """spaCy's sentencizer marks: its punctuation characters, and per word whether it ends
    a sentence (one of them) or is content (neither that nor all punctuation, ``is_punct``)."""
    from spacy.lang.lex_attrs import is_punct
    from spacy.pipeline.sentencizer import Sentencizer

    chars = frozenset(Sentencizer.default_punct_chars)
    return chars, (lambda w: w in chars), (lambda w: w not in chars and not is_punct(w))


def count_sentences(lines: pa.Array, modes: list[str]) -> np.ndarray:
    """datatrove's ``len(split_into_sentences(line))`` per line (at least 1): spaCy's
    sentencizer starts a sentence at each content token that follows one of its
    punctuation characters. Whitespace other than one space is a content token in spaCy,
    so such runs become a placeholder word before tokenizing."""
    chars, ends, content = _sentence_flags()
    other_ws = WS_CLASS.replace("\\x{20}", "")
    marked = pc.replace_substring_regex(lines, f"{WS_CLASS}{{2,}}|{other_ws}", " \x00 ")
    words = tokenize(marked, modes, remember=False)
    end_at = np.concatenate([[0], np.cumsum(words.vocab.mask(("sent_end", chars), ends)[words.ids])])
    pos = np.flatnonzero(words.vocab.mask(("content", chars), content)[words.ids])
    line = words.parents[pos]
    first = np.ones(len(pos), dtype=bool)
    first[1:] = line[1:] != line[:-1]
    since = np.where(first, words.offsets[line], np.concatenate([[0], pos[:-1] + 1]))
    boundary = end_at[pos] - end_at[since] > 0
    return 1 + np.bincount(line[boundary], minlength=len(lines))


def c4_rows(text: pa.Array, params: C4QualityParams, language: pa.Array | None = None,
            stats: dict[str, int] | None = None) -> tuple[list, list, pa.Array]:
    """(reason, detail, new text) per row; ``stats`` collects the line counters."""
    text, langs, reasons, details = prepare(text, language)
    n = len(text)
    lines, parents = splitlines(text)
    stripped = py_strip(lines)
    keep_line = np.zeros(len(lines), dtype=bool)
    values = stripped
    stats = stats if stats is not None else {}
    for key, idx in groups(langs, params).items():
        p = for_language(params, key)
        in_group = np.zeros(n, dtype=bool)
        in_group[idx] = True
        sel = np.flatnonzero(in_group[parents])
        status, cleaned = line_status(stripped.take(pa.array(sel)), p)
        if p.remove_citations and len(sel):
            values = pc.replace_with_mask(values, _mask(len(lines), sel), cleaned) if len(sel) < len(lines) else cleaned
        rows = parents[sel]
        doc_level = np.flatnonzero((status == LOREM) | (status == CURLY))
        stop = np.full(n, len(lines), dtype=np.int64)  # first line index that rejects the document
        np.minimum.at(stop, rows[doc_level], sel[doc_level])
        for r in np.unique(rows[doc_level]):
            code = int(status[np.searchsorted(sel, stop[r])])
            reasons[r] = LINE_REASONS[code]
            details[r] = f"line={int(stop[r] - np.searchsorted(parents, r)) + 1}"
        seen = sel <= stop[rows]
        for code, count in zip(*np.unique(status[seen], return_counts=True)):
            if code not in (LOREM, CURLY):  # the line that rejects its document is only in line-total
                name = "line-kept" if code == KEPT else f"line-filter-{LINE_REASONS[code]}"
                stats[name] = stats.get(name, 0) + int(count)
        stats["line-total"] = stats.get("line-total", 0) + int(seen.sum())
        kept = (status == KEPT) & (stop[rows] == len(lines))
        keep_line[sel[kept]] = True
        if p.min_num_sentences == -1:
            continue
        n_kept = np.bincount(rows[kept], minlength=n)
        short = idx[(n_kept[idx] < p.min_num_sentences) & (stop[idx] == len(lines))]
        found = n_kept.astype(np.int64)
        count_at = sel[kept & np.isin(rows, short)]
        if len(count_at):
            sentences = count_sentences(values.take(pa.array(count_at)), [tokenizer_mode(langs[r]) for r in parents[count_at]])
            found[short] = np.bincount(parents[count_at], weights=sentences, minlength=n)[short].astype(np.int64)
        for r in short[found[short] < p.min_num_sentences]:
            reasons[r] = "too_few_sentences"
            details[r] = detail("sentences", found[r], p.min_num_sentences)
    kept_lines = values.filter(pa.array(keep_line))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(parents[keep_line], minlength=n))]).astype(np.int32)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), kept_lines), "\n")
    new_text = pc.if_else(pa.array([r is None for r in reasons]), py_strip(joined), text)
    return reasons.tolist(), details.tolist(), new_text


def _mask(n: int, where: np.ndarray) -> pa.Array:
    m = np.zeros(n, dtype=bool)
    m[where] = True
    return pa.array(m)


def c4_quality(batch: pa.RecordBatch, params: C4QualityParams, ctx: TaskContext) -> Output:
    language = batch.column("language") if "language" in batch.schema.names else None
    stats: dict[str, int] = {}
    reasons, details, new_text = c4_rows(batch.column("text"), params, language, stats)
    for name, count in stats.items():
        ctx.stats.update(name, count)
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    idx = table.schema.get_field_index("text")
    table = table.set_column(idx, table.schema.field(idx), new_text.cast(table.schema.field(idx).type))
    out = finish(table, reasons, details, ctx)
    if out.rejected is not None:  # rejected rows keep the text they came with
        orig = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        mask = pa.array([r is not None for r in reasons])
        out.rejected = out.rejected.set_column(idx, table.schema.field(idx), orig.column(idx).filter(mask))
    return out


C4_QUALITY = MapStage(
    "web.c4_quality",
    C4QualityParams,
    c4_quality,
    requires=("text",),
    resources=Resources(cpus=1),
    engine="local",
    doc="C4's line cleaning (rewrites text) and document rules as datatrove 0.10.1's C4QualityFilter applies them.",
)
