"""datatrove's reader -> ten LambdaFilters (each with its exclusion writer) -> writer, one task.

Run with the python of a separate venv that has datatrove, by
benchmarks/bench_filters.py --datatrove-python PATH; prints one JSON line.
Usage: datatrove_filters.py INPUT_DIR GLOB OUTPUT_DIR
"""

import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.filters import LambdaFilter  # noqa: E402
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import ParquetWriter  # noqa: E402
from filter_rules import RULES, keeps  # noqa: E402

src, pattern, out = sys.argv[1], sys.argv[2], sys.argv[3]


def rule_filter(rule):
    return LambdaFilter(
        filter_function=lambda doc: keeps(rule, doc.text),
        exclusion_writer=ParquetWriter(os.path.join(out, "rejected", rule[0])),
    )


pipeline = [
    JsonlReader(src, glob_pattern=pattern, text_key="text", id_key="id", default_metadata={}),
    *[rule_filter(r) for r in RULES],
    ParquetWriter(os.path.join(out, "kept")),
]
cpu0 = time.process_time()
t0 = time.perf_counter()
LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=os.path.join(out, "logs"), skip_completed=False).run()
wall = time.perf_counter() - t0
cpu = time.process_time() - cpu0
written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) if "logs" not in d for f in fs)
print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "bytes_written": written,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
