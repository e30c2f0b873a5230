"""PEER for benchmarks/bench_dedup.py: exact dedup as it was before arcforge.runtime.globalops
(``git show e54bdda:arcforge/dedup/exact.py``), with its imports moved from
``arcforge.pipelines`` to ``arcforge.runtime``, its pure per-partition functions (which did
not change) imported from ``arcforge.dedup.exact``, and without registering the stage.
Nothing else is changed: one ``run_<engine>`` method per engine. Not part of the package.

Exact deduplication on normalised text.

Two passes, each a pure function of its inputs so retries and resumes give the
same parts:

1. hash every document's normalised text, group by hash, and keep the member
   with the smallest ``(id, partition, row)``; the keeper does not depend on
   how the input is partitioned when ids are unique;
2. rewrite each input partition without its duplicates, which go to the
   rejected dataset with reason ``exact_duplicate`` and the keeper's id.

On Spark the grouping is a shuffle (nothing is collected on the driver); the
local engine runs the same logic in memory as the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

# The pure per-partition functions did not change; only the engine paths below did.
from arcforge.dedup.exact import ExactDedupParams, _read_input, find_duplicates, hash_table, rewrite_partition
from arcforge.runtime.stage import GlobalStage, Resources
from arcforge.runtime.tasks import PartitionTask


class ExactDedup(GlobalStage[ExactDedupParams]):
    def run_local(self, ctx: Any) -> list[dict[str, Any]]:
        params: ExactDedupParams = ctx.stage.params
        hashes = pa.concat_tables([hash_table(_read_input(t), t.partition, params) for t in ctx.tasks])
        drops = find_duplicates(hashes)
        records = []
        for task in ctx.pending:
            rec = rewrite_partition(task, drops.get(task.partition, {}))
            ctx.on_commit(rec)
            records.append(rec)
        return records

    def run_spark(self, ctx: Any) -> list[dict[str, Any]]:
        import json

        from pyspark.sql import functions as F
        from pyspark.sql.window import Window

        engine = ctx.engine
        if not ctx.pending:
            return []
        params_json = ctx.stage.params.model_dump_json()
        hashes = engine.descriptor_frame(ctx.tasks).mapInArrow(
            _spark_hash_fn(params_json), "partition int, row int, id string, hash string"
        )
        keeper = Window.partitionBy("hash").orderBy("id", "partition", "row")
        dups = (
            hashes.withColumn("keeper", F.first("id").over(keeper))
            .withColumn("rank", F.row_number().over(keeper))
            .where(F.col("rank") > 1)
            .groupBy("partition")
            .agg(F.collect_list(F.struct("row", "keeper")).alias("drops"))
        )
        work = engine.descriptor_frame(ctx.pending).join(dups, "partition", "left")
        result = work.mapInArrow(_spark_rewrite_fn, "partition int, record string")
        rows = engine.collect_with_progress(result, len(ctx.pending), ctx.on_commit)
        return [json.loads(r["record"]) for r in rows]


    def run_ray(self, ctx: Any) -> list[dict[str, Any]]:
        """Ray Data: hash in tasks, group with a shuffle, rewrite partitions in tasks.

        Unlike the Spark path, the duplicate lists (one small row per duplicate) come
        back to the driver before the rewrite; fine for exact dedup, whose duplicates
        are a small share of the corpus.
        """
        import json

        if not ctx.pending:
            return []
        engine = ctx.engine
        engine.start()
        import ray

        params_json = ctx.stage.params.model_dump_json()
        items = [{"task": t.to_json()} for t in ctx.tasks]
        hashes = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _ray_hash_fn, fn_kwargs={"params_json": params_json}, batch_size=1, batch_format="pyarrow"
        )
        dups = hashes.groupby("hash").map_groups(_ray_keeper_fn, batch_format="pyarrow").take_all()
        drops: dict[int, dict[int, str]] = {}
        for d in dups:
            drops.setdefault(int(d["partition"]), {})[int(d["row"])] = d["keeper"]
        rewrite = ray.remote(num_cpus=self.resources.cpus)(rewrite_partition)
        futures = [rewrite.remote(t, drops.get(t.partition, {})) for t in ctx.pending]
        records = []
        while futures:
            ready, futures = ray.wait(futures, num_returns=1)
            rec = ray.get(ready[0])
            ctx.on_commit(rec)
            records.append(json.loads(json.dumps(rec)))
        return records


def _ray_hash_fn(batch: pa.Table, params_json: str) -> pa.Table:
    params = ExactDedupParams.model_validate_json(params_json)
    tasks = [PartitionTask.from_json(t) for t in batch.column("task").to_pylist()]
    return pa.concat_tables([hash_table(_read_input(t), t.partition, params) for t in tasks])


def _ray_keeper_fn(group: pa.Table) -> pa.Table:
    """One hash group: every member but the smallest (id, partition, row) is a duplicate."""
    rows = sorted(zip(*(group.column(c).to_pylist() for c in ("id", "partition", "row"))))
    keeper = rows[0][0]
    return pa.table(
        {
            "partition": pa.array([r[1] for r in rows[1:]], pa.int32()),
            "row": pa.array([r[2] for r in rows[1:]], pa.int32()),
            "keeper": pa.array([keeper] * (len(rows) - 1), pa.string()),
        }
    )


def _spark_hash_fn(params_json: str):  # noqa: ANN202 - returns a mapInArrow function
    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        params = ExactDedupParams.model_validate_json(params_json)
        for batch in batches:
            for task_json in batch.column("task").to_pylist():
                task = PartitionTask.from_json(task_json)
                yield from hash_table(_read_input(task), task.partition, params).to_batches()

    return fn


def _spark_rewrite_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    import json

    for batch in batches:
        parts, records = [], []
        for row in batch.to_pylist():
            drops = {d["row"]: d["keeper"] for d in row["drops"] or []}
            parts.append(row["partition"])
            records.append(json.dumps(rewrite_partition(PartitionTask.from_json(row["task"]), drops)))
        yield pa.RecordBatch.from_pydict({"partition": pa.array(parts, pa.int32()), "record": records})


EXACT_DEDUP_V1 = ExactDedup(
    "dedup.exact_v1",
    ExactDedupParams,
    resources=Resources(cpus=1),
    engine="spark",
    doc="The exact dedup before the global operations: one run_<engine> method per engine.",
)
