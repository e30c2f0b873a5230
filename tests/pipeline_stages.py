"""Small stages the runtime tests reference by import path (``pipeline_stages:LINES``).

They are real stages run on the real engines; they only make inputs tiny and
timing controllable (a slow stage gives a kill test a window to hit).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pyarrow as pa

from arcforge.pipelines.documents import doc_id, docs_table
from arcforge.pipelines.stage import MapStage, Output, SourceStage, StageParams, TaskContext, split_rejected


class LinesParams(StageParams):
    source: str = "lines"


def read_lines(path: str, fs, params: LinesParams, ctx: TaskContext) -> Iterator[Output]:  # noqa: ANN001
    with fs.open_input_stream(path) as f:
        lines = f.read().decode().splitlines()
    base = path.rsplit("/", 1)[-1]
    rows = [
        {"id": doc_id(base, str(i)), "text": line, "source": params.source, "url": path}
        for i, line in enumerate(lines)
        if line.strip()
    ]
    yield Output(kept=docs_table(rows))


LINES = SourceStage("test.lines", LinesParams, read_lines)


class SlowParams(StageParams):
    seconds: float = 0.0
    min_chars: int = 0


def slow_filter(batch: pa.RecordBatch, params: SlowParams, ctx: TaskContext) -> Output:
    time.sleep(params.seconds)
    ctx.stats.update("slow.batches")
    if os.environ.get("ARCFORGE_TEST_FAIL_ON") and os.environ["ARCFORGE_TEST_FAIL_ON"] in batch.column("text").to_pylist():
        raise ValueError("poisoned record")
    reasons = ["too_short" if len(t) < params.min_chars else None for t in batch.column("text").to_pylist()]
    return split_rejected(batch, reasons)


SLOW_FILTER = MapStage("test.slow_filter", SlowParams, slow_filter, engine="local")
