"""Which member of a duplicate cluster survives: one deterministic keep rule for every dedup stage.

A rule is a list of keys, most important first; ``-name`` prefers the largest value,
``name`` the smallest. The default, ``["-quality_score", "-length", "id"]``, keeps the
highest quality score, then the longest text, then the smallest id (unique, so the rule is
a total order and the keeper never depends on the engine or the partitioning).

* ``length`` is the text's length in characters (the stage's text column), computed;
* ``id`` is the document id (compared as a string);
* any other name is an input column: numeric columns may be ``-`` (descending), string
  columns only ascending. A column the input does not have is left out of the rule (so the
  default works before and after quality scoring) and the stage counts that once in its
  report; a missing value ranks after every present one.

``keep_columns`` turns a batch into sort columns ``keep_0 .. keep_k`` in which the preferred
document is the *smallest*: a global stage passes them as ``order_by`` to ``group_reduce``
and the first row of each cluster, in the canonical order, is its keeper.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_KEEP = ("-quality_score", "-length", "id")
COMPUTED = ("length", "id")


def parse_rule(keep: list[str] | tuple[str, ...]) -> list[tuple[str, bool]]:
    """``[(name, descending)]``; raises ValueError on an empty or repeated key."""
    rule = [(k[1:], True) if k.startswith("-") else (k, False) for k in keep]
    names = [n for n, _ in rule]
    if not rule or any(not n for n in names):
        raise ValueError(f"keep: a non-empty list of column names, '-name' for largest first, got {list(keep)}")
    if len(set(names)) != len(names):
        raise ValueError(f"keep: repeated key in {list(keep)}")
    if ("id", True) in rule:
        raise ValueError("keep: 'id' is compared as a string and can only be ascending")
    return rule


def resolve_rule(keep: list[str] | tuple[str, ...], schema: pa.Schema) -> tuple[list[tuple[str, bool]], list[str]]:
    """The rule's keys that apply to ``schema`` and the names left out (absent columns).

    Raises ValueError for a descending key on a column that is not numeric."""
    used, missing = [], []
    for name, desc in parse_rule(keep):
        if name in COMPUTED:
            used.append((name, desc))
            continue
        if name not in schema.names:
            missing.append(name)
            continue
        t = schema.field(name).type
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        if not numeric and not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise ValueError(f"keep: column {name} has type {t}; keys must be numbers or strings")
        if desc and not numeric:
            raise ValueError(f"keep: -{name} asks for the largest first, but {name} is {t}, not a number")
        used.append((name, desc))
    return used, missing


def keep_fields(rule: list[tuple[str, bool]]) -> list[pa.Field]:
    """The sort columns' fields: float64 for numbers (negated when descending), string for the rest."""
    out = []
    for i, (name, _) in enumerate(rule):
        out.append(pa.field(f"keep_{i}", pa.string() if name == "id" else pa.float64()))
    return out


def keep_columns(table: pa.Table | pa.RecordBatch, rule: list[tuple[str, bool]], text_column: str = "text") -> list[pa.Array]:
    """One array per key, ascending = preferred; missing values rank last (``+inf``, or for
    strings the null that ``resolve_rule``'s ascending string keys sort first is replaced by
    ``"\\U0010ffff"``)."""
    cols = []
    for name, desc in rule:
        if name == "id":
            cols.append(pc.cast(table.column("id"), pa.string()))
            continue
        if name == "length":
            values = pc.utf8_length(pc.fill_null(table.column(text_column), "")).cast(pa.float64())
        elif pa.types.is_string(table.schema.field(name).type) or pa.types.is_large_string(table.schema.field(name).type):
            cols.append(pc.fill_null(pc.cast(table.column(name), pa.string()), "\U0010ffff"))
            continue
        else:
            values = pc.cast(table.column(name), pa.float64())
        arr = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
        arr[np.isnan(arr)] = np.inf if not desc else -np.inf
        arr = -arr if desc else arr  # a missing value is +inf after the sign flip either way
        cols.append(pa.array(arr, pa.float64()))
    return cols
