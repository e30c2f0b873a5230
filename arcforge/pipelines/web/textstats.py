"""``text.stats``: cheap per-document statistics as attribute columns.

The measures heuristic filters threshold (Gopher's and C4's word counts, mean
word length, symbol ratios), computed once, vectorised over the Arrow batch, so
that a ``filter`` step (or ten rules in one) selects on them without touching
the text again. Definitions follow Python's: a word is a run of non-whitespace
(``str.split()``), a line is what ``str.splitlines()`` gives without empty ones,
an alphabetic character is one ``str.isalpha()`` accepts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.runtime.documents import put_column
from arcforge.runtime.stage import MapStage, NoParams, Output, Resources, TaskContext

RATIO = {"arcforge.range": "0,1"}
FIELDS = (
    pa.field("n_chars", pa.int64()),
    pa.field("n_words", pa.int64()),
    pa.field("n_lines", pa.int64()),
    pa.field("mean_word_length", pa.float64()),
    pa.field("frac_alpha_chars", pa.float64(), metadata=RATIO),
    pa.field("frac_digit_chars", pa.float64(), metadata=RATIO),
    pa.field("hash_word_ratio", pa.float64()),
    pa.field("frac_lines_ellipsis", pa.float64(), metadata=RATIO),
)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def text_stats(text: pa.Array) -> dict[str, np.ndarray]:
    """Every measure for a string array, as numpy arrays (one value per document)."""
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    n = len(text)
    chars = pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    words = pc.utf8_split_whitespace(text)  # leading or trailing whitespace gives an empty piece
    flat = pc.list_flatten(words)
    word_parents = pc.list_parent_indices(words).to_numpy()
    flat_len = pc.utf8_length(flat).to_numpy(zero_copy_only=False)
    real = flat_len > 0
    n_words = np.bincount(word_parents, weights=real, minlength=n).astype(np.int64)
    word_chars = np.bincount(word_parents, weights=flat_len, minlength=n)
    hashes = np.bincount(word_parents, weights=pc.starts_with(flat, "#").to_numpy(zero_copy_only=False), minlength=n)
    alpha = pc.count_substring_regex(text, r"\pL").to_numpy(zero_copy_only=False)
    digits = pc.count_substring_regex(text, r"\p{Nd}").to_numpy(zero_copy_only=False)
    lines = pc.split_pattern_regex(text, r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\x{2028}\x{2029}]")
    line_flat = pc.utf8_trim_whitespace(pc.list_flatten(lines))
    parents = pc.list_parent_indices(lines).to_numpy()
    nonempty = pc.greater(pc.utf8_length(line_flat), 0).to_numpy(zero_copy_only=False)
    ellipsis = (pc.ends_with(line_flat, "...").to_numpy(zero_copy_only=False) | pc.ends_with(line_flat, "…").to_numpy(zero_copy_only=False))
    n_lines = np.bincount(parents, weights=nonempty, minlength=n).astype(np.int64)
    n_ellipsis = np.bincount(parents, weights=ellipsis & nonempty, minlength=n)
    return {
        "n_chars": chars,
        "n_words": n_words,
        "n_lines": n_lines,
        "mean_word_length": _ratio(word_chars, n_words),
        "frac_alpha_chars": _ratio(alpha, chars),
        "frac_digit_chars": _ratio(digits, chars),
        "hash_word_ratio": _ratio(hashes, n_words),
        "frac_lines_ellipsis": _ratio(n_ellipsis, n_lines),
    }


def add_text_stats(batch: pa.RecordBatch, params: NoParams, ctx: TaskContext) -> Output:
    table = pa.Table.from_batches([batch])
    for field, values in zip(FIELDS, text_stats(batch.column("text")).values()):
        table = put_column(table, field.name, pa.array(values, field.type))
    return Output(kept=table)


TEXT_STATS = MapStage(
    "text.stats",
    NoParams,
    add_text_stats,
    requires=("text",),
    adds=FIELDS,
    resources=Resources(cpus=1),
    engine="local",
    doc="Word, line and character statistics as attribute columns, for heuristic filters.",
)
