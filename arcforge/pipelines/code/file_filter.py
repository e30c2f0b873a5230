"""``code.file_filter``: the rule-based file filters of StarCoder's data (Li et al. 2023,
its "language selection" table), as NeMo Curator 1.4.0 applies them (``PerExtensionFilter``,
``XMLHeaderFilter``, ``HTMLBoilerplateFilter``), as one map stage.

GLM-4.5's source code goes through "rule-based filtering" before its quality tiers
(``../shared/reference/glm45.md``); BigCode's and DeepSeek-Coder's rules are the public ones
(peers.md). Each file's rule comes from its extension, from ``extension_rules.csv``: the
table NeMo Curator ships as ``code_meta.csv`` (BigCode's per-extension review of The Stack,
Apache-2.0), cut to the columns that decide (``extension, language, include, long_line,
alphanum, alpha``; empty = the rule is off). In order, the first failing rule is the reason:

* ``no_path``: the row has no path, so no extension;
* ``extension_unknown``: the table has no rule for the extension (NeMo Curator drops these;
  ``unknown: keep`` keeps them, unfiltered);
* ``extension_excluded``: the table's reviewers excluded the extension (``include`` 0);
* ``empty``: an empty file, with ``keep_empty: false`` (see below);
* ``xml_header``: ``<?xml version=`` in the first ``xml_prefix_chars`` characters (a data
  file under a code extension);
* ``long_line``: a line (``text.split("\\n")``) longer than the extension's ``long_line``;
* ``mean_line_length``: the mean line length, ``(len(text) + 1) / lines - 1``, over
  ``mean_line_length``; only where ``long_line`` applies, as in NeMo Curator;
* ``alphanum_fraction``: under ``alphanum`` of the characters match ``[a-zA-Z0-9\\n?!,.]``
  (NeMo Curator's class; The Stack used ``str.isalnum``, which also counts non-ASCII letters);
* ``alpha_fraction``: under ``alpha`` of the characters are letters (``str.isalpha``:
  data formats such as JSON and YAML must be mostly words);
* ``html_boilerplate`` (HTML only): the visible text (BeautifulSoup's ``html.parser``
  without ``script`` and ``style``) is under ``html_min_text_chars`` characters or under
  ``html_min_text_ratio`` of the file;
* ``too_few_lines`` / ``too_many_lines``: off unless ``min_lines`` / ``max_lines`` are set
  (NeMo Curator's ``NumberOfLinesOfCodeFilter``, whose 10-line floor would drop most
  ``__init__.py`` files).

An empty file of a known, included extension is kept (``keep_empty``; false rejects it as
``empty``): an empty ``__init__.py`` marks a Python package, and NeMo Curator's fractions
divide by zero on it. Everything but the HTML rule is
vectorised with Arrow; tests/test_code_file_filter.py checks the keep decisions against
NeMo Curator's filters, file by file, on real files of many kinds.
"""

from __future__ import annotations

import csv
import posixpath
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from arcforge.runtime.rules import Checks, ascii_counts, finish, flag, num, text_of
from arcforge.runtime.stage import MapStage, Output, Resources, StageParams, TaskContext

RULES_CSV = Path(__file__).with_name("extension_rules.csv")
ALPHANUM = string.ascii_letters + string.digits + "\n?!,."  # NeMo Curator's regex_alphanum: [a-zA-Z0-9\n?!,.]
# files the table names by their whole name: it keys them by the empty extension ("makefile",
# "dockerfile") and keys CMakeLists.txt under "txt"; any other .txt or extension-less file is unknown
NAMED = {"makefile": ("makefile", ""), "gnumakefile": ("makefile", ""), "dockerfile": ("dockerfile", ""),
         "cmakelists.txt": ("makefile", "txt")}


class ExtensionRule(BaseModel):
    """One extension's rule; ``None`` turns a rule off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str
    include: bool = True
    long_line: int | None = Field(1000, ge=1)
    alphanum: float | None = Field(0.25, ge=0, le=1)
    alpha: float | None = Field(None, ge=0, le=1)


@lru_cache(maxsize=1)
def table() -> dict[tuple[str, str], ExtensionRule]:
    """(language, extension) -> rule, as ``extension_rules.csv`` holds them."""
    out: dict[tuple[str, str], ExtensionRule] = {}
    with open(RULES_CSV, newline="") as f:
        for row in csv.DictReader(f):
            off = lambda v, conv: conv(v) if v != "" else None  # noqa: E731
            out[(row["language"], row["extension"])] = ExtensionRule(
                language=row["language"], include=row["include"] == "1", long_line=off(row["long_line"], int),
                alphanum=off(row["alphanum"], float), alpha=off(row["alpha"], float))
    return out


@lru_cache(maxsize=1)
def _by_extension() -> dict[str, tuple[str, str]]:
    """extension -> the (language, extension) key of its first row (``cmake`` is in two)."""
    out: dict[str, tuple[str, str]] = {}
    for language, ext in table():
        if ext and ext != "txt":
            out.setdefault(ext, (language, ext))
    return out


def _file_name(path: str) -> str:
    """The file's name, lower-cased, from a POSIX or Windows path."""
    return posixpath.basename(str(path).replace("\\", "/")).lower()


def rule_key(path: str) -> tuple[str, str] | None:
    """The table key of a file, by its name or its extension (case-insensitive), or None."""
    name = _file_name(path)
    if name in NAMED:
        return NAMED[name]
    return _by_extension().get(posixpath.splitext(name)[1][1:])


class FileFilterParams(StageParams):
    path: str = "path"  # the column with each file's path (its extension picks the rule)
    unknown: Literal["drop", "keep"] = "drop"  # a file whose extension the table lacks
    extensions: dict[str, ExtensionRule] = {}  # add or replace an extension's rule ("txt": {language: text})
    xml_prefix_chars: int | None = Field(100, ge=1)
    mean_line_length: float | None = Field(100, gt=0)  # where long_line applies
    html_min_text_ratio: float | None = Field(0.2, ge=0, le=1)
    html_min_text_chars: int = Field(100, ge=0)
    min_lines: int | None = Field(None, ge=1)
    max_lines: int | None = Field(None, ge=1)
    keep_empty: bool = True

    def rule_for(self, path: str | None) -> ExtensionRule | None:
        if path is None:
            return None
        ext = posixpath.splitext(_file_name(path))[1][1:]
        if ext in self.extensions:
            return self.extensions[ext]
        key = rule_key(path)
        return table()[key] if key is not None else None


def visible_text_chars(html: str) -> int:
    """Characters of an HTML file's text without its scripts and styles (BeautifulSoup's
    ``html.parser``, as NeMo Curator's ``HTMLBoilerplateFilter``)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, features="html.parser")
    for tag in soup(["script", "style"]):
        tag.extract()
    return len(soup.get_text())


@dataclass
class _Rules:
    """Each row's thresholds as arrays (NaN: the rule is off for that row)."""

    known: np.ndarray
    include: np.ndarray
    long_line: np.ndarray
    alphanum: np.ndarray
    alpha: np.ndarray
    html: np.ndarray

    @classmethod
    def of(cls, paths: list[str | None], params: FileFilterParams) -> _Rules:
        rules = [params.rule_for(p) for p in paths]
        val = lambda name: np.array([np.nan if r is None or getattr(r, name) is None  # noqa: E731
                                     else float(getattr(r, name)) for r in rules])
        return cls(known=np.array([r is not None for r in rules]), include=np.array([bool(r and r.include) for r in rules]),
                   long_line=val("long_line"), alphanum=val("alphanum"), alpha=val("alpha"),
                   html=np.array([r is not None and r.language == "html" for r in rules]))


def file_reasons(text: pa.Array, paths: list[str | None], params: FileFilterParams) -> tuple[list, list]:
    """Per row: the first failing rule (module docstring) and its measured value, or None."""
    text = text_of(pa.table({"text": text}))
    n = len(text)
    reasons, details = np.full(n, None, dtype=object), np.full(n, None, dtype=object)
    rules = _Rules.of(paths, params)
    chars = num(pc.utf8_length(text))
    c = Checks(np.arange(n), reasons, details)
    zero = np.zeros(n)
    c.check("no_path", np.array([p is None for p in paths]), zero, "path", "required")
    c.check("extension_unknown", ~rules.known & (params.unknown == "drop"), zero, "rule", "none for this extension")
    c.check("extension_excluded", rules.known & ~rules.include, zero, "include", 0)
    c.check("empty", (chars == 0) & ~params.keep_empty, zero, "chars", "keep_empty: false")
    c.open &= rules.known & (chars > 0)  # unknown-but-kept and empty files pass the measuring rules
    if params.xml_prefix_chars is not None:
        head = pc.utf8_slice_codeunits(text, 0, params.xml_prefix_chars)
        c.check("xml_header", flag(pc.match_substring(head, "<?xml version=")), zero + 1, "xml_header", "absent")
    lines = pc.split_pattern(text, "\n")
    longest = np.zeros(n)
    np.maximum.at(longest, pc.list_parent_indices(lines).to_numpy(), num(pc.utf8_length(pc.list_flatten(lines))))
    c.check("long_line", longest > rules.long_line, longest, "longest_line", rules.long_line)
    n_lines = num(pc.count_substring(text, "\n")) + 1
    if params.mean_line_length is not None:
        mean = (chars + 1) / n_lines - 1
        c.check("mean_line_length", ~np.isnan(rules.long_line) & (mean > params.mean_line_length), mean,
                "mean_line_length", params.mean_line_length)
    with np.errstate(divide="ignore", invalid="ignore"):
        alnum = ascii_counts(text, ALPHANUM) / chars
        c.check("alphanum_fraction", alnum < rules.alphanum, alnum, "alphanum_fraction", rules.alphanum)
        letters = np.full(n, np.nan)  # only where an alpha rule applies (data formats)
        some = np.flatnonzero(c.open & ~np.isnan(rules.alpha))
        if len(some):
            sub = text.take(pa.array(some))
            ascii_only = flag(pc.string_is_ascii(sub))  # RE2 counts \pL slowly: only where it must
            letters[some] = np.where(ascii_only, ascii_counts(sub, string.ascii_letters), 0)
            wide = np.flatnonzero(~ascii_only)
            if len(wide):
                letters[some[wide]] = num(pc.count_substring_regex(sub.take(pa.array(wide)), r"\pL"))
        c.check("alpha_fraction", letters < rules.alpha * chars, letters / chars, "alpha_fraction", rules.alpha)
    if params.html_min_text_ratio is not None:
        visible = np.full(n, np.nan)
        for i in np.flatnonzero(c.open & rules.html):
            visible[i] = visible_text_chars(text[i].as_py())
        share = np.where(visible < params.html_min_text_chars, 0.0, visible / np.maximum(chars, 1))
        c.check("html_boilerplate", rules.html & (share < params.html_min_text_ratio), share,
                "visible_text_share", params.html_min_text_ratio)
    if params.min_lines is not None:
        c.check("too_few_lines", n_lines < params.min_lines, n_lines, "lines", params.min_lines)
    if params.max_lines is not None:
        c.check("too_many_lines", n_lines > params.max_lines, n_lines, "lines", params.max_lines)
    for i in np.flatnonzero(np.isin(reasons, ["no_path", "extension_unknown", "extension_excluded", "xml_header"])):
        details[i] = _named_detail(reasons[i], paths[i], params)
    return reasons.tolist(), details.tolist()


def _named_detail(reason: str, path: str | None, params: FileFilterParams) -> str:
    """The detail of a rule that measures nothing: what the file was matched by."""
    if reason == "no_path":
        return f"column {params.path!r} is null"
    if reason == "xml_header":
        return f"'<?xml version=' in the first {params.xml_prefix_chars} characters"
    name = posixpath.basename(str(path).replace("\\", "/"))
    rule = params.rule_for(path)
    return f"file={name}" + (f" language={rule.language}" if rule is not None else "")


def _filter_batch(batch: pa.RecordBatch, params: FileFilterParams, ctx: TaskContext) -> Output:
    paths = batch.column(params.path).to_pylist()
    reasons, details = file_reasons(batch.column("text"), paths, params)
    return finish(batch, reasons, details, ctx)


FILE_FILTER = MapStage(
    "code.file_filter", FileFilterParams, _filter_batch, requires=("text",), reads=lambda p: [p.path],
    resources=Resources(cpus=1), engine="local",
    doc="StarCoder's per-extension file rules (long lines, alphanumeric share, XML, HTML boilerplate) "
        "as NeMo Curator 1.4.0 applies them.",
)
