"""The ``checks:`` of a stage in a run config: data-quality expectations on its stats.

A check names a metric the runtime already counts (a drop share, the error-quarantine
share, the language mix, the bucket spread) and the band it must stay in. The schema
lives on the ground floor so that ``load_plan`` rejects a bad check with one line before
any engine starts; ``arcforge.report.checks`` evaluates checks against a committed
stage, and Dagster turns each into an asset check (``blocking`` ones stop downstream
assets in the same run). Checks are not part of a stage's fingerprint: changing a
threshold re-runs nothing, it only re-evaluates.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

METRICS = {
    "drop_share": "documents dropped (for one reason, or all) / documents in",
    "error_share": "rows quarantined because the stage raised / documents in",
    "docs_out": "documents the stage kept",
    "language_distance": "total variation distance between the output's language shares and `reference`",
    "bucket_max_share": "the largest share of documents in one quality bucket",
    "buckets_nonempty": "quality buckets holding at least one document",
}


class CheckConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["drop_share", "error_share", "docs_out", "language_distance", "bucket_max_share", "buckets_nonempty"]
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")  # default: the metric (and reason)
    reason: str | None = None  # drop_share only: one drop reason (default: every reason)
    min: float | None = None
    max: float | None = None
    reference: dict[str, float] | None = None  # language_distance: language -> expected share
    blocking: bool = True  # a failed blocking check stops downstream assets (Dagster)

    @model_validator(mode="after")
    def _band(self) -> CheckConfig:
        if self.min is None and self.max is None:
            raise ValueError("a check needs `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if self.reason is not None and self.metric != "drop_share":
            raise ValueError("`reason` applies to metric drop_share only")
        if (self.reference is not None) != (self.metric == "language_distance"):
            raise ValueError("metric language_distance needs `reference` (language -> share), and only it takes one")
        if self.reference is not None and (not self.reference or any(v < 0 for v in self.reference.values())):
            raise ValueError("`reference` needs at least one language with a share >= 0")
        return self

    @property
    def check_name(self) -> str:
        """Unique within a stage (validated by the config loader): what Dagster and status show."""
        return self.name or (f"{self.metric}_{self.reason}" if self.reason else self.metric).replace("-", "_").replace(".", "_")

    def band(self) -> str:
        """``0.01 <= x <= 0.3``, in the units of the metric."""
        lo = f"{self.min:g} <= " if self.min is not None else ""
        hi = f" <= {self.max:g}" if self.max is not None else ""
        return f"{lo}{self.metric}{hi}"
