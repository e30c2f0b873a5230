"""What every engine adapter offers the runner: run partition tasks, report each commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from arcforge.runtime.stage import Stage
from arcforge.runtime.tasks import PartitionTask

OnCommit = Callable[[dict[str, Any]], None]


class Engine(Protocol):
    name: str

    def run_tasks(self, stage: Stage[Any], tasks: list[PartitionTask], on_commit: OnCommit) -> list[dict[str, Any]]:
        """Run each task once (retries are the engine's business) and return the commit records."""
        ...

    def ops(self) -> Any:
        """The engine's global operations (``arcforge.runtime.globalops.GlobalOps``)."""
        ...

    def stop(self) -> None: ...
