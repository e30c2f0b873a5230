"""web.gopher_quality: unit cases per rule (datatrove 0.10.1's reasons and order), and what
changed since datatrove 0.2.0 (spaCy words, distinct stop words, terminal punctuation as
symbols). Each case also goes through datatrove's own GopherQualityFilter where it is
importable (a test dependency); tests/test_datatrove_agreement.py measures the agreement
on ~31k real documents.
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
    assert _datatrove(text) == why


def _datatrove(text: str, **kw) -> str | None:
    filters = pytest.importorskip("datatrove.pipeline.filters")
    from datatrove.data import Document

    r = filters.GopherQualityFilter(**kw).filter(Document(text=text, id="0"))
    return None if r is True else r[1]


PANGRAM = "The quick brown fox jumps over the lazy dog. "


def test_stop_words_are_counted_once_each_as_in_0_10():
    text = PANGRAM * 8  # "the" sixteen times, no other stop word: 0.2.0 counted 16, 0.10.1 counts 1
    assert _reason(text) == _datatrove(text) == "gopher_enough_stop_words"
    assert _reason(text + "And that is all.") is None  # "and", "that" and "the": three


def test_terminal_punctuation_of_any_script_is_a_symbol():
    words = " ".join(["राम", "घर", "गया", "।"] * 20)  # Hindi: "Ram went home." with the danda
    n_ns = gq.word_measures(gq.tokenize(pa.array([words]), ["spacy:en"]), [gq.GOPHER_STOP_WORDS])["n_non_symbol"][0]
    assert n_ns == 60  # the 20 dandas are symbols, as datatrove 0.10.1's PUNCTUATION_SET has them
    assert "।" in gq.PUNCTUATION_SET and "。" in gq.PUNCTUATION_SET


def test_words_are_spacys():
    text = "Don't stop the U.S. economy. It grew."
    assert gq.tokenize(pa.array([text]), ["spacy:en"]).row(0) == ["Do", "n't", "stop", "the", "U.S.", "economy", ".",
                                                                  "It", "grew", "."]


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


DE = ("Die Themse ist mit einer Länge von 346 Kilometern der längste Fluss in England. Sie entspringt in den "
      "Cotswolds und mündet bei London in die Nordsee. Der Fluss ist für die Geschichte Londons von großer "
      "Bedeutung, weil die Stadt an seinen Ufern entstand und der Hafen lange der wichtigste des Landes war. "
      "Heute ist die Themse ein beliebtes Ziel für Ausflüge und Wassersport.")


def test_stop_words_follow_the_language_column():
    params = gq.GopherQualityParams()
    assert gq.gopher_reasons(pa.array([DE]), params, ["en"])[0] == ["gopher_enough_stop_words"]  # Gopher's English list
    assert gq.gopher_reasons(pa.array([DE]), params, ["de"])[0] == [None]  # stopwordsiso's German list
    assert gq.gopher_reasons(pa.array([DE]), params.model_copy(update={"stop_words": ("und", "xyz")}), ["de"])[0] == [
        "gopher_enough_stop_words"]  # an explicit list applies to every language
