"""Best-of-N timing shared by the in-process benchmarks (imports, code filters, commits)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_of(runs: dict[str, Callable[[], Any]], repeat: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Each side's first (untimed: imports, caches, parsers) result, then its best time of
    ``repeat`` passes; returns ({name: seconds}, {name: first result})."""
    best, first = {}, {}
    for name, fn in runs.items():
        first[name] = fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    return best, first
