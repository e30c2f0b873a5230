"""Language ID batch function with the real lid.176.ftz model, no engine."""

from __future__ import annotations

import pytest

from arcforge.runtime.documents import DOC_SCHEMA, docs_table
from arcforge.runtime.stage import TaskContext
from arcforge.pipelines.web.langid import LangIdParams, bundled_lid_model, identify_language, load_lid_model


@pytest.fixture(scope="module")
def model():
    return load_lid_model(LangIdParams())


def _batch(texts):
    return docs_table([{"id": str(i), "text": t, "source": "t"} for i, t in enumerate(texts)], DOC_SCHEMA).to_batches()[0]


def test_model_ships_in_the_wheel():
    assert bundled_lid_model().name == "lid.176.ftz"
    assert bundled_lid_model().stat().st_size > 500_000


def test_labels_real_languages(model):
    texts = [
        "The quick brown fox jumps over the lazy dog while the farmer watches.",
        "这是一个用于测试语言识别的中文句子，我们希望模型能够正确识别它。",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "multi\nline\ntext in English with several\nline breaks",
    ]
    ctx = TaskContext(state=model)
    out = identify_language(_batch(texts), LangIdParams(), ctx)
    assert out.kept.column("language").to_pylist() == ["en", "zh", "de", "en"]
    assert all(0.5 < s <= 1.0001 for s in out.kept.column("language_score").to_pylist())
    assert ctx.stats.counters["language.en"] == 2


def test_filters_by_language_and_score(model):
    texts = ["An English sentence about data pipelines.", "Une phrase en français sur les données.", "zzzz qqq"]
    out = identify_language(_batch(texts), LangIdParams(languages=["en"], min_score=0.3), TaskContext(state=model))
    assert out.kept.column("text").to_pylist() == [texts[0]]
    assert "language_not_selected" in out.rejected.column("reason").to_pylist()
    assert out.rejected.column("detail").to_pylist()[0].startswith("fr:")
