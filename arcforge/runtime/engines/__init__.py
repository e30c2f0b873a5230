"""Engine adapters: thin layers that schedule partition tasks on Spark, Ray or in-process."""

from __future__ import annotations

from typing import Any

from arcforge.runtime.config import EnginesConfig


class EngineSet:
    """Starts engines lazily, only when a stage needs one, and stops those it started."""

    def __init__(self, cfg: EnginesConfig) -> None:
        self.cfg = cfg
        self._engines: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._engines:
            if name == "spark":
                from arcforge.runtime.engines.spark_engine import SparkEngine

                self._engines[name] = SparkEngine(self.cfg.spark)
            elif name == "ray":
                from arcforge.runtime.engines.ray_engine import RayEngine

                self._engines[name] = RayEngine(self.cfg.ray)
            else:
                from arcforge.runtime.engines.local import LocalEngine

                self._engines[name] = LocalEngine()
        return self._engines[name]

    def stop(self) -> None:
        for engine in self._engines.values():
            engine.stop()
        self._engines.clear()
