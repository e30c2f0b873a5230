"""web.gopher_quality: unit cases per rule (datatrove's reasons and order).

The agreement with datatrove's GopherQualityFilter on real documents is measured by
``benchmarks/oracle_gopher.py`` until the test set-up can provide datatrove's venv and
NLTK's punkt data offline (issue 9).
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from arcforge.pipelines.web.heuristics import gopher_quality as gq
from arcforge.runtime.stage import TaskContext, resolve_stage


def _stage():
    return resolve_stage("web.gopher_quality")

PROSE = ("The committee met on Tuesday to consider the proposal, and the members agreed that the "
         "plan should go ahead with a small change to the budget. ")
GOOD = PROSE * 4  # 80 words, mean length about 4.5, two stop words and more


def _reason(text: str, **kw) -> str | None:
    reasons, _ = gq.gopher_reasons(pa.array([text]), gq.GopherQualityParams(**kw))
    return reasons[0]


@pytest.mark.parametrize(
    "text,why",
    [
        (GOOD, None),
        ("Too short to be a document, with the and of.", "gopher_short_doc"),
        ("word " * 120, "gopher_enough_stop_words"),
        ("a bb c dd e of the " * 20, "gopher_below_avg_threshold"),
        ("internationalization telecommunications the of " * 30, "gopher_above_avg_threshold"),
        (GOOD + " #tag" * 20, "gopher_too_many_hashes"),
        (GOOD + " wait..." * 25, "gopher_too_many_ellipsis"),
        ("\n".join("- " + PROSE for _ in range(4)), "gopher_too_many_bullets"),
        ("\n".join(["The story goes on and on and on with the rest\u2026"] * 6 + ["The end of the tale " * 3] * 4),
         "gopher_too_many_end_ellipsis"),
        (GOOD + " 12345 67890 13579" * 50, "gopher_below_alpha_threshold"),
    ],
)
def test_each_rule_rejects_with_datatroves_reason(text: str, why: str | None):
    assert _reason(text) == why


def test_long_doc_and_disabled_rules():
    assert _reason(GOOD, max_doc_words=60) == "gopher_long_doc"
    assert _reason("word " * 120, min_stop_words=None) is None
    assert _reason("Too short of the words", min_doc_words=0, min_stop_words=None) is None  # 0 disables, as in datatrove


def test_the_stage_splits_rows_and_applies_language_overrides():
    stage = _stage()
    assert stage.name == "web.gopher_quality"
    params = gq.GopherQualityParams(language_overrides={"xx": {"min_doc_words": 5, "min_stop_words": None}})
    short = "Zehn kurze Wörter stehen hier in diesem einen Satz."
    batch = pa.RecordBatch.from_pydict({"id": ["a", "b", "c"], "text": [GOOD, short, short], "language": ["en", "xx", "en"]})
    out = stage.fn(batch, params, TaskContext())
    assert out.kept.column("id").to_pylist() == ["a", "b"]
    assert out.rejected.column("reason").to_pylist() == ["gopher_short_doc"]
    assert out.rejected.column("detail").to_pylist()[0].startswith("non_symbol_words=")


def test_word_tokenizer_follows_nltk_on_known_cases():
    assert gq.word_tokenize("Hello world. This is Mr. Smith... ok? \"Quoted\" text, e.g. here. Don't stop.") == [
        "Hello", "world", ".", "This", "is", "Mr.", "Smith", "...", "ok", "?", "``", "Quoted", "''", "text", ",",
        "e.g", ".", "here", ".", "Do", "n't", "stop", ".",
    ]


# ---------------------------------------------------------------- agreement with datatrove
