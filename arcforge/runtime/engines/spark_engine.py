"""Spark as a partition scheduler: a DataFrame of task descriptors, ``mapInArrow`` to run them.

Workers read and write through pyarrow filesystems, so no Hadoop S3 connector
is involved; Spark only schedules, retries and shuffles.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from arcforge.runtime.chain import task_resources
from arcforge.runtime.config import SparkConfig
from arcforge.runtime.engines.base import OnCommit
from arcforge.runtime.stage import Resources, Stage
from arcforge.runtime.tasks import PartitionTask, execute_task_json

RESULT_SCHEMA = "partition int, record string"


def _run_partition_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The mapInArrow function: one descriptor row in, one commit-record row out."""
    for batch in batches:
        parts, records = [], []
        for part, task_json in zip(batch.column("partition").to_pylist(), batch.column("task").to_pylist()):
            parts.append(part)
            records.append(execute_task_json(task_json))
        yield pa.RecordBatch.from_pydict(
            {"partition": pa.array(parts, pa.int32()), "record": pa.array(records, pa.string())}
        )


def _with_retries(master: str, retries: int) -> str:
    """Local mode ignores spark.task.maxFailures; its retries go in the master URL (local[N,F])."""
    m = re.fullmatch(r"local(?:\[([^,\]]+)\])?", master.strip())
    if m is None:
        return master
    return f"local[{m.group(1) or '1'},{retries + 1}]"


def local_driver_memory() -> str:
    """The embedded JVM's heap: a quarter of the machine's memory (at least 1 GiB), not
    Spark's 1 GiB default, under which the global stages' shuffles and caches of a few
    hundred thousand documents stop the SparkContext. ``engines.spark.conf`` overrides it."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(1 << 30, total // 4) >> 20}m"


def build_session(cfg: SparkConfig) -> Any:
    """Start (or join) a SparkSession; the embedded default binds to loopback with no UI."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(_with_retries(cfg.master, cfg.task_retries)).appName(cfg.app_name)
    defaults = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "1024",
        "spark.sql.shuffle.partitions": "8",
        "spark.python.worker.reuse": "true",
        "spark.task.maxFailures": str(cfg.task_retries + 1),
    }
    quiet = Path(__file__).with_name("log4j2-quiet.properties")
    defaults["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={quiet.as_uri()}"
    if cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        defaults.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                         "spark.driver.memory": local_driver_memory()})
    for key, value in {**defaults, **cfg.conf}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


class SparkEngine:
    name = "spark"

    def __init__(self, cfg: SparkConfig) -> None:
        self.cfg = cfg
        self._session: Any = None
        self._owned = False

    @property
    def session(self) -> Any:
        if self._session is None:
            from pyspark.sql import SparkSession

            active = SparkSession.getActiveSession()
            if active is not None:  # a caller's session (tests, notebooks): use it, never stop it
                self._session = active
            else:
                self._session = build_session(self.cfg)
                self._owned = True
        return self._session

    def _profile(self, res: Resources) -> Any:
        """Stage-level scheduling for cluster masters; local mode has one implicit profile.
        ``res`` is the configured stage's (``resources_for(params)``, the most of its fused steps)."""
        if self.cfg.master.startswith("local") or (res.cpus == 1 and res.gpus == 0):
            return None
        from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

        req = TaskResourceRequests().cpus(max(1, int(res.cpus)))
        if res.gpus:
            req = req.resource("gpu", res.gpus)
        return ResourceProfileBuilder().require(req).build

    def descriptor_frame(self, tasks: list[PartitionTask]) -> Any:
        """One row per task, one Spark partition per row, so tasks spread over all cores."""
        rows = [(t.partition, t.to_json()) for t in tasks]
        rdd = self.session.sparkContext.parallelize(rows, numSlices=max(1, len(rows)))
        return self.session.createDataFrame(rdd, "partition int, task string")

    def run_tasks(self, stage: Stage[Any], tasks: list[PartitionTask], on_commit: OnCommit) -> list[dict[str, Any]]:
        if not tasks:
            return []
        frame = self.descriptor_frame(tasks)
        profile = self._profile(task_resources(stage, tasks[0].params, tasks[0].steps))  # from the params and steps
        kwargs = {"profile": profile} if profile is not None else {}
        result = frame.mapInArrow(_run_partition_batches, RESULT_SCHEMA, **kwargs)
        rows = self.collect_with_progress(result, len(tasks), on_commit)
        return [json.loads(r["record"]) for r in rows]

    def collect_with_progress(self, frame: Any, total: int, on_commit: OnCommit) -> list[Any]:
        """Collect while a thread turns Spark's task counts into progress updates."""
        sc = self.session.sparkContext
        group = f"arcforge-{uuid.uuid4().hex[:8]}"
        sc.setJobGroup(group, "arcforge stage", interruptOnCancel=True)
        done = threading.Event()
        reported = [0]

        def poll() -> None:
            tracker = sc.statusTracker()
            while not done.wait(0.5):
                completed = 0
                for job_id in tracker.getJobIdsForGroup(group):
                    job = tracker.getJobInfo(job_id)
                    for sid in job.stageIds if job else []:
                        info = tracker.getStageInfo(sid)
                        completed += info.numCompletedTasks if info else 0
                while reported[0] < min(completed, total):
                    reported[0] += 1
                    on_commit({})

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            rows = frame.collect()
        finally:
            done.set()
            thread.join()
            sc.setLocalProperty("spark.jobGroup.id", None)
        for _ in range(total - reported[0]):
            on_commit({})
        return rows

    def ops(self) -> Any:
        """Global operations on Spark DataFrames (``arcforge.runtime.globalops``)."""
        from arcforge.runtime.globalops.spark_ops import SparkOps

        return SparkOps(self)

    def stop(self) -> None:
        if self._session is not None and self._owned:
            self._session.stop()
        self._session = None
        self._owned = False
