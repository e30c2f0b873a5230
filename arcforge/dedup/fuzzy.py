"""``dedup.minhash``: near-duplicate removal with MinHash-LSH and distributed connected components.

Written once against ``arcforge.runtime.globalops``, so the same code runs on the local
engine, Spark and Ray, and nothing per document reaches the driver (no driver-side
union-find, no in-memory index: every step is a map, a shuffle or a join in the engine).

1. **Sign** (``map_tasks``, one pass over the text): shingles (``arcforge.dedup.shingles``:
   normalised word n-grams, character n-grams for CJK), 64-bit MinHash signatures
   (``arcforge.dedup.minhash.signatures``: datasketch's ``affine64`` permutations), and one
   LSH key per band. ``bands x rows`` come from ``threshold`` and ``num_perm`` by datasketch's
   optimiser (``lsh_params``, weighted towards recall when pairs are verified) unless set. A document with fewer than ``min_tokens`` tokens
   (default: ``ngram``; an empty or one-word page) has no full shingle: it is not signed,
   kept as its own cluster, and counted (``minhash.docs_unsigned``), so such pages are never
   merged into one cluster by their equal empty signatures.
2. **Buckets -> edges** (``group_reduce`` on ``(band, key)``): each bucket becomes a star from
   its member with the smallest id hash (``k - 1`` edges, never ``k^2``; memory is linear in
   the bucket). A bucket holding more than ``max_bucket_share`` of the signed documents is
   reported (``minhash.large_buckets``, ``minhash.large_bucket_docs``, the largest size): it is
   usually one boilerplate page repeated, and is still deduplicated.
3. **Verification** (``verify: true``, the default): the true Jaccard of every distinct
   candidate pair, from both documents' sets of shingle hashes (read back from the input
   parts for the candidate documents only); pairs below ``threshold`` are dropped before the
   components, which cuts the false positives of LSH and the long chains they make. Its cost
   is linear in the candidate pairs (one set per candidate document, one intersection per
   pair). ``verify: false`` keeps every LSH pair (faster, less precise).
4. **Connected components** (``arcforge.runtime.globalops.components``: large-star/small-star,
   every round checkpointed).
5. **Keep rule** (``arcforge.dedup.keep``): per component, the preferred member (default:
   highest ``quality_score`` when the column exists, then the longest text, then the smallest
   id) is kept; every other member goes to ``rejected/`` with reason ``near_duplicate`` and
   detail ``duplicate_of=<keeper id>``.
6. **Attributes**: every document, kept or rejected, carries ``dup_cluster`` (the smallest
   document id of its cluster; its own id when alone) and ``dup_cluster_size``.

The stage's first partition carries the run's report in its stats (bands, rows, candidate and
verified pairs, component rounds, the largest component and bucket) and publishes it as
``minhash.json``; every partition counts its clusters by size (``minhash.cluster_size.<bin>``,
each cluster where its keeper lives), which ``arcforge inspect`` and the report read.

Until it commits, the stage keeps its finished steps in ``_minhash_work/``, bound to its
fingerprint (``arcforge.runtime.globalops.persist``): the signatures per partition, the
verified pairs with their counters, each round of the components. A killed run's re-run reads
them back and goes on from the first unfinished step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from arcforge.dedup import lsh
from arcforge.dedup.keep import DEFAULT_KEEP, parse_rule, resolve_rule
from arcforge.dedup.minhash import lsh_params
from arcforge.runtime import storage
from arcforge.runtime.documents import DOC_SCHEMA, conform, rejected_schema, text_bytes, with_columns
from arcforge.runtime.globalops import persist
from arcforge.runtime.globalops.components import ORIENTED, connected_components, oriented_edges
from arcforge.runtime.globalops.persist import WorkDir, memo_map_tasks
from arcforge.runtime.stage import GlobalStage, Resources, StageParams, Stats, split_rejected
from arcforge.runtime.storage import S3Options
from arcforge.runtime.tasks import PartitionTask, commit_partition

log = logging.getLogger(__name__)
REPORT_FILE = "minhash.json"
ADDED = (pa.field("dup_cluster", pa.string()), pa.field("dup_cluster_size", pa.int64()))
WORK_DIR = "_minhash_work"
PARTS = 8  # files per step kept in the work dir (verified pairs, each round of the components)


class MinhashParams(StageParams):
    threshold: float = Field(0.8, gt=0.0, lt=1.0)
    num_perm: int = Field(128, ge=2, le=1024)
    ngram: int = Field(5, ge=1, le=32)
    normalize: bool = True  # NFKC, lower case, punctuation and symbols as word boundaries
    seed: int = 1
    bands: int | None = Field(None, ge=1)  # set both to override datasketch's optimiser
    rows: int | None = Field(None, ge=1)
    weights: tuple[float, float] | None = None  # the optimiser's (false positive, false negative) weights
    verify: bool = True
    min_tokens: int | None = Field(None, ge=1)  # default: ngram
    max_bucket_share: float = Field(0.01, gt=0.0, le=1.0)
    keep: list[str] = Field(default_factory=lambda: list(DEFAULT_KEEP))
    column: str = "text"

    @field_validator("keep")
    @classmethod
    def _rule(cls, v: list[str]) -> list[str]:
        parse_rule(v)
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and (min(v) < 0 or abs(sum(v) - 1.0) > 1e-9):
            raise ValueError("weights: [false_positive, false_negative], non-negative, summing to 1")
        return v

    @model_validator(mode="after")
    def _banding(self) -> MinhashParams:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("bands and rows: set both, or neither (then datasketch's optimiser picks them)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def banding(self) -> tuple[int, int]:
        """``bands, rows``: as set, else datasketch's optimiser with ``weights``; by default
        ``(0.05, 0.95)`` when pairs are verified (a false positive then costs one set
        intersection, a false negative a duplicate kept) and datasketch's ``(0.5, 0.5)``
        when they are not."""
        if self.bands is not None:
            return self.bands, self.rows
        fp, fn = self.weights or ((0.05, 0.95) if self.verify else (0.5, 0.5))
        return lsh_params(self.threshold, self.num_perm, fp, fn)

    def rule(self, schema: pa.Schema) -> tuple[list[tuple[str, bool]], list[str]]:
        """The keep rule for this input, always ending with the id (a total order)."""
        rule, missing = resolve_rule(self.keep, schema)
        if not any(name == "id" for name, _ in rule):
            rule.append(("id", False))
        return rule, missing


def size_bin(size: int) -> str:
    """Cluster-size bins of the report: 2, 3-4, 5-8, 9-16, ... (powers of two)."""
    if size <= 2:
        return "0002"
    hi = 1 << int(np.ceil(np.log2(size)))
    return f"{hi // 2 + 1:04d}-{hi:04d}"


def _read(task: PartitionTask, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(task.input_uri, S3Options(**task.s3))
    return storage.read_parquet(fs, path, columns)


def _sign(task: PartitionTask, table: pa.Table, params: MinhashParams, rule: list, banding: tuple[int, int]) -> pa.Table:
    bands, rows = banding
    return lsh.sign_rows(task.partition, table, column=params.column, ngram=params.ngram, normalize=params.normalize,
                         num_perm=params.num_perm, seed=params.seed, bands=bands, rows=rows,
                         min_tokens=params.min_tokens or params.ngram, rule=rule)


def _spill_sets(task: PartitionTask, rows: pa.Table, params: MinhashParams, work: str) -> dict[str, Any]:
    """The candidate documents' shingle sets of one input part, written to the work dir."""
    wanted = (rows.column("node").to_numpy() & np.int64(0xFFFFFFFF)).astype(np.int64)
    table = _read(task, [params.column]) if len(wanted) else None
    sets = lsh.SETS.empty_table() if table is None else lsh.shingle_sets(
        task.partition, table, wanted, column=params.column, ngram=params.ngram, normalize=params.normalize)
    fs, path = storage.filesystem(_sets_uri(work, task.partition), S3Options(**task.s3))
    storage.write_bytes_atomic(fs, path, storage.parquet_bytes(sets))
    return {"partition": task.partition, "rows": sets.num_rows}


def _sets_uri(work: str, partition: int) -> str:
    return storage.join(work, "sets", f"part-{partition:05d}.parquet")


def _as_side(table: pa.Table, side: str) -> pa.Table:
    return pa.table({side: table.column("node"), f"sh_{side}": table.column("sh")})


def _passing(table: pa.Table, threshold: float) -> pa.Table:
    return table.filter(pc.greater_equal(table.column("jaccard"), threshold)).select(["src", "dst"])


def _write(task: PartitionTask, members: pa.Table, params: MinhashParams, report: dict[str, Any], first: int) -> dict[str, Any]:
    """Pass 2 on a worker: the part with its cluster attributes; non-keepers to rejected."""
    started = time.time()
    table = _read(task)
    n = table.num_rows
    stats = Stats()
    stats.update("docs_in", n)
    stats.update("bytes_in", text_bytes(table))
    ids = pc.cast(table.column("id"), pa.string()).to_pylist()
    cluster, size, keeper = list(ids), np.ones(n, np.int64), list(ids)
    for row, c, s, k in zip(*(members.column(c).to_pylist() for c in ("row", "cluster", "size", "keeper"))):
        cluster[row], size[row], keeper[row] = c, s, k
    table = table.append_column(ADDED[0], pa.array(cluster, pa.string())).append_column(ADDED[1], pa.array(size, pa.int64()))
    reasons = [None if keeper[i] == ids[i] else "near_duplicate" for i in range(n)]
    details = [None if keeper[i] == ids[i] else f"duplicate_of={keeper[i]}" for i in range(n)]
    for i in range(n):
        if size[i] >= 2:
            stats.update("minhash.docs_in_clusters")
            if keeper[i] == ids[i]:
                stats.update(f"minhash.cluster_size.{size_bin(int(size[i]))}")
                stats.update("minhash.clusters")
    out = split_rejected(table, reasons, details)
    files = []
    if task.partition == first:
        for k, v in report["counters"].items():
            stats.update(f"minhash.{k}", v)
        files.append(storage.publish_json(report, task.output_uri, REPORT_FILE, S3Options(**task.s3)))
    rejected = conform(out.rejected, rejected_schema(task.schema)) if out.rejected is not None else None
    return commit_partition(task, conform(out.kept, task.schema), rejected, stats, started, files=files)


class MinhashDedup(GlobalStage[MinhashParams]):
    """MinHash-LSH near-duplicate removal (module docstring), on local, Spark and Ray."""

    adds = ADDED

    def required_columns(self, params: MinhashParams) -> list[str]:
        return ["id", params.column]

    def schema_for(self, params: MinhashParams, input_schema: pa.Schema | None) -> pa.Schema:
        schema = input_schema or DOC_SCHEMA
        params.rule(schema)  # a bad keep key is a config error
        return with_columns(schema, ADDED)

    def run(self, ctx: Any) -> list[dict[str, Any]]:
        if not ctx.pending:
            if ctx.tasks:  # every part committed: a run killed just after that left its work behind
                WorkDir.of(ctx.tasks[0], WORK_DIR).remove()
            return []
        params: MinhashParams = ctx.stage.params
        in_schema = ctx.tasks[0].schema
        rule, missing = params.rule(in_schema)
        banding = params.banding()
        read = list(dict.fromkeys(["id", params.column, *(n for n, _ in rule if n not in ("id", "length"))]))
        task0 = ctx.tasks[0]
        work = WorkDir.of(task0, WORK_DIR)
        resumed = work.open(task0.fingerprint)  # an interrupted run's finished steps are kept, another's cleared
        counters: dict[str, Any] = {"bands": banding[0], "rows": banding[1]}
        with ctx.engine.ops() as ops:
            members = self._cluster(ops, ctx, params, rule, banding, read, work, counters, resumed)
            report = {"format": "arcforge.minhash/1", "params": params.model_dump(), "keep_rule": rule,
                      "keep_missing_columns": missing, "counters": counters}
            records = ops.finish(ctx.pending, _write, rows=members, args=(params, report, task0.partition),
                                 on_commit=ctx.on_commit, resources=self.resources)
        work.remove()  # only after success: a failed or killed run's steps are what the next one resumes from
        return records

    def _cluster(self, ops: Any, ctx: Any, params: MinhashParams, rule: list, banding: tuple[int, int],
                 read: list[str], work: WorkDir, counters: dict[str, Any], resumed: bool) -> Any:
        s3 = ctx.tasks[0].s3
        signed, present = memo_map_tasks(ops, ctx.tasks, _sign, lsh.signed_schema(rule), work.join("signatures"),
                                         read=read, args=(params, rule, banding), resources=self.resources)
        signed = signed.cache()
        dschema = lsh.docs_schema(rule)
        docs = signed.map(lsh.doc_rows, dschema, args=(dschema,))
        pairs_dir = work.join("pairs")
        finished = persist.done(pairs_dir, s3)
        if finished is None:
            edges = persist.persist(ops, self._pairs(ops, ctx, params, signed, docs, work, counters), pairs_dir,
                                    key="src", parts=PARTS, s3=s3, facts=counters)
        else:
            counters.update(finished["facts"])
            edges = persist.load(ops, pairs_dir, lsh.PAIRS, s3)
        if resumed:
            log.info("dedup.minhash: resuming from %s: signatures of %d of %d partitions, pairs %s", work.uri, present,
                     len(ctx.tasks), "kept" if finished is not None else "recomputed")
        comps, cstats = connected_components(ops, edges, checkpoint_dir=work.join("components"), checkpoint_parts=PARTS,
                                             checkpoint_s3=s3, resume=True, on_round=self.component_round)
        counters.update(component_rounds=cstats.rounds, components=cstats.components,
                        largest_component=cstats.largest_component, docs_in_components=cstats.nodes)
        joined = comps.join(docs, ["node"])
        order = [f.name for f in lsh.docs_schema(rule) if f.name.startswith("keep_")]
        return joined.group_reduce(["component"], lsh.choose_keepers, lsh.MEMBERS, order_by=order, batched=True)

    def _pairs(self, ops: Any, ctx: Any, params: MinhashParams, signed: Any, docs: Any, work: WorkDir,
               counters: dict[str, Any]) -> Any:
        """Buckets -> candidate pairs -> verified pairs (``src``, ``dst``), counting as it goes."""
        min_tokens = params.min_tokens or params.ngram
        # documents, and those too short to sign, in one aggregate
        short = docs.map(_short_rows, pa.schema([("k", pa.int8()), ("short", pa.int64())]), args=(min_tokens,))
        row = short.aggregate(["k"], [("short", "sum"), ("short", "count")]).collect().to_pylist()
        counters["docs"] = row[0]["short_count"] if row else 0
        counters["docs_unsigned"] = row[0]["short_sum"] if row else 0
        raw = signed.map(lsh.band_rows, lsh.BANDS).group_reduce(
            ["band", "key"], lsh.bucket_edges, lsh.BUCKET_EDGES, order_by=["idh", "node"], batched=True).cache()
        signed_docs = counters["docs"] - counters["docs_unsigned"]
        limit = max(2, int(params.max_bucket_share * signed_docs))
        sizes = raw.map(lsh.bucket_sizes, lsh.BUCKET_SIZES, args=(limit,)).aggregate(
            ["k"], [("size", "max"), ("size", "count"), ("big", "sum"), ("big_docs", "sum")]).collect().to_pylist()
        s = sizes[0] if sizes else {"size_max": 0, "size_count": 0, "big_sum": 0, "big_docs_sum": 0}
        counters.update(largest_bucket=s["size_max"], buckets=s["size_count"], large_buckets=s["big_sum"],
                        large_bucket_docs=s["big_docs_sum"], large_bucket_limit=limit)
        pairs = raw.map(oriented_edges, ORIENTED).aggregate(["src", "dst"], [("pw", "sum")]).cache()
        counters["candidate_pairs"] = pairs.count()
        edges = pairs.map(_pair_cols, lsh.PAIRS)
        if params.verify:
            edges = self._verify(ops, ctx, params, edges, work.uri).cache()
            counters["verified_pairs"] = edges.count()
        return edges

    def component_round(self, stats: Any) -> None:
        """Progress after each round of the connected components (a log line)."""
        log.info("dedup.minhash: components round %d, %d edges changed", stats.rounds, stats.changed_edges[-1])

    def _verify(self, ops: Any, ctx: Any, params: MinhashParams, edges: Any, work: str) -> Any:
        cands = edges.map(lsh.candidate_nodes, lsh.CANDIDATES).aggregate(["partition", "node"], [("node", "count")])
        cands = cands.map(_drop_count, lsh.CANDIDATES)
        ops.finish(ctx.tasks, _spill_sets, rows=cands, args=(params, work), resources=self.resources)
        read_tasks = [replace(t, input_uri=_sets_uri(work, t.partition), split={}, steps={}) for t in ctx.tasks]
        sets = ops.map_tasks(read_tasks, _read_sets, lsh.SETS, read=True).cache()
        src = sets.map(_as_side, pa.schema([("src", pa.int64()), ("sh_src", pa.binary())]), args=("src",))
        dst = sets.map(_as_side, pa.schema([("dst", pa.int64()), ("sh_dst", pa.binary())]), args=("dst",))
        scored = edges.join(src, ["src"]).join(dst, ["dst"]).map(lsh.verify_pairs, lsh.SCORED)
        return scored.map(_passing, lsh.PAIRS, args=(params.threshold,))


def _short_rows(table: pa.Table, min_tokens: int) -> pa.Table:
    t = table.column("tokens").to_numpy()
    return pa.table({"k": np.zeros(len(t), np.int8), "short": (t < min_tokens).astype(np.int64)})


def _pair_cols(table: pa.Table) -> pa.Table:
    return table.select(["src", "dst"])


def _drop_count(table: pa.Table) -> pa.Table:
    return table.select(["partition", "node"])


def _read_sets(task: PartitionTask, table: pa.Table) -> pa.Table:
    return table


MINHASH_DEDUP = MinhashDedup(
    "dedup.minhash",
    MinhashParams,
    resources=Resources(cpus=1),
    engine="spark",
    doc="Near-duplicate removal: MinHash-LSH, verified pairs, connected components, keep rule (local, Spark, Ray).",
)
