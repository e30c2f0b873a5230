"""The mixture YAML as typed models: token budgets, stages, sources, storage.

``arcforge.tokenize.mixture`` plans and writes blends from a validated ``MixtureSpec``;
``parse_tokens`` reads token counts such as ``1.5B`` (also used by training configs).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from arcforge.runtime.config import S3Config, read_yaml, validate_mapping


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

    @model_validator(mode="after")
    def _one(self) -> SourceSpec:
        if (self.weight is None) == (self.epochs is None):
            raise ValueError("give exactly one of weight or epochs")
        return self

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
    stages: list[MixStageSpec] = Field(min_length=1)


# -- resolved plan --------------------------------------------------------------------------


def read_spec(path: str) -> tuple[MixtureSpec, dict[str, Any]]:
    data = read_yaml(path, "mixture")
    return validate_mapping(MixtureSpec, data, path, "name, shards, stages"), data
