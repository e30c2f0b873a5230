"""Ray Data adapter: ``map_batches`` over task descriptors.

Stages with a per-worker setup (a model), or with fused steps (which may have one),
run in an actor pool so the model loads once per actor; the others run as plain
tasks. GPU and CPU needs come from the configured stage, ``resources_for(params)``
and the most any fused step needs (``chain.task_resources``): ``quality.embedding``
with ``device: cuda`` reserves a GPU per actor. A stage that needs a GPU on a cluster
with none fails at once rather than waiting for one forever.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from arcforge.runtime.config import RayConfig
from arcforge.runtime.engines.base import OnCommit
from arcforge.runtime.chain import task_resources
from arcforge.runtime.stage import Resources, Stage
from arcforge.runtime.tasks import PartitionTask, execute_task_json


def _run_tasks_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    records = [execute_task_json(str(t)) for t in batch["task"]]
    return {"record": np.array(records, dtype=object)}


class _PartitionActor:
    """Long-lived worker: the stage's setup result is cached in this process."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run_tasks_batch(batch)


class RayEngine:
    name = "ray"

    def __init__(self, cfg: RayConfig) -> None:
        self.cfg = cfg
        self._owned = False
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": True,
                "logging_level": logging.WARNING,
            }
            if self.cfg.address:
                kwargs["address"] = self.cfg.address
            else:
                # "local", not None: ray.init(address=None) joins the cluster named by RAY_ADDRESS or
                # by the last `ray start` on this host (and then rejects num_cpus); null means our own.
                kwargs["address"] = "local"
                kwargs["num_cpus"] = self.cfg.num_cpus or os.cpu_count()
                kwargs["object_store_memory"] = self.cfg.object_store_memory_mb * 1024 * 1024
            ray.init(**kwargs)
            self._owned = True
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-dataset INFO lines drown the progress bars
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        self._started = True

    @staticmethod
    def _pool_size(resources: Resources, n_tasks: int) -> int:
        import ray

        cpus = ray.cluster_resources().get("CPU", 1)
        gpus = ray.cluster_resources().get("GPU", 0)
        by_cpu = int(cpus // max(resources.cpus, 0.001)) if resources.cpus else n_tasks
        by_gpu = int(gpus // resources.gpus) if resources.gpus else n_tasks
        return max(1, min(n_tasks, by_cpu, by_gpu))

    @staticmethod
    def ray_resources(stage: Stage[Any], tasks: list[PartitionTask]) -> dict[str, float]:
        """``map_batches``' num_cpus / num_gpus for this configured stage (its tasks share params)."""
        import ray

        res = task_resources(stage, tasks[0].params, tasks[0].steps)
        gpus = ray.cluster_resources().get("GPU", 0)
        if res.gpus and gpus < res.gpus:
            raise RuntimeError(
                f"stage {tasks[0].stage_name}: each task needs {res.gpus:g} GPU(s) ({stage.name}), but the Ray cluster "
                f"has {gpus:g}; give it a GPU node, or device: cpu / auto (which reserves no GPU)"
            )
        return {k: v for k, v in {"num_cpus": res.cpus, "num_gpus": res.gpus}.items() if v}

    def run_tasks(self, stage: Stage[Any], tasks: list[PartitionTask], on_commit: OnCommit) -> list[dict[str, Any]]:
        if not tasks:
            return []
        self.start()
        import ray

        items = [{"task": t.to_json()} for t in tasks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        res = self.ray_resources(stage, tasks)
        # Retries: Ray Data re-runs the task of a lost worker or actor by itself (its
        # default), and a storage error that may pass is retried inside the task with
        # backoff (tasks.run_task); an error of the data or the code fails at once.
        if getattr(stage, "setup", None) is not None or tasks[0].steps:
            needs = Resources(cpus=res.get("num_cpus", 0.0), gpus=res.get("num_gpus", 0.0))
            pool = ray.data.ActorPoolStrategy(size=self._pool_size(needs, len(tasks)))
            ds = ds.map_batches(_PartitionActor, batch_size=1, compute=pool, **res)
        else:
            ds = ds.map_batches(_run_tasks_batch, batch_size=1, **res)
        records = []
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            on_commit(rec)
            records.append(rec)
        return records

    def ops(self) -> Any:
        """Global operations on Ray Data (``arcforge.runtime.globalops``)."""
        from arcforge.runtime.globalops.ray_ops import RayOps

        return RayOps(self)

    def stop(self) -> None:
        if self._owned:
            import ray

            ray.shutdown()
        self._owned = False
        self._started = False
