"""The heuristic filters of issue 9, one module per family, each a map stage that applies
datatrove 0.10.1's filter of the same name with its rules, order, defaults and reasons:
``gopher_quality``, ``gopher_repetition``, ``c4`` (line cleaning that rewrites ``text``)
and ``fineweb``. ``words`` tokenizes once for all of them (see its rule for CJK text).

What they share lives here: per-language thresholds (``language_overrides``, keyed by the
row's language: its ``language`` column, or the script-detected ``zh``/``ja``/``ko`` when
the batch has none) and Python's line and whitespace semantics in Arrow. What every
rule-based filter shares, web or code (first failing rule, reason, detail), is
``arcforge.runtime.rules``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, create_model, model_serializer

from arcforge.runtime.rules import finish, flag, num, text_of
from arcforge.runtime.stage import MapStage, Output, Resources, TaskContext

LINE_BREAKS = r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\x{2028}\x{2029}]"  # str.splitlines()'s, RE2 syntax
# the characters str.isspace() accepts: str.split(), str.strip() and spaCy use these
PY_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007" \
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
WS_CLASS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE) + "]"  # RE2 character class


def language_key(language: str | None) -> str | None:
    """``zh-Hans``, ``zh_CN`` and ``ZH`` all name ``zh``."""
    if not language:
        return None
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0] or None


def detect_languages(text: pa.Array) -> list[str]:
    """Per row: ``ja``/``zh``/``ko`` by script (see the module rule), else ``en``."""
    out = np.full(len(text), "en", dtype=object)
    some = pc.fill_null(pc.match_substring_regex(text, r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]"), False)
    rows = np.flatnonzero(np.asarray(some.to_numpy(zero_copy_only=False), dtype=bool))
    if len(rows) == 0:
        return out.tolist()
    sub = text.take(pa.array(rows))
    count = lambda rx: np.asarray(pc.fill_null(pc.count_substring_regex(sub, rx), 0), dtype=np.int64)  # noqa: E731
    letters = count(r"\pL")
    han, kana, hangul = count(r"\p{Han}"), count(r"[\p{Hiragana}\p{Katakana}]"), count(r"\p{Hangul}")
    cjk = han + kana
    out[rows[2 * hangul > letters]] = "ko"
    out[rows[(2 * cjk > letters) & (kana == 0)]] = "zh"
    out[rows[(2 * cjk > letters) & (kana > 0)]] = "ja"
    return out.tolist()


def clean_text(values: list[str | None]) -> pa.Array:
    """Python strings to Arrow; lone surrogates (text decoded with ``surrogateescape``)
    become U+FFFD instead of failing the batch."""
    try:
        return pa.array(values, pa.string())
    except (UnicodeEncodeError, pa.ArrowException):
        fix = lambda s: s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # noqa: E731
        return pa.array([None if s is None else fix(s) for s in values], pa.string())


class _Override(BaseModel):
    """One language's thresholds: only the fields it sets are dumped, so the params a task
    re-validates (and the stage fingerprint) hold exactly what the config said."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_serializer(mode="wrap")
    def _only_set(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


def override_model(params: type[BaseModel], skip: tuple[str, ...] = ("language_overrides",)) -> type[BaseModel]:
    """A model with every field of ``params`` optional: one language's thresholds. A field
    left out keeps the stage's value; an explicit ``null`` is accepted only where the stage's
    own field takes ``None`` (a disabled rule), so ``min_num_sentences: null`` is a config
    error, not a crash in a worker (the default ``None`` is never validated)."""
    fields: dict[str, Any] = {name: (f.annotation, None) for name, f in params.model_fields.items() if name not in skip}
    return create_model(f"{params.__name__}Override", __base__=_Override, **fields)


def for_language(params: Any, language: str | None) -> Any:
    """``params`` with the overrides of ``language`` applied (an unset field keeps the stage's)."""
    over = params.language_overrides.get(language) if language is not None else None
    if over is None:
        return params
    return params.model_copy(update={k: getattr(over, k) for k in over.model_fields_set})


def row_languages(batch: pa.RecordBatch | pa.Table, text: pa.Array) -> list[str]:
    """Each row's language: the ``language`` column where set, else the script's (see words)."""
    detected: list[str] | None = None
    if "language" in batch.schema.names:
        langs = [language_key(v) for v in batch.column("language").to_pylist()]
        if all(v is not None for v in langs):
            return langs  # type: ignore[return-value]
        detected = detect_languages(text)
        return [v if v is not None else d for v, d in zip(langs, detected)]
    return detect_languages(text)


def groups(languages: list[str], params: Any) -> dict[str | None, np.ndarray]:
    """Row indices per override key (``None``: the stage's own thresholds)."""
    out: dict[str | None, list[int]] = {}
    for i, lang in enumerate(languages):
        out.setdefault(lang if lang in params.language_overrides else None, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def splitlines(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``str.splitlines()`` of every row: (flat lines, row of each line)."""
    trimmed = pc.replace_substring_regex(text, f"(?:{LINE_BREAKS})$", "", max_replacements=1)
    lines = pc.split_pattern_regex(trimmed, LINE_BREAKS)
    flat, parents = pc.list_flatten(lines), pc.list_parent_indices(lines).to_numpy()
    real = ~flag(pc.equal(pc.utf8_length(text), 0))[parents]  # "" has no line, arrow gives one empty piece
    return flat.filter(pa.array(real)), parents[real]


def py_strip(a: pa.Array, side: str = "both") -> pa.Array:
    fn = {"both": pc.utf8_trim, "left": pc.utf8_ltrim, "right": pc.utf8_rtrim}[side]
    return fn(a, PY_WHITESPACE)


def duplicates(parents: np.ndarray, elements: pa.Array, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """datatrove's ``find_duplicates`` per row: (repeated elements, characters in them)."""
    if len(elements) == 0:
        return np.zeros(n_rows), np.zeros(n_rows)
    table = pa.table({"p": parents, "s": elements, "n": pc.utf8_length(elements)})
    g = table.group_by(["p", "s"], use_threads=False).aggregate([("n", "count"), ("n", "max")])
    p, count, length = g.column("p").to_numpy(), num(g.column("n_count")), num(g.column("n_max"))
    return np.bincount(p, weights=count - 1, minlength=n_rows), np.bincount(p, weights=(count - 1) * length, minlength=n_rows)


def prepare(text: pa.Array, language: pa.Array | None) -> tuple[pa.Array, list[str], np.ndarray, np.ndarray]:
    """What every filter starts from: the text as one string array (nulls as empty), each
    row's language, and empty per-row reason and detail arrays."""
    text = text_of(pa.table({"text": text}))
    table = pa.table({"text": text} if language is None else {"text": text, "language": language})
    n = len(text)
    return text, row_languages(table, text), np.full(n, None, dtype=object), np.full(n, None, dtype=object)


@dataclass(frozen=True)
class RulesFn:
    """A stage's batch function from ``reasons_of(text, params, language) -> (reasons,
    details)``: the row's language column when there is one, then :func:`finish`."""

    reasons_of: Callable[..., tuple[list, list]]

    def __call__(self, batch: pa.RecordBatch, params: Any, ctx: TaskContext) -> Output:
        language = batch.column("language") if "language" in batch.schema.names else None
        reasons, details = self.reasons_of(batch.column("text"), params, language)
        return finish(batch, reasons, details, ctx)


def rules_stage(name: str, params: type, reasons_of: Callable[..., tuple[list, list]], doc: str, version: str = "1") -> MapStage:
    """A filter stage over the text (one cpu, local by default) whose rules ``reasons_of`` applies."""
    return MapStage(name, params, RulesFn(reasons_of), requires=("text",), resources=Resources(cpus=1),
                    engine="local", version=version, doc=doc)
