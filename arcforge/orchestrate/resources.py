"""Spark and Ray as Dagster resources, configured from the run config's ``engines`` section.

The resources hold the same settings as ``engines.spark`` and ``engines.ray`` (embedded by
default, a cluster by its master URL or address) and hand the arcforge runtime an
``EngineSet`` for the length of a Dagster run: engines start lazily, when the first stage
that needs one runs, and stop at teardown. They build sessions through arcforge's own
engine adapters rather than dagster-pyspark's ``PySparkResource`` because the runtime's
session needs its settings (driver memory, quiet logs, task retries, the Arrow UDF path).
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from arcforge.runtime.config import EnginesConfig, RayConfig, SparkConfig
from arcforge.runtime.engines import EngineSet


class SparkResource(dg.ConfigurableResource):
    """``engines.spark``: ``local[*]`` runs Spark embedded; ``spark://host:7077`` joins a cluster."""

    master: str = "local[*]"
    app_name: str = "arcforge"
    conf: dict[str, str] = {}
    task_retries: int = 1

    def config(self) -> SparkConfig:
        return SparkConfig(master=self.master, app_name=self.app_name, conf=dict(self.conf), task_retries=self.task_retries)


class RayResource(dg.ConfigurableResource):
    """``engines.ray``: no address starts a local Ray inside the run; ``host:6379`` or ``auto`` joins a cluster."""

    address: str | None = None
    num_cpus: int | None = None
    object_store_memory_mb: int = 512

    def config(self) -> RayConfig:
        return RayConfig(address=self.address, num_cpus=self.num_cpus, object_store_memory_mb=self.object_store_memory_mb)


class EnginesResource(dg.ConfigurableResource):
    """The engines of one Dagster run: started on first use, stopped when the run ends."""

    spark: SparkResource
    ray: RayResource
    _engines: EngineSet | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engines = EngineSet(EnginesConfig(spark=self.spark.config(), ray=self.ray.config()))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engines is not None:
            self._engines.stop()

    def engine_set(self) -> EngineSet:
        if self._engines is None:  # used outside a Dagster run (a direct call in a script)
            self._engines = EngineSet(EnginesConfig(spark=self.spark.config(), ray=self.ray.config()))
        return self._engines


def engine_resources(cfg: EnginesConfig) -> dict[str, Any]:
    """The ``engines`` resource of a run config, with its Spark and Ray settings."""
    spark = SparkResource(**cfg.spark.model_dump())
    ray = RayResource(**cfg.ray.model_dump())
    return {"engines": EnginesResource(spark=spark, ray=ray)}
