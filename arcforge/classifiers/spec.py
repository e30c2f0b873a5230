"""The ``arcforge classifiers train`` config: typed, and checked before anything heavy.

Every problem is one line, ``FILE: KEY: what was expected`` (as for run configs): the
kind, the hyperparameters, the input files (globs that match, formats that can be
read, the text and label columns present in each file) and the output directory (it
can be written) are all checked before fastText trains or torch is imported.

    name: wiki_vs_rest
    kind: fasttext                 # fasttext | embedding
    data: {files: [labelled/*.jsonl], text_key: text, label_key: label}
    positive: wiki                 # this label value vs every other one
    holdout: 0.2
    seed: 0
    max_chars: 2000
    output: models/wiki_vs_rest
    fasttext: {lr: 0.1, epoch: 5, wordNgrams: 2, dim: 100}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from arcforge.runtime import storage
from arcforge.runtime.yamlconf import ConfigError, read_yaml, validate_mapping

_DOC_COLUMNS = {"id": "id_key", "url": "url_key", "language": "language_key"}  # io.read maps these itself
_RESERVED = ("text", "source", "metadata")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    files: list[str] = Field(min_length=1)  # local or s3:// globs of labelled JSONL (.gz/.zst), Parquet or CSV
    text_key: str = "text"
    label_key: str = "label"
    format: Literal["jsonl", "parquet", "csv"] | None = None  # None: from each file's extension


class FastTextSpec(_Strict):
    """fastText's own names and supervised defaults, except ``wordNgrams: 2`` (DCLM's bigrams)
    and ``thread: 1`` (the only setting that trains deterministically)."""

    lr: float = Field(0.1, gt=0)
    epoch: int = Field(5, ge=1)
    wordNgrams: int = Field(2, ge=1)  # noqa: N815 - fastText's names
    dim: int = Field(100, ge=1)
    minn: int = Field(0, ge=0)
    maxn: int = Field(0, ge=0)
    minCount: int = Field(1, ge=1)  # noqa: N815
    bucket: int = Field(2_000_000, ge=0)  # hashed n-gram rows: the model file is about (words + bucket) * dim * 4 bytes
    loss: Literal["softmax", "hs", "ns", "ova"] = "softmax"
    neg: int = Field(5, ge=1)
    thread: int = Field(1, ge=1)
    lowercase: bool = False
    positive_label: str = Field("__label__hq", pattern=r"^__label__\S+$")
    negative_label: str = Field("__label__cc", pattern=r"^__label__\S+$")

    @model_validator(mode="after")
    def _check(self) -> FastTextSpec:
        if self.maxn and self.maxn < self.minn:
            raise ValueError(f"maxn ({self.maxn}) must be 0 or at least minn ({self.minn})")
        if self.positive_label == self.negative_label:
            raise ValueError("positive_label and negative_label must differ")
        return self

    def hyperparameters(self) -> dict[str, Any]:
        """The arguments of ``fasttext.train_supervised``."""
        return self.model_dump(exclude={"lowercase", "positive_label", "negative_label"})


class EmbeddingSpec(_Strict):
    C: float = Field(1.0, gt=0)  # inverse L2 strength of the logistic regression
    max_iter: int = Field(1000, ge=1)
    class_weight: Literal["balanced"] | None = None
    batch_size: int = Field(64, ge=1)  # sentences per encoder call
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees a GPU

    def hyperparameters(self) -> dict[str, Any]:
        return self.model_dump(include={"C", "max_iter", "class_weight"})


class TrainConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["fasttext", "embedding"]
    data: DataSpec
    positive: str | int | bool  # the label value that is "good"; every other value is the negative class
    holdout: float = Field(0.2, gt=0, lt=1)  # share of examples (by a seeded hash of the text) held out
    seed: int = 0
    max_chars: int = Field(2000, ge=1)  # prefix of each text the model reads, in training and scoring
    output: str
    fasttext: FastTextSpec = Field(default_factory=FastTextSpec)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)

    def hyperparameters(self) -> dict[str, Any]:
        return (self.fasttext if self.kind == "fasttext" else self.embedding).hyperparameters()


@dataclass
class TrainPlan:
    path: str  # the config file, for error lines
    cfg: TrainConfig
    files: list[str]  # data.files expanded, sorted
    output: Path


def canonical_label(value: Any) -> str:
    """Labels compare as text, so ``positive: 1`` matches 1 and "1", ``true`` matches true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_params(spec: DataSpec) -> Any:
    """io.read's params for labelled data: the text plus the label column, nothing else."""
    from arcforge.runtime.io.read import ReadParams

    kw: dict[str, Any] = {"format": spec.format, "text_key": spec.text_key, "id_key": None, "url_key": None,
                          "language_key": None, "metadata_keys": [], "source": "labelled"}
    if spec.label_key in _DOC_COLUMNS:
        kw[_DOC_COLUMNS[spec.label_key]] = spec.label_key
    else:
        kw["keep"] = [spec.label_key]
    return ReadParams(**kw)


def _check_columns(path: str, spec: DataSpec, files: list[str]) -> None:
    from arcforge.runtime.io.read import entries, input_schema

    if spec.label_key in _RESERVED or spec.label_key == spec.text_key:
        raise ConfigError(f"{path}: data.label_key: {spec.label_key!r} cannot hold labels (the text, or a column io.read "
                          f"reserves: {', '.join(_RESERVED)}); rename the column")
    params = read_params(spec)
    s3 = storage.active_options()
    for uri in files:
        try:
            es = entries([uri], s3, params)
            schema, first = input_schema(es, s3, params)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{path}: data.files: {' '.join(str(exc).split())[:300]}") from None
        if schema is None:
            raise ConfigError(f"{path}: data.files: {first} is plain text; labelled data is JSONL, Parquet or CSV")
        cols = f"its columns are: {', '.join(schema.names)}"[:300]
        for key in ("text_key", "label_key"):
            if getattr(spec, key) not in schema.names:
                raise ConfigError(f"{path}: data.{key}: {getattr(spec, key)!r} is not a column of {first}; {cols}")


def _check_output(path: str, output: str) -> Path:
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{path}: output: {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".arcforge-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{path}: output: cannot write to {out} ({exc.strerror or exc})") from None
    return out


def load_train_config(path: str | Path) -> TrainPlan:
    """Read and check a classifier config; every problem is one ConfigError line."""
    path = str(path)
    data = read_yaml(path, "classifier config")
    cfg = validate_mapping(TrainConfig, data, path, "name, kind, data, positive, output")
    other = "embedding" if cfg.kind == "fasttext" else "fasttext"
    if other in data:
        raise ConfigError(f"{path}: {other}: hyperparameters for kind {other}, but kind is {cfg.kind}")
    files: list[str] = []
    for pattern in cfg.data.files:  # each pattern must match: a typo must not drop a class silently
        try:
            matched = storage.expand_inputs([pattern])
        except OSError as exc:
            raise ConfigError(f"{path}: data.files: cannot list {pattern} ({' '.join(str(exc).split())[:300]})") from None
        if not matched:
            raise ConfigError(f"{path}: data.files: no file matches {pattern!r}")
        files += [f for f in matched if f not in files]
    _check_columns(path, cfg.data, files)
    return TrainPlan(path, cfg, files, _check_output(path, cfg.output))
