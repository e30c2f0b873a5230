"""Run datatrove's WARC reader + Trafilatura extractor over one WARC; print pages and seconds.

Executed with the python of a separate venv that has datatrove (never the project's
venv), by benchmarks/bench_extract.py --datatrove-python PATH.
"""

import json
import sys
import time

from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.readers import WarcReader

folder, pattern = sys.argv[1], sys.argv[2]
reader = WarcReader(folder, glob_pattern=pattern)
extractor = Trafilatura(favour_precision=False, deduplicate=False, timeout=10.0, include_tables=True)
docs = list(reader.run())
list(extractor.run(iter(docs[:5])))  # warm-up: imports and the extraction worker process
t0 = time.perf_counter()
kept = sum(1 for _ in extractor.run(iter(list(reader.run()))))
print(json.dumps({"pages": len(docs), "kept": kept, "seconds": time.perf_counter() - t0}))
