"""``quality.buckets``: Nemotron-CC-style percentile buckets over quality scores.

Nemotron-CC does not threshold its classifiers' scores; it cuts each score's corpus-wide
distribution into 20 buckets holding equal shares of the data and takes, per document,
the highest bucket any classifier puts it in. Training mixtures then give each bucket its
own number of epochs (``arcforge mix``'s ``buckets:`` table), instead of keeping or
dropping documents at a hard threshold. This stage writes those buckets; it drops nothing.

For every score column it finds the ``n_buckets - 1`` inner cut-offs: the weighted
percentiles at ``q = k / n_buckets`` (numpy's ``inverted_cdf``: ``cut[k]`` is the smallest
score with at least ``k / n_buckets`` of the weight at or below it), computed exactly and
distributed by the runtime (``Frame.quantiles_by(..., weights=...)``: every score, and every
group, in one selection), so every engine finds the same floats. Then each document gets

* ``<prefix><score>`` (int32): the number of cut-offs ``<=`` its score, 0..n_buckets-1;
  a null or NaN score is bucket 0;
* ``<bucket_column>`` (int32, ``bucket``): the largest of those, the ensemble.

``tokenize.megatron_shards`` groups shards by ``bucket`` (``<source>__<bucket>``, the int
as a string), which is what a mixture's bucket table draws from.

Weights (``weight``) decide what "equal shares" means:

* ``tokens`` (default): the ``tokens_column`` (``n_tokens``) when the input has it, else
  an estimate, ``ceil(UTF-8 bytes of the text / 4)``. Bytes rather than characters or
  whitespace words, because they track a BPE tokenizer across scripts: an English
  character is one byte (about 4 per token), a CJK character three (about 1.3 per
  token), and Chinese text has no whitespace words at all;
* ``chars``: Unicode characters of the text; ``docs``: 1 per document.

A document of weight 0 (an empty text) counts in no percentile but still gets its
buckets. Weights are integers, so their sums are exact on every engine.

``group_by`` (a string column: ``language``, ``source``) computes the cut-offs within each of
its values, so every language (or source) fills all the buckets by its own scores. Classifier
scores are not comparable across languages (an English quality model scores Chinese pages low
whatever their quality), and corpus-wide percentiles would then put a whole language in the
bottom buckets, which the mixture drops. A null value is a group of its own. Several columns
(``[language, source]``) give a group per combination, named by the values joined with ``|``
(``en|web``, ``(null)|books``). Every score and group is one series of the same selection,
so groups add work per pass but no passes (``max_groups``, default 64, bounds them).

The cut-offs are reported in the stage's manifest stats (``buckets.cutoff.<score>.<kk>``:
the lowest score of bucket ``kk``, rounded to 6 decimals as every float stat is; with
``group_by``, ``buckets.cutoff.<score>.<group>.<kk>`` and ``buckets.group_docs.<group>``), with
``buckets.docs.<kk>`` and ``buckets.weight.<kk>`` per ensemble bucket, and exactly in
``buckets.json``, a file of the first partition's commit record.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from arcforge.runtime import storage
from arcforge.runtime.distribution import with_range
from arcforge.runtime.documents import DOC_SCHEMA, conform, text_bytes, with_columns
from arcforge.runtime.globalops.quantiles import in_group
from arcforge.runtime.stage import GlobalStage, Resources, StageParams, Stats
from arcforge.runtime.storage import S3Options
from arcforge.runtime.tasks import PartitionTask, commit_partition

WEIGHT = "__weight"
GROUP = "__group"
NULL_GROUP = "(null)"  # how a null group value is named in the stats
CUTOFFS_FILE = "buckets.json"


class BucketParams(StageParams):
    scores: list[str] = Field(min_length=1, description="float score columns added by classifier stages")
    n_buckets: int = Field(20, ge=2, le=1000)
    weight: Literal["tokens", "chars", "docs"] = "tokens"
    prefix: str = Field("bucket_", min_length=1)
    bucket_column: str = "bucket"  # the ensemble; tokenize.megatron_shards groups by it
    tokens_column: str = "n_tokens"  # used by weight: tokens when the input has it
    text_column: str = "text"
    # a string column (language, source), or several (a group per combination of values):
    # percentiles within each group
    group_by: str | list[str] | None = None
    max_groups: int = Field(64, ge=1)  # more values than this in group_by fails the stage

    @model_validator(mode="after")
    def _names(self) -> BucketParams:
        if len(set(self.scores)) != len(self.scores):
            raise ValueError(f"scores: {self.scores} names a column twice")
        for g in self.group_columns:
            if g in {*self.scores, *self.output_columns()}:
                raise ValueError(f"group_by: {g!r} is a score or an output column")
        if isinstance(self.group_by, list) and (not self.group_by or len(set(self.group_by)) != len(self.group_by)):
            raise ValueError(f"group_by: {self.group_by} must name one or more distinct columns")
        clash = set(self.scores) & {*self.output_columns(), WEIGHT, GROUP}
        if clash:
            raise ValueError(f"the output column(s) {sorted(clash)} would overwrite a score; change prefix or bucket_column")
        return self

    @property
    def group_columns(self) -> list[str]:
        """The columns ``group_by`` names (none, one or several)."""
        return [] if self.group_by is None else [self.group_by] if isinstance(self.group_by, str) else list(self.group_by)

    def output_columns(self) -> list[str]:
        return [self.prefix + s for s in self.scores] + [self.bucket_column]


def quantile_points(n_buckets: int) -> list[float]:
    """The inner cut points ``k / n`` for k = 1..n-1."""
    return [k / n_buckets for k in range(1, n_buckets)]


def assign_buckets(scores: Any, cutoffs: list[float]) -> np.ndarray:
    """The number of cut-offs ``<=`` each score (int32); null and NaN scores are bucket 0."""
    v = pc.cast(scores, pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
    out = np.searchsorted(np.asarray(cutoffs, dtype=np.float64), v, side="right").astype(np.int32)
    out[np.isnan(v)] = 0
    return out


ESTIMATE = "ceil(text_bytes/4)"


def weight_source(params: BucketParams, input_names: list[str]) -> str:
    """What the weights are, as reported: ``docs``, ``chars``, the token column, or the estimate."""
    if params.weight == "tokens":
        return params.tokens_column if params.tokens_column in input_names else ESTIMATE
    return params.weight


def weight_columns(params: BucketParams, source: str) -> list[str]:
    """The input columns the weights are computed from."""
    if params.weight == "docs":
        return []
    return [source] if params.weight == "tokens" and source != ESTIMATE else [params.text_column]


def doc_weights(table: pa.Table, params: BucketParams, source: str) -> pa.Array:
    """Each row's integer weight (int64, >= 0)."""
    if params.weight == "docs":
        return pa.array(np.ones(table.num_rows, dtype=np.int64))
    if params.weight == "chars":
        return pc.fill_null(pc.cast(pc.utf8_length(table.column(params.text_column)), pa.int64()), 0)
    if source == ESTIMATE:
        nbytes = pc.fill_null(pc.cast(pc.binary_length(table.column(params.text_column)), pa.int64()), 0)
        return pc.divide(pc.add(nbytes, 3), 4)  # integer division: ceil(bytes / 4)
    col = table.column(source)
    if pa.types.is_floating(col.type):
        col = pc.round(col)
    w = pc.fill_null(pc.cast(col, pa.int64()), 0)
    if pc.any(pc.less(w, 0)).as_py():
        raise ValueError(f"quality.buckets: the token column {source!r} has negative values")
    return w


def _read(task: PartitionTask, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(task.input_uri, S3Options(**task.s3))
    return storage.read_parquet(fs, path, columns)


GROUP_SEP = "|"  # between the values of a row's group_by columns


def group_values(table: pa.Table, params: BucketParams) -> pa.Array:
    """Each row's group: the value of the one ``group_by`` column (null stays null), or the
    values of several joined by ``|`` (a null one spelled ``(null)``: ``en|(null)``)."""
    cols = [pc.cast(table.column(c), pa.string()) for c in params.group_columns]
    if len(cols) == 1:
        return cols[0]
    return pc.binary_join_element_wise(*cols, GROUP_SEP, null_handling="replace", null_replacement=NULL_GROUP)


def _score_rows(task: PartitionTask, table: pa.Table, params: BucketParams, source: str, schema: pa.Schema) -> pa.Table:
    """Pass 1 on a worker: each row's scores and weight (and group), nothing else."""
    cols = {s: pc.cast(table.column(s), pa.float64()) for s in params.scores}
    if params.group_by is not None:
        cols[GROUP] = group_values(table, params)
    return pa.table({**cols, WEIGHT: doc_weights(table, params, source)}, schema=schema)


def group_name(group: str | None) -> str:
    """A group value as the stats name it."""
    return NULL_GROUP if group is None else group


def add_buckets(table: pa.Table, params: BucketParams, report: dict[str, Any]) -> pa.Table:
    """Every row with its per-score buckets and the ensemble (the max over the scores): the
    cut-offs of the row's group (``report["groups"]``) with ``group_by``, else ``report["cutoffs"]``."""
    if params.group_by is not None:
        values = group_values(table, params)
        parts = [(in_group(values, g["group"]), g["cutoffs"]) for g in report["groups"]]
    ensemble = np.zeros(table.num_rows, dtype=np.int32)
    for s in params.scores:
        if params.group_by is None:
            b = assign_buckets(table.column(s), report["cutoffs"][s])
        else:
            b = np.zeros(table.num_rows, dtype=np.int32)  # a group no cut-offs were computed for: bucket 0
            for mask, cutoffs in parts:
                b[np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)] = assign_buckets(table.column(s).filter(mask), cutoffs[s])
        ensemble = np.maximum(ensemble, b)
        table = _put(table, params.prefix + s, b)
    return _put(table, params.bucket_column, ensemble)


def _put(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    i = table.schema.get_field_index(name)
    arr = pa.array(values, pa.int32())
    return table.set_column(i, name, arr) if i >= 0 else table.append_column(name, arr)


def _cutoff_stats(stats: Stats, report: dict[str, Any]) -> None:
    grouped = "groups" in report
    for g in report["groups"] if grouped else [{"group": None, "cutoffs": report["cutoffs"]}]:
        for s, cuts in g["cutoffs"].items():
            label = f"{s}.{group_name(g['group'])}" if grouped else s
            for k, c in enumerate(cuts, start=1):
                stats.update(f"buckets.cutoff.{label}.{k:02d}", c)
        if grouped:
            stats.update(f"buckets.group_docs.{group_name(g['group'])}", g["docs"])


def _cutoffs(cuts: list[float]) -> list[float]:
    return [] if any(np.isnan(cuts)) else cuts  # no weighted score at all: everything in bucket 0


def _write(task: PartitionTask, rows: pa.Table, params: BucketParams, source: str, report: dict[str, Any], first: int) -> dict[str, Any]:
    """Pass 2 on a worker: the partition with its bucket columns, committed; the first
    partition's record also carries the cut-offs (stats and ``buckets.json``)."""
    started = time.time()
    table = _read(task)
    stats = Stats()
    stats.update("docs_in", table.num_rows)
    stats.update("bytes_in", text_bytes(table))
    out = conform(add_buckets(table, params, report), task.schema)
    ens = out.column(params.bucket_column).to_numpy()
    weights = doc_weights(table, params, source).to_numpy()
    for k in np.unique(ens):
        stats.update(f"buckets.docs.{k:02d}", int((ens == k).sum()))
        stats.update(f"buckets.weight.{k:02d}", int(weights[ens == k].sum()))
    files = []
    if task.partition == first:
        _cutoff_stats(stats, report)
        files.append(storage.publish_json(report, task.output_uri, CUTOFFS_FILE, S3Options(**task.s3)))
    return commit_partition(task, out, None, stats, started, files=files)


class QualityBuckets(GlobalStage[BucketParams]):
    """Weighted percentile cut-offs per score over all partitions (``ops.quantiles``),
    then every pending partition rewritten with its bucket columns (``ops.finish``)."""

    def required_columns(self, params: BucketParams) -> list[str]:
        return [*params.scores, *([params.text_column] if params.weight == "chars" else []), *params.group_columns]

    def schema_for(self, params: BucketParams, input_schema: pa.Schema | None) -> pa.Schema:
        rng = (0, params.n_buckets - 1)  # an exact histogram in _stats.json: one bin per bucket at 20
        return with_columns(input_schema or DOC_SCHEMA, [with_range(pa.field(c, pa.int32()), *rng) for c in params.output_columns()])

    def run(self, ctx: Any) -> list[dict[str, Any]]:
        if not ctx.pending:
            return []
        params: BucketParams = ctx.stage.params
        out_schema = ctx.tasks[0].schema
        added = set(params.output_columns())
        names = [n for n in out_schema.names if n not in added]
        for s in params.scores:
            t = out_schema.field(s).type
            if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
                raise ValueError(f"stage {ctx.stage.name}: score column {s!r} is {t}, expected a number")
        source = weight_source(params, names)
        if any(c not in names for c in weight_columns(params, source)):
            raise ValueError(f"stage {ctx.stage.name}: weight {params.weight} needs a {params.tokens_column!r} or {params.text_column!r} column")
        for g in params.group_columns:
            t = out_schema.field(g).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)):
                raise ValueError(f"stage {ctx.stage.name}: group_by column {g!r} is {t}, expected a string")
        read = list(dict.fromkeys([*params.scores, *weight_columns(params, source), *params.group_columns]))
        fields = [*(pa.field(s, pa.float64()) for s in params.scores), pa.field(WEIGHT, pa.int64())]
        schema = pa.schema(fields + ([pa.field(GROUP, pa.string())] if params.group_by is not None else []))
        qs = quantile_points(params.n_buckets)
        with ctx.engine.ops() as ops:
            scored = ops.map_tasks(ctx.tasks, _score_rows, schema, read=read, args=(params, source, schema),
                                   resources=self.resources).cache()
            report = {"format": "arcforge.buckets/1", "scores": params.scores, "n_buckets": params.n_buckets,
                      "quantiles": qs, "weight": params.weight, "weight_source": source}
            if params.group_by is None:
                cuts = scored.quantiles_by(params.scores, qs, weights=WEIGHT)
                report["cutoffs"] = {s: _cutoffs(cuts[s]) for s in params.scores}
            else:
                counted = scored.aggregate([GROUP], [(WEIGHT, "count")]).collect()
                docs = dict(zip(counted.column(GROUP).to_pylist(), counted.column(f"{WEIGHT}_count").to_pylist()))
                groups = list(docs)
                if len(groups) > params.max_groups:
                    raise ValueError(f"stage {ctx.stage.name}: group_by {params.group_by!r} has {len(groups)} values, "
                                     f"more than max_groups {params.max_groups}")
                groups = sorted(groups, key=lambda g: (g is not None, g or ""))
                cuts = scored.quantiles_by(params.scores, qs, by=GROUP, groups=groups, weights=WEIGHT)
                report["group_by"] = params.group_by
                report["groups"] = [{"group": g, "docs": docs[g], "cutoffs": {s: _cutoffs(cuts[(g, s)]) for s in params.scores}}
                                    for g in groups]
            scored.release()
            return ops.finish(ctx.pending, _write, args=(params, source, report, ctx.tasks[0].partition),
                              on_commit=ctx.on_commit, resources=self.resources)


BUCKETS = QualityBuckets(
    "quality.buckets",
    BucketParams,
    resources=Resources(cpus=1),
    engine="spark",
    doc="Nemotron-CC percentile buckets: weighted cut-offs per score, bucket_<score> and the ensemble max (local, Spark, Ray).",
)
