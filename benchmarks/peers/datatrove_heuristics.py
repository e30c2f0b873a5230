"""datatrove's reader -> its Gopher quality, Gopher repetition, C4 and FineWeb filters (each
with its exclusion writer) -> writer, one task, one worker; prints one JSON line.

Run by benchmarks/bench_heuristics.py. Usage: datatrove_heuristics.py INPUT_DIR GLOB OUTPUT_DIR
"""

import json
import os
import resource
import sys
import time

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import ParquetWriter

src, pattern, out = sys.argv[1], sys.argv[2], sys.argv[3]
FILTERS = {"gopher_quality": GopherQualityFilter, "gopher_repetition": GopherRepetitionFilter,
           "c4_quality": C4QualityFilter, "fineweb_quality": FineWebQualityFilter}

pipeline = [
    JsonlReader(src, glob_pattern=pattern, text_key="text", id_key="id", default_metadata={}),
    *[f(exclusion_writer=ParquetWriter(os.path.join(out, "rejected", name))) for name, f in FILTERS.items()],
    ParquetWriter(os.path.join(out, "kept")),
]
cpu0 = time.process_time()
t0 = time.perf_counter()
LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=os.path.join(out, "logs"), skip_completed=False).run()
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
