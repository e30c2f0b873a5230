"""In-process engine: the reference semantics, and the fastest choice for tiny inputs."""

from __future__ import annotations

from typing import Any

from arcforge.runtime.engines.base import OnCommit
from arcforge.runtime.stage import Stage
from arcforge.runtime.tasks import PartitionTask, run_task


class LocalEngine:
    name = "local"

    def run_tasks(self, stage: Stage[Any], tasks: list[PartitionTask], on_commit: OnCommit) -> list[dict[str, Any]]:
        records = []
        for task in tasks:
            rec = run_task(task)
            on_commit(rec)
            records.append(rec)
        return records

    def ops(self) -> Any:
        """Global operations in this process (``arcforge.runtime.globalops``)."""
        from arcforge.runtime.globalops.local_ops import LocalOps

        return LocalOps()

    def stop(self) -> None:
        pass
