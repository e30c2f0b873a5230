"""Reading Python imports: arcforge's tree-sitter reader against the standard library's ``ast``.

The data is the code demo's: the Python sources of docutils 0.21.2 and pywb 2.10.0 from the
demo corpus (``arcforge corpus``). Both readers turn every file into the same specifiers
(``a.b``, ``a.b|n``, ``.x|y``; ``arcforge.pipelines.code.imports``); the script reports the
time of each, their ratio, and on how many files the two give the same list.

    .venv/bin/python benchmarks/bench_imports.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

from arcforge.pipelines.code.imports import imports
from arcforge.pipelines.demo.corpus import fetch_demo_corpus

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent / "peers")]
from best_of import best_of  # noqa: E402
from python_ast_imports import ast_imports  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    root = fetch_demo_corpus(quiet=True)
    rows = [json.loads(line) for f in sorted((root / "code").glob("*.jsonl.gz")) for line in gzip.open(f, "rt", encoding="utf-8")]
    texts = [r["text"] for r in rows if r["url"].endswith(".py")]
    chars = sum(map(len, texts))
    best, _ = best_of({"arcforge (tree-sitter)": lambda: [imports(t, "python") for t in texts],
                       "ast (peer)": lambda: [ast_imports(t) for t in texts]}, args.repeat)
    same = sum(imports(t, "python") == ast_imports(t) for t in texts)
    print(f"{len(texts)} files, {chars:,} characters; best of {args.repeat}")
    for name, s in best.items():
        print(f"  {name:24s} {s:.3f} s  {chars / s / 1e6:.1f} M chars/s")
    a, b = best.values()
    print(f"  arcforge / ast time: {a / b:.2f}x")
    print(f"  the same import list: {same} of {len(texts)} files")


if __name__ == "__main__":
    main()
