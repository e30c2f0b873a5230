"""The heuristic filters web.gopher_repetition, web.c4_quality, web.fineweb_quality and the
shared words (CJK counting, stop words, the tokenization a chain shares), on small real text.

Each rule has a document that fails it with datatrove's reason; where datatrove (a test
dependency) is importable the same documents also go through datatrove 0.10.1's filter,
which must give the same reason. The agreement on ~31k real documents is
tests/test_datatrove_agreement.py's.
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from arcforge.pipelines.web.heuristics import c4, clean_text, detect_languages, fineweb, gopher_quality, words
from arcforge.pipelines.web.heuristics import gopher_repetition as rep
from arcforge.runtime.chain import ChainParams, run_chain
from arcforge.runtime.stage import TaskContext, resolve_stage

# real text: English Wikipedia ("Python (programming language)", "River Thames"), common page boilerplate
PY = ("Python is a high-level, general-purpose programming language. Its design philosophy emphasizes code "
      "readability with the use of significant indentation. Python is dynamically type-checked and garbage-collected. "
      "It supports multiple programming paradigms, including structured, object-oriented and functional programming. "
      "Guido van Rossum began working on Python in the late 1980s as a successor to the ABC programming language.")
THAMES = ("The River Thames is a river that flows through southern England including London. At 215 miles, it is the "
          "longest river entirely in England and the second-longest in the United Kingdom, after the Severn. "
          "The river rises at Thames Head in Gloucestershire and flows into the Thames Estuary on the North Sea. "
          "The Thames drains the whole of Greater London.")
LINES = [s + "." for s in (PY + " " + THAMES).split(". ") if s]  # ten real sentences, one per line
COOKIES = "This website uses cookies to ensure you get the best experience on our website."
JS = "Please enable JavaScript to view the comments powered by Disqus."
LOREM = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt."
MENU = ["Home", "About us", "Contact", "Privacy", "Log in"]


def datatrove_reason(filter_name: str, text: str) -> str | None:
    filters = pytest.importorskip("datatrove.pipeline.filters")
    from datatrove.data import Document

    r = getattr(filters, filter_name)().filter(Document(text=text, id="0"))
    return None if r is True else r[1]


def reasons(fn, texts: list[str], **kw) -> list[str | None]:  # noqa: ANN001
    return fn(pa.array(texts), **kw)[0]


# ------------------------------------------------------------------ words
def test_words_are_spacys_english_tokens():
    spacy = pytest.importorskip("spacy")
    text = "Don't stop: the U.S. economy grew 3.5% in 2023 (see p. 12)!\n\tIt's   e-mail-ready, isn't it?"
    expected = [t.text for t in spacy.blank("en").tokenizer(text) if t.text.strip()]
    assert words.split_words(text) == expected
    assert words.split_words(text)[:2] == ["Do", "n't"]


def test_arrow_whitespace_is_pythons():
    chars = [chr(c) for c in range(0x3100) if chr(c).isspace()] + ["\u200b", "\ufeff", "\u180e"]
    pieces = pc.utf8_split_whitespace(pa.array(["a" + c + "b" for c in chars])).to_pylist()
    assert [len(p) == 2 for p in pieces] == [c.isspace() for c in chars]


def test_cjk_words_are_characters_and_korean_words_are_spaced():
    assert words.split_words("北京是中华人民共和国的首都。", "zh") == list("北京是中华人民共和国的首都。")
    assert words.split_words("我用Python写代码", "zh") == ["我", "用", "Python", "写", "代", "码"]
    assert words.split_words("東京は日本の首都です。", "ja") == list("東京は日本の首都です。")
    assert words.split_words("서울은 대한민국의 수도이다.", "ko") == ["서울은", "대한민국의", "수도이다."]


def test_languages_by_script_without_a_column():
    texts = ["北京是中华人民共和国的首都。", "東京は日本の首都です。", "서울은 대한민국의 수도이다.", THAMES,
             "Python は 1991 年に登場した programming language that many people use today for work.", ""]
    assert detect_languages(pa.array(texts)) == ["zh", "ja", "ko", "en", "en", "en"]


def test_stop_words_per_language():
    assert words.stop_words("en") == words.GOPHER_STOP_WORDS and len(words.stop_words("en")) == 8
    assert "und" in words.stop_words("de") and "the" not in words.stop_words("de")
    zh = words.stop_words("zh-Hans")
    assert "的" in zh and all(len(w) == 1 for w in zh)
    assert words.stop_words("qq") == words.GOPHER_STOP_WORDS  # no list: datatrove's


ZH = ("长江是亚洲最长的河流，也是世界第三长河。长江发源于青藏高原的唐古拉山脉，流经十一个省级行政区，"
      "最后在上海注入东海。长江流域是中国经济最发达的地区之一。")


def test_chinese_counts_characters_and_overrides_apply_per_language():
    # one-character words are below Gopher's mean length of 3: CJK needs an override
    assert gopher_quality.gopher_reasons(pa.array([ZH]), gopher_quality.GopherQualityParams(), ["zh"])[0] == [
        "gopher_below_avg_threshold"]
    params = gopher_quality.GopherQualityParams(language_overrides={"zh": {"min_avg_word_length": None}})
    assert gopher_quality.gopher_reasons(pa.array([ZH]), params, ["zh"])[0] == [None]
    assert gopher_quality.gopher_reasons(pa.array([ZH]), params, None)[0] == [None]  # detected as zh
    assert gopher_quality.gopher_reasons(pa.array([ZH]), params, ["en"])[0] == ["gopher_short_doc"]  # spaCy: 4 words
    strict = gopher_quality.GopherQualityParams(language_overrides={"zh": {"min_avg_word_length": None,
                                                                           "min_doc_words": 200}})
    out, details = gopher_quality.gopher_reasons(pa.array([ZH, PY + " " + THAMES]), strict, ["zh", "en"])
    assert out == ["gopher_short_doc", None] and details[0] == "non_symbol_words=69 (threshold 200)"


def test_a_chain_tokenizes_each_document_once():
    docs = [PY + " " + THAMES, THAMES + "\n\n" + PY, "Too short."]
    batch = pa.record_batch({"id": ["a", "b", "c"], "text": docs})
    words._LAST.clear()  # the last batch's words: none, as at a task's start
    before = dict(words.COUNTS)
    params = ChainParams(steps=[{"name": "q", "uses": "web.gopher_quality"}, {"name": "r", "uses": "web.gopher_repetition"}])
    out = run_chain(batch, params, TaskContext())
    assert out.rejected.column("reason").to_pylist() == ["gopher_short_doc"]
    assert words.COUNTS["rows_tokenized"] - before["rows_tokenized"] == 3  # by gopher_quality, not again
    assert words.COUNTS["rows_reused"] - before["rows_reused"] == 2  # gopher_repetition's two rows


# ------------------------------------------------------------------ gopher repetition
DRAINS = "The Thames drains the whole of Greater London and flows east to the sea."
REP_CASES = [
    ("", "empty"),
    ("\n\n".join([LINES[0], LINES[1], LINES[0], LINES[0]]), "dup_para_frac"),
    ("\n\n".join([PY, *LINES[5:9], PY]), "dup_para_char_frac"),
    ("\n".join([LINES[0], "Subscribe", "Subscribe", "Subscribe", LINES[1]]), "dup_line_frac"),
    ("\n".join([PY, *LINES[5:10], PY]), "dup_line_char_frac"),
    (" ".join(["New York"] * 12 + LINES[:3]), "top_2_gram"),
    (" ".join(["the River Thames"] * 8 + LINES[:4]), "top_3_gram"),
    (" ".join(["in the City of London"] * 5 + LINES[:4]), "top_4_gram"),
    (" ".join([PY, DRAINS, DRAINS, DRAINS, DRAINS, THAMES]), "duplicated_5_n_grams"),
    (" ".join([PY, DRAINS, DRAINS, DRAINS, THAMES]), "duplicated_6_n_grams"),
    (PY + "\n\n" + THAMES, None),
]


@pytest.mark.parametrize("text,why", REP_CASES)
def test_repetition_rules(text: str, why: str | None):
    assert reasons(rep.repetition_reasons, [text], params=rep.GopherRepetitionParams()) == [why]
    assert datatrove_reason("GopherRepetitionFilter", text) == why


def test_top_ngram_counts_the_first_of_equally_frequent_ones():
    ws = words.tokenize(pa.array(["a b a b ccc ddd ccc ddd"]), ["spacy:en"])
    ng = rep.NGrams(ws)
    assert rep.top_ngram_chars(ng, 2, np.array([True]))[0] == len("a b") * 2  # not len("ccc ddd") * 2


def test_duplicated_ngrams_scan_matches_datatrove():
    find_all_duplicate = pytest.importorskip("datatrove.pipeline.filters.gopher_repetition_filter").find_all_duplicate

    vocab = THAMES.split()[:12]
    rng = random.Random(9)
    texts = [" ".join(rng.choice(vocab[: 3 + i % 8]) for _ in range(40 + i)) for i in range(30)]
    ws = words.tokenize(pa.array(texts), ["spacy:en"] * len(texts))
    ng = rep.NGrams(ws)
    for n in range(5, 11):
        ours = rep.dup_ngram_chars(ng, n, np.ones(len(texts), dtype=bool), np.ones(len(texts)), 0.0)  # exact everywhere
        assert ours.tolist() == [find_all_duplicate(ws.row(i), n) for i in range(len(texts))]


# ------------------------------------------------------------------ C4
def c4_one(text: str, **kw) -> tuple[str | None, str | None, str]:
    stats: dict[str, int] = {}
    r, d, new = c4.c4_rows(pa.array([text]), c4.C4QualityParams(**kw), None, stats)
    return r[0], d[0], new.to_pylist()[0]


def test_c4_cleans_lines_and_keeps_the_rest():
    cited = LINES[0].replace("high-level,", "high-level,[1]").replace("language.", "language.[citation needed]")
    text = "\n".join([*MENU, "  " + cited, JS, COOKIES, "Thank you!", "x" * 1001 + " is a long token.", *LINES[1:6]])
    why, _, cleaned = c4_one(text)
    assert why is None
    assert cleaned == "\n".join(LINES[:6])
    filters = pytest.importorskip("datatrove.pipeline.filters")
    from datatrove.data import Document

    doc = Document(text=text, id="0")
    assert filters.C4QualityFilter().filter(doc) is True and doc.text == cleaned


@pytest.mark.parametrize("text,why", [
    ("\n".join([LOREM, *LINES]), "lorem_ipsum"),
    ("\n".join([*LINES[:3], "The function returns {'key': 'value'} when called.", *LINES[3:]]), "curly_bracket"),
    ("\n".join([JS, "Our function {x} works.", *LINES]), "curly_bracket"),
    ("\n".join([*MENU, *LINES[:3]]), "too_few_sentences"),
    ("\n".join(LINES[:2]) + "\n" + THAMES, None),  # 2 + 4 sentences in 3 lines
    ("", "too_few_sentences"),
])
def test_c4_document_rules(text: str, why: str | None):
    assert c4_one(text)[0] == why
    assert datatrove_reason("C4QualityFilter", text) == why


def test_c4_stage_counts_lines_and_keeps_rejected_text():
    stage = resolve_stage("web.c4_quality")
    ok = "\n".join([*MENU, JS, *LINES])
    bad = "\n".join(MENU)
    ctx = TaskContext()
    out = stage.fn(pa.record_batch({"id": ["ok", "bad"], "text": [ok, bad]}), stage.params(), ctx)
    assert out.kept.column("text").to_pylist() == ["\n".join(LINES)]
    assert out.rejected.column("text").to_pylist() == [bad]
    assert out.rejected.column("detail").to_pylist() == ["sentences=0 (threshold 5)"]
    assert dict(ctx.stats.counters) == {  # datatrove's C4QualityFilter counts the same lines
        "line-total": 2 * len(MENU) + 1 + len(LINES), "line-filter-no_terminal_punc": 2 * len(MENU),
        "line-filter-javascript": 1, "line-kept": len(LINES), "filter.too_few_sentences": 1}


# ------------------------------------------------------------------ FineWeb
@pytest.mark.parametrize("text,why", [
    ("\n \n\t", "empty"),
    ("\n".join([*MENU, *MENU[:3], PY]), "line_punct_ratio"),
    ("\n".join(["Yes.", "No.", "Maybe.", "Later.", PY]), "short_line_ratio"),
    ("\n".join([PY, THAMES, LINES[3], LINES[3]]), "char_dup_ratio"),
    ("\n".join(f"{i}. Item number {i}." for i in range(1, 12)) + "\n" + LINES[0], "short_line_ratio"),
    (PY + "\n" + THAMES, None),
])
def test_fineweb_rules(text: str, why: str | None):
    assert reasons(fineweb.fineweb_reasons, [text], params=fineweb.FineWebQualityParams()) == [why]
    assert datatrove_reason("FineWebQualityFilter", text) == why


def test_fineweb_list_ratio_and_exclude_zero():
    listing = "\n".join(f"Step {i}: open the valve." for i in range(1, 12))
    p = fineweb.FineWebQualityParams(short_line_thr=1.0, new_line_ratio=0.1)
    out, details = fineweb.fineweb_reasons(pa.array([listing]), p)
    assert out == ["list_ratio"] and details[0].startswith("newlines_per_word=0.1")
    no_punct = "\n".join(["Home page of the River Thames Trust", "Contact the volunteers of the trust"])
    assert reasons(fineweb.fineweb_reasons, [no_punct], params=fineweb.FineWebQualityParams()) == ["line_punct_ratio"]
    keep_zero = fineweb.FineWebQualityParams(line_punct_exclude_zero=True)
    assert reasons(fineweb.fineweb_reasons, [no_punct], params=keep_zero) == [None]


# ------------------------------------------------------------------ bad input
def test_bad_input_never_crashes_and_gets_datatroves_reasons():
    ten_mb = (THAMES + " ") * (10_000_000 // (len(THAMES) + 1))
    mixed = "Python は 1991 年に登場した。The language 很好 и русский текст. 파이썬은 좋다."
    surrogates = clean_text(["broken \udc80\udcff bytes from surrogateescape"]).to_pylist()[0]
    texts = ["", "  \n\t ", ten_mb, mixed, surrogates, "(" * 200_000 + "a", None]
    assert "\ufffd" in surrogates
    batch = pa.record_batch({"id": [str(i) for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    got = {}
    for name in ("web.gopher_quality", "web.gopher_repetition", "web.c4_quality", "web.fineweb_quality"):
        stage = resolve_stage(name)
        out = stage.fn(batch, stage.params(), TaskContext())
        rej = out.rejected
        got[name] = dict(zip(rej.column("id").to_pylist(), rej.column("reason").to_pylist())) if rej else {}
    assert got["web.gopher_quality"] == {"0": "gopher_short_doc", "1": "gopher_short_doc", "2": "gopher_long_doc",
                                         "3": "gopher_short_doc", "4": "gopher_short_doc", "5": "gopher_short_doc",
                                         "6": "gopher_short_doc"}
    assert got["web.gopher_repetition"]["0"] == got["web.gopher_repetition"]["6"] == "empty"
    assert got["web.gopher_repetition"]["2"] == "duplicated_5_n_grams"  # one sentence, 45,000 times
    assert got["web.c4_quality"] == {k: "too_few_sentences" for k in "013456"}  # 2: one line, 180,000 sentences
    assert got["web.fineweb_quality"]["1"] == "empty" and got["web.fineweb_quality"]["2"] == "line_punct_ratio"


def test_an_override_takes_null_only_where_the_rule_can_be_disabled():
    from pydantic import ValidationError

    from arcforge.pipelines.web.heuristics.c4 import C4QualityParams
    from arcforge.pipelines.web.heuristics.gopher_quality import GopherQualityParams

    with pytest.raises(ValidationError, match="min_words_per_line"):
        C4QualityParams(language_overrides={"zh": {"min_words_per_line": None}})  # C4 disables with -1
    p = GopherQualityParams(language_overrides={"zh": {"min_avg_word_length": None}})
    assert p.language_overrides["zh"].model_fields_set == {"min_avg_word_length"}


def test_overrides_survive_the_round_trip_a_task_makes():
    from arcforge.pipelines.web.heuristics.c4 import C4QualityParams

    p = C4QualityParams(language_overrides={"zh": {"min_words_per_line": -1, "min_num_sentences": 1}})
    dumped = p.model_dump()
    assert dumped["language_overrides"] == {"zh": {"min_words_per_line": -1, "min_num_sentences": 1}}
    assert C4QualityParams.model_validate(dumped) == p  # what every task does with its params
