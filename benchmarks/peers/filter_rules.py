"""The ten cheap filter rules of bench_filters.py, shared by both sides.

Pure Python, no imports from arcforge or datatrove: the datatrove side (its own
venv) builds one ``LambdaFilter`` per rule from ``MEASURES``, and the arcforge
side builds a chain of ``text.stats`` plus one ``filter`` step per rule from
``RULES``. ``MEASURES`` are the plain definitions ``text.stats`` vectorises
(tests/test_textstats.py checks they agree on real text).
"""

from __future__ import annotations

import operator

MEASURES = {
    "n_chars": len,
    "n_words": lambda t: len(t.split()),
    "mean_word_length": lambda t: (sum(map(len, w)) / len(w)) if (w := t.split()) else 0.0,
    "frac_alpha_chars": lambda t: (sum(c.isalpha() for c in t) / len(t)) if t else 0.0,
    "frac_digit_chars": lambda t: (sum(c.isdecimal() for c in t) / len(t)) if t else 0.0,
    "hash_word_ratio": lambda t: (sum(x.startswith("#") for x in w) / len(w)) if (w := t.split()) else 0.0,
    "frac_lines_ellipsis": lambda t: (
        sum(x.strip().endswith(("...", "…")) for x in lines) / len(lines)
        if (lines := [x for x in t.splitlines() if x.strip()])
        else 0.0
    ),
}

# (rule name, measure, op, threshold): a document is kept when ``measure(text) op threshold``.
RULES = [
    ("min_chars", "n_chars", ">=", 30),
    ("max_chars", "n_chars", "<=", 100_000),
    ("min_words", "n_words", ">=", 5),
    ("max_words", "n_words", "<=", 20_000),
    ("min_mean_word_length", "mean_word_length", ">=", 3.5),
    ("max_mean_word_length", "mean_word_length", "<=", 7.0),
    ("min_alpha", "frac_alpha_chars", ">=", 0.7),
    ("max_digits", "frac_digit_chars", "<=", 0.02),
    ("max_hashes", "hash_word_ratio", "<=", 0.1),
    ("max_ellipsis_lines", "frac_lines_ellipsis", "<=", 0.3),
]

OPS = {">=": operator.ge, "<=": operator.le}


def keeps(rule: tuple[str, str, str, float], text: str) -> bool:
    _, measure, op, value = rule
    return OPS[op](MEASURES[measure](text), value)
