"""The mixture YAML as typed models: token budgets, stages, sources, storage.

``arcforge.tokenize.mixture`` plans and writes blends from a validated ``MixtureSpec``;
``parse_tokens`` reads token counts such as ``1.5B`` (also used by training configs).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from arcforge.runtime.config import S3Config, read_yaml, validate_mapping
from arcforge.tokenize.bucket_epochs import parse_table


_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_TOKENS = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([KMBGT]?)\s*$", re.IGNORECASE)


def parse_tokens(value: Any) -> int:
    """``4096``, ``"2.5M"``, ``"500B"``, ``"15T"`` -> an int."""
    if isinstance(value, bool):
        raise ValueError("expected a token count such as 2000000, '2M', '500B' or '15T'")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("must be positive")
        return int(value)
    m = _TOKENS.match(str(value))
    if not m:
        raise ValueError("expected a token count such as 2000000, '2M', '500B' or '15T'")
    n = int(float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2).upper()])
    if n <= 0:
        raise ValueError("must be positive")
    return n


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(_Strict):
    source: str
    bucket: str | None = None  # null: every bucket of the source
    weight: float | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    n_buckets: int | None = Field(None, ge=1)  # for `buckets`; default: the table's highest bucket + 1
    buckets: dict[str, float] | None = None  # "A-B" bucket range -> epochs (0 drops); see bucket_epochs

    @model_validator(mode="after")
    def _one(self) -> SourceSpec:
        if self.buckets is not None:
            given = [k for k in ("bucket", "weight", "epochs") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"give either a buckets table or {', '.join(given)}, not both (the table gives each bucket its epochs)")
            return self
        if self.n_buckets is not None:
            raise ValueError("n_buckets goes with a buckets table")
        if (self.weight is None) == (self.epochs is None):
            raise ValueError("give exactly one of weight or epochs")
        return self

    @field_validator("buckets", mode="before")
    @classmethod
    def _bucket_table(cls, v: Any, info: ValidationInfo) -> Any:
        """Keys as strings (YAML reads ``7:`` as an int); ranges checked here, so a gap or an
        overlap is an error on this key before any shard is read."""
        if not isinstance(v, dict):
            return v
        table = {str(k): x for k, x in v.items()}
        parse_table(table, info.data.get("n_buckets"))
        return table

    @field_validator("bucket", mode="before")
    @classmethod
    def _bucket_str(cls, v: Any) -> Any:
        return None if v is None else str(v)


class MixStageSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    tokens: int | None = None  # budget; may be left out when every source gives epochs
    seq_length: int = Field(4096, ge=16)
    shards: str | list[str] | None = None  # overrides the mixture's shards
    max_epochs: float | None = Field(None, gt=0)
    split: str = "99,1,0"
    sources: list[SourceSpec] = Field(min_length=1)

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        return None if v is None else parse_tokens(v)


class MixStorage(_Strict):
    s3: S3Config = Field(default_factory=S3Config)  # the same keys as a run config's storage.s3


class MixtureSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    storage: MixStorage = Field(default_factory=MixStorage)
    shards: str | list[str] | None = None
    output: str | None = None
    max_epochs: float = Field(4.0, gt=0)
    # a cap on a source's (or bucket's) epochs summed over every stage; None: no such cap
    max_total_epochs: float | None = Field(None, gt=0)
    stages: list[MixStageSpec] = Field(min_length=1)
    # held-out shards stage(s) for every stage's per-split.json (weights: their tokens); test
    # defaults to valid, and without either both repeat the training blend
    valid: str | list[str] | None = None
    test: str | list[str] | None = None


# -- resolved plan --------------------------------------------------------------------------


def read_spec(path: str) -> tuple[MixtureSpec, dict[str, Any]]:
    data = read_yaml(path, "mixture")
    return validate_mapping(MixtureSpec, data, path, "name, shards, stages"), data
