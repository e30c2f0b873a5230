"""``filter``: select rows by thresholds on attribute columns, a reason per rule.

Scores are attributes (Dolma's split): a scoring stage (language ID, a quality
classifier) only adds columns, and this cheap stage decides what to keep. The
thresholds are its params, so changing one re-runs this stage and what follows,
never the model. Rules are checked in order; the first a row fails names its
reason (the rule's ``reason``, or ``<column>_<op>``), and the detail holds the
value and the rule. A null value fails every rule except ``is_null``.

    - name: select
      uses: filter
      input: langid
      params:
        rules:
          - {column: language, op: in, value: [en, zh], reason: language_not_selected}
          - {column: language_score, op: ">=", value: 0.4, reason: low_language_score}

The columns a rule reads are checked against the stage's input schema when the
config is loaded, so a typo is a config error before any engine starts.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from arcforge.runtime.stage import MapStage, Output, Resources, StageParams, TaskContext, split_rejected

Op = Literal[">=", ">", "<=", "<", "==", "!=", "in", "not_in", "is_null", "not_null"]
_NAMES = {">=": "ge", ">": "gt", "<=": "le", "<": "lt", "==": "eq", "!=": "ne", "in": "in", "not_in": "not_in",
          "is_null": "is_null", "not_null": "not_null"}
_COMPARE = {">=": pc.greater_equal, ">": pc.greater, "<=": pc.less_equal, "<": pc.less, "==": pc.equal, "!=": pc.not_equal}


class Rule(StageParams):
    column: str
    op: Op
    value: Any = None
    reason: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]+$")

    @model_validator(mode="after")
    def _value_fits(self) -> Rule:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value")
        if self.op in ("is_null", "not_null") and self.value is not None:
            raise ValueError(f"op {self.op!r} takes no value")
        if self.op in _COMPARE and self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        return self

    @property
    def why(self) -> str:
        return self.reason or f"{self.column}_{_NAMES[self.op]}"

    def text(self) -> str:
        return f"{self.column} {self.op}" + ("" if self.value is None else f" {self.value!r}")


class FilterParams(StageParams):
    rules: list[Rule] = Field(min_length=1)


def rule_mask(column: pa.Array, rule: Rule) -> np.ndarray:
    """True where the row passes the rule (nulls fail all but ``is_null``)."""
    if rule.op == "is_null":
        mask = pc.is_null(column)
    elif rule.op == "not_null":
        mask = pc.is_valid(column)
    elif rule.op in ("in", "not_in"):
        mask = pc.is_in(column, value_set=pa.array(rule.value, column.type if len(rule.value) else None))
        if rule.op == "not_in":
            mask = pc.invert(mask)
        mask = pc.if_else(pc.is_valid(column), mask, False)
    else:
        mask = _COMPARE[rule.op](column, pa.scalar(rule.value).cast(column.type) if pa.types.is_primitive(column.type) else rule.value)
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def select_rows(batch: pa.RecordBatch, params: FilterParams, ctx: TaskContext) -> Output:
    n = batch.num_rows
    reasons = np.full(n, None, dtype=object)
    details = np.full(n, None, dtype=object)
    for rule in params.rules:
        column = batch.column(rule.column)
        failed = ~rule_mask(column, rule) & (reasons == None)  # noqa: E711 - numpy elementwise
        if not failed.any():
            continue
        idx = np.flatnonzero(failed)
        reasons[idx] = rule.why
        values = column.take(pa.array(idx)).to_pylist()
        details[idx] = [f"{rule.column}={v!r} fails {rule.text()}" for v in values]
        ctx.stats.update(f"filter.{rule.why}", int(len(idx)))
    return split_rejected(batch, reasons.tolist(), details.tolist())


FILTER = MapStage(
    "filter",
    FilterParams,
    select_rows,
    requires=(),
    reads=lambda params: [r.column for r in params.rules],
    resources=Resources(cpus=1),
    engine="local",
    doc="Keep rows that pass every rule on attribute columns; a reason per rule.",
)
